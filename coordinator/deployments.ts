// The leader's deployment manager: apps, their versions and desired instances (durable in
// etcd, mirrored in memory), and the reconcile loop.
//
//   tick: for each app and component ── planComponent (pure) ──> creates, stops, rollout state
//         creates ── Placer over a snapshot of nodes (pure) ──> plan
//         plan + stops + events ── Store.commit (fenced, chunked) ──> etcd, then memory
//   dispatch: per connected node, desired-run records vs what the agent reports
//         ──> RUN for what it lacks, STOP for what no record claims; resent until seen
//
// Everything is keyed by instance id, so a failover or an agent reconnect never starts an
// instance twice: the agent treats a RUN for an id it already runs as done.
import { steadyNow } from '../common/clock';
import { Serial } from '../common/serial';
import type { Logger } from '../common/logger';
import { InvalidArgumentError, NotFoundError, FailedPreconditionError } from '../common/errors';
import type { Instruction } from '../common/generated/tessera/v1/Instruction';
import type { InstanceSpec } from '../common/generated/tessera/v1/InstanceSpec';
import type { App } from '../common/generated/tessera/v1/App';
import type { Instance } from '../common/generated/tessera/v1/Instance';
import type { Quota } from '../common/generated/tessera/v1/Quota';
import type { Keyring } from './secrets';
import { ConfigSecrets } from './apps/config-secrets';
import type { VolumeCopier } from './volume-copy';

import type { AppSpec__Output } from '../common/generated/tessera/v1/AppSpec';
import type { PlacementFailure as ProtoPlacementFailure } from '../common/generated/tessera/v1/PlacementFailure';
import type { ComponentPlan as ComponentPlanProto } from '../common/generated/tessera/v1/ComponentPlan';
import { ComponentPlan, planChanges } from './apps/plan';
import type { AgentGateway } from './agent-gateway';
import type { Keys } from './keys';
import type { NodeRegistry } from './node-registry';
import { DEFAULT_PORT_RANGE } from './node-registry';
import { attributed, EventDraft, Op, Store } from './store';
import { AppRecord, canaryHeld, componentHash, InstanceRecord, newInstanceId, olderComponentHashes, VersionRecord } from './apps/records';
import { isHealthy, NodeStateForPlan, ObservedView, planComponent, StopDecision } from './apps/rollout';
import { kindOf, MAX_INSTANCES, NormalAppSpec, NormalComponent, normalizeAppSpec, specKey, updateOrder } from './apps/spec';
import { Placer } from './scheduler/placer';
import type { NodeView, PlacementRequest, Plan } from './scheduler/types';

export const KEEP_VERSIONS = 10;
const TOMBSTONE_TTL_MS = 10 * 60_000;
const RESEND_AFTER_MS = 5_000;
/** A volume migration is tried this many times, this long apart, before the instance starts without the data. */
const MIGRATE_ATTEMPTS = 5;
const MIGRATE_RETRY_MS = 2_000;

export interface DeploymentOptions {
  sampleSize: number;
  coordinatorId: string;
  metrics?: import('../common/metrics').Metrics;
  /** Seals registry passwords before they are stored (--secrets-key-file); none: stored in the clear. */
  keyring?: Keyring;
  /** A node runtime-down this long has its instances replaced elsewhere (--runtime-down-grace-ms; 0 or absent: never). */
  runtimeDownGraceMs?: number;
  /** Copies a slot's volumes between agents (VolumeSpec.migrate); none: they are left behind. */
  volumeCopier?: VolumeCopier;
}

export class Deployments {
  private apps = new Map<string, AppRecord>();
  private versions = new Map<string, Map<number, VersionRecord>>();
  private instances = new Map<string, InstanceRecord>();
  private healthySince = new Map<string, number>();
  /** When this leader loaded the state: healthy deadlines of instances it has not seen healthy count from then at the earliest. */
  private loadedAtMs = 0;
  /** Replica counts set by scaling policies, beside the spec (app/component -> count). */
  private replicas = new Map<string, number>();
  /** Whether a scaling policy sizes a component now (the scaler's; none until it is set). */
  sizedByPolicy: (app: string, component: string) => boolean = () => false;
  private sent = new Map<string, number>();
  /** Nodes whose agent attached since their instances' registry logins were last handed over (see dispatch). */
  private attached = new Map<string, { seq: number; atMs: number }>();
  private attachSeq = 0;
  private slotFailures = new Map<string, SlotFailures>();
  private ticking = false;
  private kicked = false;
  /** Registry credentials and secrets (their values included: they go to the agents that use them). */
  readonly sealed: ConfigSecrets;
  /** Instances whose RUN waits for a secret this leader cannot give (each said once in an event). */
  private secretWaits = new Set<string>();
  /** Volume migrations of pending instances (InstanceRecord.migrate): their copies, and outcomes for the next reconcile to record. */
  private migrations = new Map<string, { running: boolean; attempts: number; nextAtMs: number; outcome?: { bytes?: number; failed?: string; ms: number } }>();
  /** Per-kind quotas: the total CPU and memory a kind's instances may reserve. */
  private quotas = new Map<string, { cpuMillis: number; memoryMib: number }>();

  constructor(
    private readonly store: Store,
    private readonly keys: Keys,
    private readonly registry: NodeRegistry,
    private readonly gateway: AgentGateway,
    private readonly opts: DeploymentOptions,
    private readonly log: Logger,
  ) {
    this.sealed = new ConfigSecrets(store, keys, () => opts.keyring, () => this.componentsInUse(), log);
  }

  /**
   * Reads the apps, versions, instances, quotas and replica counts from etcd. Built aside and put
   * in place only once all of it is read: a read-back after a failed write (resync) that fails
   * too leaves memory as it was, not half-empty for the API and the next apply to act on.
   */
  async load(): Promise<void> {
    const loadedAtMs = steadyNow();
    const c = this.store.client;
    const [appsKv, versionsKv, instancesKv, quotasKv, replicasKv] = await Promise.all([
      c.getAll().prefix(this.keys.apps).strings(),
      c.getAll().prefix(`${this.keys.prefix}appversions/`).strings(),
      c.getAll().prefix(this.keys.instances).strings(),
      c.getAll().prefix(this.keys.quotas).strings(),
      c.getAll().prefix(`${this.keys.prefix}replicas/`).strings(),
    ]);
    const quotas = new Map<string, { cpuMillis: number; memoryMib: number }>();
    for (const [k, v] of Object.entries(quotasKv)) quotas.set(k.slice(this.keys.quotas.length), JSON.parse(v));
    const apps = new Map<string, AppRecord>();
    for (const v of Object.values(appsKv)) {
      const a = JSON.parse(v) as AppRecord;
      apps.set(a.name, a);
    }
    const versions = new Map<string, Map<number, VersionRecord>>();
    for (const [k, v] of Object.entries(versionsKv)) {
      const name = k.slice(`${this.keys.prefix}appversions/`.length).split('/')[0];
      const rec = JSON.parse(v) as VersionRecord;
      if (!versions.has(name)) versions.set(name, new Map());
      versions.get(name)!.set(rec.version, rec);
    }
    const instances = new Map<string, InstanceRecord>();
    for (const v of Object.values(instancesKv)) {
      const i = JSON.parse(v) as InstanceRecord;
      instances.set(i.id, i);
    }
    const replicas = new Map<string, number>();
    for (const [k, v] of Object.entries(replicasKv)) replicas.set(k.slice(`${this.keys.prefix}replicas/`.length), JSON.parse(v).replicas);
    this.loadedAtMs = loadedAtMs;
    this.quotas = quotas;
    this.apps = apps;
    this.versions = versions;
    this.instances = instances;
    this.replicas = replicas;
    // The backoff of failing slots carries over a change of leader: their failures' tombstones say it.
    this.slotFailures = slotFailuresOf(this.instances.values());
    // (After the apps are in place: what it reseals depends on which components use it.)
    await this.sealed.load();
    this.log.info({ apps: this.apps.size, instances: this.instances.size }, 'deployments loaded');
  }

  kick(): void {
    this.kicked = true;
  }

  // ───────────────────────────── API operations ─────────────────────────────

  /**
   * App records are written by reconcile (status, stable version, reverts) and by apply,
   * rollback and delete. Each reads the record, then writes it after an await: run one at a
   * time, or a reconcile round that read the app before a delete writes its stale copy over it
   * and the delete is lost (seen: an app deleted while its instances failed kept running).
   */
  private appWrites = new Serial();
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.appWrites.run(fn);
  }

  /** canaries: a version this makes holds its rollout at its components' canaries (update.canary): an operator's apply, not a policy's resize. */
  apply(raw: AppSpec__Output | undefined, dryRun: boolean, why = '', by = '', canaries = false): Promise<Applied> {
    return dryRun ? this.applyNow(raw, true, why) : this.exclusive(() => this.applyNow(raw, false, why, by, canaries));
  }

  /**
   * dropCount: the component a `tessera scale` without a policy names: the count it gives takes
   * over from a deleted policy's last one even when it is the spec's already.
   */
  private async applyNow(raw: AppSpec__Output | undefined, dryRun: boolean, why: string, by = '', canaries = false, dropCount?: string): Promise<Applied> {
    const spec = normalizeAppSpec(raw);
    this.sealed.check(spec);
    const prev = this.apps.get(spec.name);
    if (prev?.deleting) throw new FailedPreconditionError(`app "${spec.name}" is being deleted; apply again once it is gone`);
    const current = prev ? this.versions.get(spec.name)?.get(prev.version) : undefined;
    // A restart's mark stays unless the applied spec sets one (as kubectl apply keeps the
    // restartedAt annotation kubectl rollout restart set): applying the same file again after a
    // restart changes nothing.
    for (const c of spec.components) {
      const was = current?.spec.components.find((x) => x.name === c.name)?.restartedAtMs;
      if (c.restartedAtMs === undefined && was !== undefined) c.restartedAtMs = was;
    }
    const changed = !current || specKey(current.spec) !== specKey(spec);
    // What would the cluster do with it now? (For a dry run, and to warn on apply.)
    const plan = this.dryPlan(spec);
    const unplaced = plan.failures.map(toProtoFailure);
    const drops = this.droppedCounts(spec, current?.spec, dropCount);
    // Field by field against the version it goes over (nomad job plan), with the counts that run.
    const changes = this.withCounts(spec.name, planChanges(current?.spec, spec), drops).map(toProtoPlan);
    const dropOps: Op[] = [...drops.keys()].map((k) => ({ type: 'delete', key: `${this.keys.prefix}replicas/${k}` }));
    if (!dryRun && !changed && prev && dropOps.length) {
      // The spec stands; only a deleted policy's count gives way to it (tessera scale N).
      await this.store.commit(dropOps, [attributed({ kind: 'app.scaled', subject: spec.name, message: [...drops].map(([k, n]) => `${k.split('/')[1]}: ${n} -> ${spec.components.find((c) => c.name === k.split('/')[1])?.instances} instances (the spec's count; a deleted scaling policy had set ${n})`).join('; ') }, by)]);
      for (const k of drops.keys()) this.replicas.delete(k);
      this.kick();
      return { app: this.toProto(prev), changed: true, unplaced, planned: plan.placements.length, plan: changes };
    }
    if (dryRun || !changed) {
      const app = prev ? this.toProto(prev) : { name: spec.name, version: 0, spec, status: 'pending', statusReason: 'dry run' };
      return { app, changed, unplaced, planned: plan.placements.length, plan: changes };
    }
    const now = steadyNow();
    const version = (prev?.version ?? 0) > 0 ? this.nextVersion(spec.name) : 1;
    const app: AppRecord = {
      name: spec.name, version, stableVersion: prev?.stableVersion ?? 0, status: 'deploying',
      statusReason: `rolling out version ${version}`, createdAtMs: prev?.createdAtMs ?? now, updatedAtMs: now, deleting: false, rolloutStartedAtMs: now,
      // A first version has nothing to be a canary beside; the planner holds only components that
      // replace instances. A version made over one whose canaries hold (a scale, a policy's
      // resize, a restart) holds as well: only a promotion or a rollback lets the rollout on.
      ...((canaries || (prev && canaryHeld(prev))) && prev && spec.components.some((c) => (c.update.canary ?? 0) > 0) ? { canary: { version, wanted: 0, healthy: 0 } } : {}),
    };
    await this.writeVersion(app, { version, createdAtMs: now, status: 'deploying', reason: why || (prev ? `applied over version ${prev.version}` : 'first version'), spec, ...(by ? { by } : {}) }, [attributed({
      kind: 'app.applied', subject: spec.name, message: `app ${spec.name} version ${version} applied${why ? ` (${why})` : ''}`, fields: { version: String(version), components: spec.components.map((c) => `${c.name}x${c.instances}`).join(',') },
    }, by)], dropOps);
    for (const k of drops.keys()) this.replicas.delete(k);
    this.kick();
    return { app: this.toProto(app), changed: true, unplaced, planned: plan.placements.length, plan: changes };
  }

  /** The stable version's spec of a component, when the app has one and it runs something other than `hash`. */
  private stableOf(app: AppRecord, component: string, hash: string): { version: number; component: NormalComponent; hash: string } | undefined {
    if (!app.stableVersion || app.stableVersion === app.version) return undefined;
    const c = this.versions.get(app.name)?.get(app.stableVersion)?.spec.components.find((x) => x.name === component);
    if (!c) return undefined;
    const h = componentHash(c);
    return h === hash ? undefined : { version: app.stableVersion, component: c, hash: h };
  }

  /**
   * The counts a scaling policy set (app/component -> count) that this spec takes over from, as
   * `kubectl scale` does after an HPA is deleted: with no policy sizing the component now, when
   * the spec changes its count or a scale names it (dropCount); and any for a component the spec
   * no longer has. While a policy sizes a component, its count stands whatever the spec says.
   */
  private droppedCounts(spec: NormalAppSpec, current: NormalAppSpec | undefined, dropCount?: string): Map<string, number> {
    const out = new Map<string, number>();
    for (const [key, n] of this.replicas) {
      const [app, component] = key.split('/');
      if (app !== spec.name) continue;
      const now = spec.components.find((c) => c.name === component);
      const was = current?.components.find((c) => c.name === component);
      if (!now || (!this.sizedByPolicy(app, component) && (dropCount === component || (was && was.instances !== now.instances)))) out.set(key, n);
    }
    return out;
  }

  /** An apply's plan with the counts that run: a policy's where it sets one, and why. */
  private withCounts(app: string, plan: ComponentPlan[], drops: Map<string, number>): ComponentPlan[] {
    for (const p of plan) {
      const key = `${app}/${p.component}`;
      const n = this.replicas.get(key);
      if (!p.component || n === undefined || p.action === 'destroy' || p.action === 'create') continue;
      p.instancesFrom = n;
      if (drops.has(key)) {
        if (n === p.instancesTo) continue;
        if (p.action === 'none') p.action = 'in-place';
        p.note = `the count a deleted scaling policy set (${n}) gives way to this one (${p.instancesTo})`;
      } else {
        p.instancesTo = n;
        if (!p.changes.some((c) => c.field === 'instances')) continue;
        p.note = this.sizedByPolicy(app, p.component)
          ? `its scaling policy sizes it: ${n} instances run whatever instances says`
          : `a deleted scaling policy's count (${n}) stands: instances takes over when it changes, or with tessera scale`;
      }
    }
    return plan;
  }

  /** dryRun: the plan only (App.plan, against the current version), nothing stored. */
  rollback(name: string, to: number, by = '', dryRun = false): Promise<App> {
    return dryRun ? this.rollbackNow(name, to, by, true) : this.exclusive(() => this.rollbackNow(name, to, by, false));
  }

  private async rollbackNow(name: string, to: number, by: string, dryRun: boolean): Promise<App> {
    const app = this.getRecord(name);
    const history = this.versions.get(name)!;
    const target = to > 0 ? to : app.stableVersion !== app.version ? app.stableVersion : [...history.values()].filter((v) => v.version < app.version && v.status !== 'failed').map((v) => v.version).sort((a, b) => b - a)[0] ?? 0;
    const rec = history.get(target);
    if (!rec) throw InvalidArgumentError.field('version', to > 0 ? `version ${to} of "${name}" is not kept (kept: ${[...history.keys()].join(', ')})` : `"${name}" has no earlier version to go back to`);
    this.sealed.check(rec.spec, `version ${target}: components`);
    // What it changes, field by field, against the version it goes over (as an apply's plan; a
    // scaling policy's counts stand through a rollback).
    const plan = this.withCounts(name, planChanges(history.get(app.version)?.spec, rec.spec), new Map()).map(toProtoPlan);
    if (dryRun) return { ...this.toProto(app), plan, statusReason: `dry run: a rollback would make version ${this.nextVersion(name)} with the spec of version ${target}` };
    return { ...this.toProto(await this.revertTo(app, rec, `rollback to version ${target} requested`, by)), plan };
  }

  /**
   * kubectl scale: a new version with one component's instance count changed (the running
   * instances stay; see componentHash). A component a scaling policy sizes is refused: the
   * policy owns its count (change the policy's range instead), as Nomad refuses a count outside
   * a scaling policy's bounds and as an HPA would undo a manual scale.
   */
  scale(name: string, component: string, instances: number, policy?: { min: number; max: number }, by = ''): Promise<Applied> {
    return this.exclusive(async () => {
      const app = this.getRecord(name);
      const spec = this.versions.get(name)?.get(app.version)?.spec;
      if (!spec) throw new NotFoundError('app', name);
      if (!component) throw InvalidArgumentError.field('component', 'is required');
      const comp = spec.components.find((c) => c.name === component);
      if (!comp) throw InvalidArgumentError.field('component', `app "${name}" has no component "${component}" (it has ${spec.components.map((c) => c.name).join(', ')})`);
      if (!Number.isInteger(instances) || instances < 0 || instances > MAX_INSTANCES) throw InvalidArgumentError.field('instances', `must be an integer from 0 to ${MAX_INSTANCES}, got ${instances}`);
      if (policy) {
        throw new FailedPreconditionError(`component ${component} of app ${name} is sized by its scaling policy (${policy.min}..${policy.max} instances, now ${this.replicas.get(`${name}/${component}`) ?? comp.instances}): change the policy's range (tessera policy set) or delete the policy first`);
      }
      const next = { ...spec, components: spec.components.map((c) => (c.name === component ? { ...c, instances } : c)) };
      const from = this.replicas.get(`${name}/${component}`) ?? comp.instances;
      return this.applyNow(next as never, false, `scaled ${component} from ${from} to ${instances}`, by, false, component);
    });
  }

  /**
   * The older hashes (olderComponentHashes) of instances that run what this spec runs: an
   * instance created by an older coordinator is current when the component of the version it was
   * created for hashes as this one does now (so an upgrade restarts nothing, and a change of the
   * update strategy afterwards does not either); when that version is no longer kept, when its
   * older hash is this spec's. Empty once none is left.
   */
  private legacyHashes(app: string, comp: NormalComponent, mine: InstanceRecord[]): ReadonlySet<string> | undefined {
    let same: Set<string> | undefined;
    let hash: string | undefined;
    for (const i of mine) {
      if (i.component !== comp.name || i.specHash.startsWith('u')) continue;
      const created = this.versions.get(app)?.get(i.version)?.spec.components.find((c) => c.name === comp.name);
      const current = created ? componentHash(created) === (hash ??= componentHash(comp)) : olderComponentHashes(comp, comp.instances).includes(i.specHash);
      if (current) (same ??= new Set()).add(i.specHash);
    }
    return same;
  }

  /**
   * A rolling restart (kubectl rollout restart): a new version with the same spec but for the
   * component's restart mark, so its instances are replaced by the update strategy (one at a
   * time by default, each new one healthy before the next old one stops).
   */
  restart(name: string, component: string, by = ''): Promise<App> {
    return this.exclusive(async () => {
      const app = this.getRecord(name);
      const spec = this.versions.get(name)?.get(app.version)?.spec;
      if (!spec) throw new NotFoundError('app', name);
      if (component && !spec.components.some((c) => c.name === component)) {
        throw InvalidArgumentError.field('component', `app "${name}" has no component "${component}" (it has ${spec.components.map((c) => c.name).join(', ')})`);
      }
      const now = steadyNow();
      const next = { ...spec, components: spec.components.map((c) => (!component || c.name === component ? { ...c, restartedAtMs: now } : c)) };
      const which = component ? `component ${component}` : 'every component';
      const r = await this.applyNow(next as never, false, `restart of ${which} requested`, by);
      return r.app;
    });
  }

  delete(name: string, by = ''): Promise<App> {
    return this.exclusive(() => this.deleteNow(name, by));
  }

  private async deleteNow(name: string, by: string): Promise<App> {
    const app = this.getRecord(name);
    const next: AppRecord = { ...app, deleting: true, status: 'deleting', statusReason: 'stopping every instance', updatedAtMs: steadyNow() };
    await this.store.commit([{ type: 'put', key: this.keys.app(name), value: JSON.stringify(next) }], [attributed({ kind: 'app.deleting', subject: name, message: `app ${name} is being deleted` }, by)]);
    this.apps.set(name, next);
    this.kick();
    return this.toProto(next);
  }

  getApp(name: string): App {
    return this.toProto(this.getRecord(name));
  }

  /** In name order; after: only the apps named after it; limit: at most that many (0: all). */
  listApps(after?: string, limit = 0): App[] {
    // Every instance listed once, not once per app (each listing indexes what every node reports):
    // with 500 apps, each `tessera apps` took the leader about a third of a second.
    const byApp = new Map<string, Instance[]>();
    for (const i of this.listInstances('', '')) {
      const list = byApp.get(i.app ?? '');
      if (list) list.push(i);
      else byApp.set(i.app ?? '', [i]);
    }
    const apps = [...this.apps.values()].filter((a) => after === undefined || a.name.localeCompare(after) > 0).sort((a, b) => a.name.localeCompare(b.name));
    return (limit ? apps.slice(0, limit) : apps).map((a) => this.toProto(a, byApp.get(a.name) ?? []));
  }

  history(name: string): VersionRecord[] {
    this.getRecord(name);
    return [...this.versions.get(name)!.values()].sort((a, b) => b.version - a.version);
  }

  listInstances(app: string, nodeId: string): Instance[] {
    if (app && !this.apps.has(app)) throw new NotFoundError('app', app);
    const observed = this.observedIndex();
    // Canaries: of a version whose canaries hold its rollout, the current instances in the slots below the component's canary count.
    const canaryOf = new Map<string, { hash: string; below: number }>();
    for (const a of this.apps.values()) {
      if (!canaryHeld(a) || (app && a.name !== app)) continue;
      for (const c of this.versions.get(a.name)?.get(a.version)?.spec.components ?? []) {
        if (!c.update.canary) continue;
        const n = this.replicas.get(`${a.name}/${c.name}`) ?? c.instances;
        canaryOf.set(`${a.name}/${c.name}`, { hash: componentHash(c), below: Math.min(c.update.canary, n) });
      }
    }
    const isCanary = (i: InstanceRecord) => { const k = canaryOf.get(`${i.app}/${i.component}`); return !!k && i.desired === 'run' && i.specHash === k.hash && i.slot < k.below; };
    const listed = [...this.instances.values()].filter((i) => (!app || i.app === app) && (!nodeId || i.nodeId === nodeId));
    // Each listed component's current spec hash, and the older hashes that count as it (as the
    // rollout counts them: planComponent's isCurrent).
    const byComponent = new Map<string, InstanceRecord[]>();
    for (const i of listed) {
      const k = `${i.app}/${i.component}`;
      const mine = byComponent.get(k);
      if (mine) mine.push(i);
      else byComponent.set(k, [i]);
    }
    const currentOf = new Map<string, { hash: string; same?: ReadonlySet<string> }>();
    for (const [k, mine] of byComponent) {
      const { app: name, component } = mine[0];
      const a = this.apps.get(name);
      const comp = a && this.versions.get(name)?.get(a.version)?.spec.components.find((c) => c.name === component);
      if (comp) currentOf.set(k, { hash: componentHash(comp), same: this.legacyHashes(name, comp, mine) });
    }
    const isOutdated = (i: InstanceRecord) => {
      if (i.desired !== 'run') return false;
      if (i.replace) return true;
      const c = currentOf.get(`${i.app}/${i.component}`);
      return !c || (i.specHash !== c.hash && !c.same?.has(i.specHash));
    };
    return listed
      .sort((a, b) => a.app.localeCompare(b.app) || a.component.localeCompare(b.component) || a.slot - b.slot || a.createdAtMs - b.createdAtMs || a.id.localeCompare(b.id))
      .map((i) => {
        const o = observed.get(i.id);
        return {
          id: i.id, app: i.app, component: i.component, version: i.version, slot: i.slot, nodeId: i.nodeId, ports: i.ports,
          state: i.desired === 'stop' && i.failure ? 'INSTANCE_STATE_FAILED' : o?.state ?? (i.desired === 'stop' ? 'INSTANCE_STATE_STOPPED' : 'INSTANCE_STATE_PENDING'),
          health: o?.health ?? '', restarts: o?.restarts ?? 0,
          exitCode: i.failure?.exitCode ?? o?.exitCode ?? 0, oomKilled: i.failure?.oomKilled ?? o?.oomKilled ?? false,
          message: i.desired === 'stop' ? `${i.stopReason ?? ''}` : i.migrate?.state === 'pending' ? `copying volumes ${i.migrate.volumes.join(', ')} from ${i.migrate.from}` : o?.message ?? '',
          containerId: o?.containerId ?? '', createdAtMs: i.createdAtMs, desired: i.desired,
          cpuPercent: o?.cpuPercent ?? 0, memoryUsedMib: o?.memoryUsedMib ?? 0,
          replacing: i.replace && i.desired === 'run' ? `${i.replace.reason}${i.replace.by ? ` (by ${i.replace.by})` : ''}` : '',
          canary: isCanary(i),
          outdated: isOutdated(i),
        };
      });
  }

  /**
   * ReplaceInstance: marks a running instance to be replaced; the next reconciliation counts it
   * outdated (planComponent): a new one takes its slot by the component's update order.
   * Asking again while it is being replaced changes nothing.
   */
  replaceInstance(id: string, reason: string, by = ''): Promise<Instance> {
    return this.exclusive(async () => {
      const inst = this.instances.get(id);
      if (!inst) throw new NotFoundError('instance', id);
      if (inst.desired !== 'run') throw new FailedPreconditionError(`instance ${id} is already stopped or stopping (${inst.stopReason || 'no longer wanted'}): nothing to replace`);
      if (this.apps.get(inst.app)?.deleting) throw new FailedPreconditionError(`app ${inst.app} is being deleted: its instances are not replaced`);
      if (!inst.replace) {
        const next: InstanceRecord = { ...inst, replace: { atMs: steadyNow(), by, reason: reason || 'requested by operator' } };
        const comp = this.versions.get(inst.app)?.get(inst.version)?.spec.components.find((c) => c.name === inst.component);
        const how = comp && updateOrder(comp) === 'stop-first' ? 'it stops first, then a new one starts on its node (stop-first)' : 'it stops once the new one is healthy';
        await this.store.commit([{ type: 'put', key: this.keys.instance(inst.app, inst.id), value: JSON.stringify(next) }], [attributed({
          kind: 'instance.replace_requested', subject: inst.id,
          message: `${inst.app}/${inst.component} instance ${inst.id} on ${inst.nodeId}: a replacement asked for (${next.replace!.reason}); ${how}`,
          fields: { app: inst.app, component: inst.component, node: inst.nodeId, reason: next.replace!.reason },
        }, by)]);
        this.instances.set(id, next);
        this.kick();
      }
      return this.listInstances(inst.app, '').find((x) => x.id === id)!;
    });
  }

  /** An instance this leader knows (running, stopping or kept as a failed tombstone). */
  instance(id: string): InstanceRecord | undefined {
    return this.instances.get(id);
  }

  /** An event of something done to the cluster outside a change to its state (an exec in an instance), fenced like every write. */
  async recordEvent(e: EventDraft): Promise<void> {
    await this.store.commit([], [e]);
  }

  /** Reserved resources per node, for the Node view. */
  allocatedOn(nodeId: string): { cpuMillis: number; memoryMib: number } {
    return this.allocatedByNode().get(nodeId) ?? { cpuMillis: 0, memoryMib: 0 };
  }

  /**
   * What the wanted instances reserve on each node, in one pass (a list of nodes asked
   * allocatedOn for each, once over every instance per node: at 5,000 nodes and 20,000 instances,
   * 100 million steps).
   */
  allocatedByNode(): Map<string, { cpuMillis: number; memoryMib: number }> {
    const out = new Map<string, { cpuMillis: number; memoryMib: number }>();
    for (const i of this.instances.values()) {
      if (i.desired !== 'run') continue;
      const a = out.get(i.nodeId);
      if (a) {
        a.cpuMillis += i.resources.cpuMillis;
        a.memoryMib += i.resources.memoryMib;
      } else out.set(i.nodeId, { cpuMillis: i.resources.cpuMillis, memoryMib: i.resources.memoryMib });
    }
    return out;
  }

  // ───────────────────────── for the scaling manager ─────────────────────────

  currentSpec(app: string): NormalAppSpec | undefined {
    const a = this.apps.get(app);
    return a && !a.deleting ? this.versions.get(app)?.get(a.version)?.spec : undefined;
  }

  replicasOf(app: string, component: string): number | undefined {
    return this.replicas.get(`${app}/${component}`);
  }

  healthySinceOf(id: string): number {
    return this.healthySince.get(id) ?? 0;
  }

  taskOf(id: string): import('../common/generated/tessera/v1/TaskState').TaskState__Output | undefined {
    for (const n of this.registry.allRecords()) {
      const o = this.registry.observed(n.id).find((x) => x.instanceId === id);
      if (o) return o.task ?? undefined;
    }
    return undefined;
  }

  /** A policy's replica decision: kept beside the spec, so scaling does not make versions. */
  async setReplicas(app: string, component: string, n: number, reason: string): Promise<void> {
    const key = `${app}/${component}`;
    await this.store.commit([{ type: 'put', key: `${this.keys.prefix}replicas/${key}`, value: JSON.stringify({ replicas: n, reason, atMs: steadyNow() }) }]);
    this.replicas.set(key, n);
    this.kick();
  }

  /** A policy's vertical decision: a new version with the component's cpu or memory changed. */
  async resize(app: string, component: string, attr: 'cpu' | 'memory', value: number, reason: string): Promise<void> {
    const spec = this.currentSpec(app);
    if (!spec) throw new NotFoundError('app', app);
    const next: NormalAppSpec = {
      ...spec,
      components: spec.components.map((c) => (c.name !== component ? c : { ...c, resources: { ...c.resources, ...(attr === 'cpu' ? { cpuMillis: value } : { memoryMib: value }) } })),
    };
    await this.apply(next as never, false, `resize by policy: ${reason}`);
  }

  /** A policy's env decision: a new version with a tunable env setting changed. */
  async retune(app: string, component: string, env: string, value: number, reason: string): Promise<void> {
    const spec = this.currentSpec(app);
    if (!spec) throw new NotFoundError('app', app);
    const next: NormalAppSpec = { ...spec, components: spec.components.map((c) => (c.name !== component ? c : { ...c, env: { ...c.env, [env]: String(value) } })) };
    await this.apply(next as never, false, `retune by policy: ${reason}`);
  }

  // ─────────────────────────────── reconcile ───────────────────────────────

  async tick(nowMs = steadyNow()): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    this.kicked = false;
    const t0 = performance.now();
    try {
      await this.exclusive(async () => {
        if (this.resyncNeeded) await this.resync();
        await this.reconcile(nowMs);
      });
      this.dispatch(nowMs);
      this.opts.metrics?.observe('tessera_reconcile_seconds', {}, (performance.now() - t0) / 1000);
    } finally {
      this.ticking = false;
    }
  }

  get wantsTick(): boolean {
    return this.kicked;
  }

  private observedIndex() {
    const idx = new Map<string, import('../common/generated/tessera/v1/InstanceStatus').InstanceStatus__Output & { nodeId: string }>();
    for (const n of this.registry.allRecords()) {
      for (const o of this.registry.observed(n.id)) idx.set(o.instanceId, { ...o, nodeId: n.id });
    }
    return idx;
  }

  private async reconcile(nowMs: number): Promise<void> {
    const observed = this.observedIndex();
    // Healthy-since bookkeeping: a new leader starts counting from its first observation.
    for (const [id, o] of observed) {
      const healthy = o.state === 'INSTANCE_STATE_RUNNING' && o.health === 'healthy';
      if (!healthy) this.healthySince.delete(id);
      else if (!this.healthySince.has(id)) this.healthySince.set(id, nowMs);
    }
    const view = (id: string): ObservedView | undefined => {
      const o = observed.get(id);
      const rec = this.instances.get(id);
      if (!o || (rec && o.nodeId !== rec.nodeId)) return undefined;
      return { state: o.state, health: o.health, healthySinceMs: this.healthySince.get(id) ?? 0, exitCode: o.exitCode, oomKilled: o.oomKilled, message: o.message };
    };
    const nodeStates = new Map<string, NodeStateForPlan>();
    const grace = this.opts.runtimeDownGraceMs ?? 0;
    // So many nodes of a zone DOWN at once that the leader is more likely cut off from them than
    // they dead: their instances are kept where they are (not healthy, out of routing) rather than
    // replaced (see fleetDisruption).
    const held = this.registry.heldZones(nowMs);
    for (const n of this.registry.allRecords()) {
      if (held.size && n.state === 'DOWN' && held.has(this.registry.zoneOf(n))) {
        nodeStates.set(n.id, 'UNREACHABLE');
        continue;
      }
      // Its runtime silent past the grace: its instances are lost (their containers may have died
      // with the Engine, unseen), replaced elsewhere; stopped there if the Engine comes back.
      const since = n.conditions?.['runtime-down']?.sinceMs;
      nodeStates.set(n.id, n.state !== 'DOWN' && grace > 0 && since !== undefined && nowMs - since >= grace ? 'RUNTIME-DOWN'
        : n.state === 'DRAINING' && n.drainDeadlineAtMs && nowMs >= n.drainDeadlineAtMs ? 'DRAIN-EXPIRED' : n.state);
    }
    // Per app/component/slot: the node of its latest instance (where its volumes are), and
    // whether an instance no longer wanted still runs there (stop-first waits for it).
    const slotNode = new Map<string, { at: number; node: string }>();
    const slotStopping = new Set<string>();
    for (const x of this.instances.values()) {
      const k = `${x.app}/${x.component}/${x.slot}`;
      const prev = slotNode.get(k);
      // An instance whose volumes were never copied to it (its migration pending when it went) left them where they were.
      if (!prev || x.createdAtMs >= prev.at) slotNode.set(k, { at: x.createdAtMs, node: x.migrate?.state === 'pending' ? x.migrate.from : x.nodeId });
      if (x.desired !== 'stop') continue;
      const o = view(x.id);
      const gone = nodeStates.get(x.nodeId) === 'DOWN' || nodeStates.get(x.nodeId) === 'RUNTIME-DOWN' || !nodeStates.has(x.nodeId);
      // A node that has not reported to this leader yet (just elected) may still be stopping it:
      // wait for its word, or the slot's new instance could start on the volume beside it.
      if (!gone && (o ? o.state !== 'INSTANCE_STATE_STOPPED' && o.state !== 'INSTANCE_STATE_FAILED' : !this.registry.reported(x.nodeId))) slotStopping.add(k);
    }

    const ops: Op[] = [];
    const events: EventDraft[] = [];
    const requests: (PlacementRequest & { version: number; hash: string; comp: NormalComponent })[] = [];
    const stops: StopDecision[] = [];
    const appUpdates = new Map<string, AppRecord>();
    const versionUpdates: { app: string; rec: VersionRecord }[] = [];
    const reverts: { app: string; to: VersionRecord; reason: string }[] = [];

    // Each app's wanted instances, grouped once (filtering all of them for each app was
    // quadratic: with 500 apps, most of a reconcile round).
    const running = new Map<string, InstanceRecord[]>();
    for (const i of this.instances.values()) {
      if (i.desired !== 'run') continue;
      const list = running.get(i.app);
      if (list) list.push(i);
      else running.set(i.app, [i]);
    }
    for (const app of [...this.apps.values()]) {
      const spec = this.versions.get(app.name)?.get(app.version)?.spec;
      const mine = running.get(app.name) ?? [];
      if (app.deleting || !spec) {
        for (const inst of mine) stops.push({ inst, kind: 'removed', reason: app.deleting ? 'app deleted' : 'no spec' });
        if (app.deleting && !mine.length && ![...observed.values()].some((o) => o.app === app.name)) {
          ops.push({ type: 'delete', key: this.keys.app(app.name) }, { type: 'deleteRange', start: this.keys.appVersions(app.name), end: this.keys.appVersions(app.name) + '\uffff' });
          // A policy's replica counts go with the app: an app created again under this name
          // starts from its own spec, not from the old app's last scale.
          const rp = `${this.keys.prefix}replicas/${app.name}/`;
          ops.push({ type: 'deleteRange', start: rp, end: rp + '\uffff' });
          for (const t of this.instances.values()) if (t.app === app.name) ops.push({ type: 'delete', key: this.keys.instance(t.app, t.id) });
          events.push({ kind: 'app.deleted', subject: app.name, message: `app ${app.name} deleted` });
        }
        continue;
      }
      const appStops: StopDecision[] = [];
      const appRequests: typeof requests = [];
      let allSettled = true;
      let allHealthy = true;
      // For a stable app's status: serving as far as this leader can tell (see servingCurrent).
      let allServing = true;
      let failedReason: string | undefined;
      // Slots waiting out their backoff after failures (a crash loop), for the app's status.
      const backingOff: string[] = [];
      // The version's canaries over its components, while they hold its rollout.
      let held: { wanted: number; healthy: number; autoPromote: boolean } | undefined;
      for (const comp of spec.components) {
        const hash = componentHash(comp);
        const scaled = this.replicas.get(`${app.name}/${comp.name}`);
        const effective = scaled === undefined ? comp : { ...comp, instances: scaled };
        const d = planComponent({
          app, component: effective, hash, nowMs, deadlineFromMs: this.loadedAtMs, unreported: (id) => !this.registry.reported(id), sameSpec: this.legacyHashes(app.name, comp, mine),
          busy: (id) => { const t = observed.get(id)?.task; return t ? Number(t.queueDepth ?? 0) + Number(t.inFlight ?? 0) : 0; },
          instances: mine.filter((i) => i.component === comp.name),
          observed: view,
          nodeState: (id) => nodeStates.get(id),
          slotReady: (slot, failingNow) => {
            if (!failingNow && this.slotReady(app.name, comp.name, slot, comp.restart.delayMs, nowMs)) return true;
            // A failure of this decision is counted with the stops below: it waits from now.
            const count = (this.slotFailures.get(`${app.name}/${comp.name}/${slot}`)?.count ?? 0) + (failingNow ? 1 : 0);
            backingOff.push(`${comp.name} slot ${slot} after ${count} failure${count === 1 ? '' : 's'} (${slotBackoffMs(count, comp.restart.delayMs) / 1000} s)`);
            return false;
          },
          failedOn: (slot) => this.slotFailures.get(`${app.name}/${comp.name}/${slot}`)?.nodes ?? [],
          stopping: (slot) => slotStopping.has(`${app.name}/${comp.name}/${slot}`),
          lastNode: (slot) => slotNode.get(`${app.name}/${comp.name}/${slot}`)?.node,
          stable: this.stableOf(app, comp.name, hash),
        });
        appStops.push(...d.stop);
        for (const c of d.create) {
          // An empty slot while canaries hold gets the stable version (see rollout.ts, canaries).
          const st = c.stable ? this.stableOf(app, comp.name, hash) : undefined;
          const made = st?.component ?? comp;
          appRequests.push({
            app: app.name, component: comp.name, slot: c.slot, group: `${app.name}/${comp.name}`,
            resources: { cpuMillis: made.resources!.cpuMillis, memoryMib: made.resources!.memoryMib },
            ports: made.ports.map((p) => ({ name: p.name, port: p.port })),
            constraints: made.constraints, placement: made.placement as 'spread' | 'binpack', distinctHosts: made.distinctHosts,
            avoid: new Set(c.avoid), ...(c.prefer ? { prefer: c.prefer } : {}), version: st?.version ?? app.version, hash: st?.hash ?? hash, comp: made, kind: kindOf(made),
          });
        }
        if (d.canaries) {
          held ??= { wanted: 0, healthy: 0, autoPromote: true };
          held.wanted += d.canaries.wanted;
          held.healthy += d.canaries.healthy;
          held.autoPromote &&= !!comp.update.autoPromote;
        }
        if (d.outdated || d.current !== effective.instances || d.create.length) allSettled = false;
        if (d.healthyCurrent !== effective.instances) allHealthy = false;
        if (d.servingCurrent !== effective.instances) allServing = false;
        failedReason ??= d.rolloutFailed;
      }
      // Components that left the spec.
      const names = new Set(spec.components.map((c) => c.name));
      for (const inst of mine) if (!names.has(inst.component)) appStops.push({ inst, kind: 'removed', reason: `component ${inst.component} left the spec` });
      stops.push(...appStops);

      const versionRec = this.versions.get(app.name)!.get(app.version)!;
      if (failedReason && app.version !== app.stableVersion && app.status !== 'failed') {
        const autoRevert = spec.components.some((c) => c.update.autoRevert);
        const stable = this.versions.get(app.name)!.get(app.stableVersion);
        versionUpdates.push({ app: app.name, rec: { ...versionRec, status: 'failed', reason: failedReason } });
        // A version that is itself a revert or a rollback is not reverted again: going back to
        // the same spec once more would fail the same way, a new version every round.
        const again = autoRevert && stable && app.status === 'reverting';
        events.push({ kind: 'rollout.failed', subject: app.name, message: `version ${app.version} of ${app.name} failed: ${failedReason}${again ? ' (not reverted: it was a revert or a rollback itself)' : ''}`, fields: { version: String(app.version) } });
        appUpdates.set(app.name, { ...app, status: 'failed', statusReason: failedReason, updatedAtMs: nowMs });
        // Revert after this commit: a new version whose spec is the last stable one. No new
        // instances of the failed version are placed meanwhile.
        if (autoRevert && stable && !again) reverts.push({ app: app.name, to: stable, reason: `auto-revert: ${failedReason}` });
        continue;
      }
      requests.push(...appRequests);
      if (held && canaryHeld(app) && app.status !== 'failed') {
        appUpdates.set(app.name, this.canaryRound(app, held, nowMs, events));
        continue;
      }
      if (allSettled && allHealthy && app.version !== app.stableVersion && app.status !== 'failed') {
        const prevStable = this.versions.get(app.name)!.get(app.stableVersion);
        versionUpdates.push({ app: app.name, rec: { ...versionRec, status: 'running' } });
        if (prevStable && prevStable.version !== app.version) versionUpdates.push({ app: app.name, rec: { ...prevStable, status: 'superseded' } });
        appUpdates.set(app.name, { ...app, stableVersion: app.version, status: 'running', statusReason: `version ${app.version} running`, updatedAtMs: nowMs });
        events.push({ kind: 'rollout.complete', subject: app.name, message: `version ${app.version} of ${app.name} is running on every instance`, fields: { version: String(app.version) } });
      } else if (app.version === app.stableVersion) {
        const status = allServing && allSettled ? 'running' : 'degraded';
        const replacing = mine.filter((x) => x.replace).map((x) => x.id);
        const statusReason = status === 'running' ? `version ${app.version} running`
          : replacing.length && allServing ? `replacing ${replacing.join(', ')} as requested`
          : `some instances are not healthy or not placed${replacing.length ? ` (replacing ${replacing.join(', ')} as requested)` : ''}${backingOff.length ? `; backing off: ${backingOff.join(', ')}` : ''}`;
        if (status !== app.status || statusReason !== app.statusReason) appUpdates.set(app.name, { ...app, status, statusReason, updatedAtMs: nowMs });
      }
    }

    // Stops: each kept as a tombstone (desired stop, why, a failure's exit) for TOMBSTONE_TTL_MS,
    // to show why it stopped and to keep its ports while its container may still run.
    const stoppedIds = new Set<string>();
    for (const s of stops) {
      if (stoppedIds.has(s.inst.id)) continue;
      stoppedIds.add(s.inst.id);
      const tomb: InstanceRecord = { ...s.inst, desired: 'stop', stoppedAtMs: nowMs, stopReason: s.reason, failure: s.failure };
      ops.push({ type: 'put', key: this.keys.instance(tomb.app, tomb.id), value: JSON.stringify(tomb) });
      if (s.kind === 'failed') {
        const k = `${s.inst.app}/${s.inst.component}/${s.inst.slot}`;
        this.slotFailures.set(k, addFailure(this.slotFailures.get(k), s.inst.nodeId, nowMs));
      }
      events.push({ kind: `instance.${s.kind}`, subject: s.inst.id, message: `${s.inst.app}/${s.inst.component} instance ${s.inst.id} on ${s.inst.nodeId}: ${s.reason}`, fields: { app: s.inst.app, component: s.inst.component, node: s.inst.nodeId } });
    }
    // Tombstones past their time.
    for (const t of this.instances.values()) {
      if (t.desired === 'stop' && nowMs - (t.stoppedAtMs ?? 0) > TOMBSTONE_TTL_MS) ops.push({ type: 'delete', key: this.keys.instance(t.app, t.id) });
    }

    // Placement over a snapshot that already excludes what this round stops.
    const created: InstanceRecord[] = [];
    if (requests.length) {
      const plan = this.plan(requests, stoppedIds);
      for (const p of plan.placements) {
        const r = p.request as (typeof requests)[number];
        const rec: InstanceRecord = {
          id: newInstanceId(r.app, r.component), app: r.app, component: r.component, kind: r.kind, version: r.version, specHash: r.hash, slot: r.slot,
          nodeId: p.nodeId, ports: p.ports, resources: r.resources, createdAtMs: nowMs, desired: 'run',
        };
        // Away from the node that holds the slot's volumes: those that migrate are copied first, if that node answers.
        const moving = r.prefer && r.prefer !== rec.nodeId ? r.comp.volumes.filter((v) => v.migrate).map((v) => v.name) : [];
        if (moving.length && this.canGiveVolumes(r.prefer!)) rec.migrate = { from: r.prefer!, volumes: moving, state: 'pending' };
        created.push(rec);
        ops.push({ type: 'put', key: this.keys.instance(rec.app, rec.id), value: JSON.stringify(rec) });
        events.push({ kind: 'instance.placed', subject: rec.id, message: `${rec.app}/${rec.component}[${rec.slot}] v${rec.version} placed on ${rec.nodeId} (score ${p.score})`, fields: { app: rec.app, component: rec.component, node: rec.nodeId, ports: JSON.stringify(rec.ports) } });
        // A slot with volumes placed away from the node that holds them starts with empty ones,
        // but for those that migrate from a node that answers.
        if (rec.migrate) {
          const left = r.comp.volumes.filter((v) => !v.migrate).map((v) => v.name);
          events.push({ kind: 'instance.volumes_migrating', subject: rec.id, message: `${rec.app}/${rec.component}[${rec.slot}] placed on ${rec.nodeId}, not on ${r.prefer}, which holds the slot's volumes but cannot take it now: copying ${rec.migrate.volumes.join(', ')} from ${r.prefer} before it starts${left.length ? ` (${left.join(', ')}, without migrate, start empty)` : ''}`, fields: { app: rec.app, component: rec.component, node: rec.nodeId, volumesNode: r.prefer!, volumes: rec.migrate.volumes.join(',') } });
        } else if (r.prefer && r.prefer !== rec.nodeId) {
          const why = moving.length ? `; ${r.prefer} cannot give them (${this.registry.stateOf(r.prefer) ?? 'gone'})` : '';
          events.push({ kind: 'instance.volumes_left', subject: rec.id, message: `${rec.app}/${rec.component}[${rec.slot}] placed on ${rec.nodeId}, not on ${r.prefer}, which holds the slot's volumes but cannot take it now: it starts with empty volumes${why}; the data stays on ${r.prefer}`, fields: { app: rec.app, component: rec.component, node: rec.nodeId, volumesNode: r.prefer } });
        }
      }
      this.opts.metrics?.inc('tessera_placements_total', {}, plan.placements.length);
      this.opts.metrics?.inc('tessera_placement_failures_total', {}, plan.failures.length);
      for (const f of plan.failures) {
        const key = `${f.request.app}/${f.request.component}/${f.request.slot}`;
        if (this.lastUnplaced.get(key) === JSON.stringify(f.counts)) continue; // say it once, not every tick
        this.lastUnplaced.set(key, JSON.stringify(f.counts));
        events.push({ kind: 'instance.unplaced', subject: key, message: `${key} cannot be placed: ${Object.entries(f.counts).map(([k, v]) => `${v} x ${k}`).join(', ') || 'no nodes'}`, fields: f.reasons });
      }
    }
    // Volume migrations that ended since the last round: recorded here, with this round's other
    // writes of instance records (an instance stopped this round keeps its record as stopped).
    const migrated: InstanceRecord[] = [];
    for (const [id, m] of this.migrations) {
      if (!m.outcome) continue;
      const cur = this.instances.get(id);
      if (stoppedIds.has(id)) continue;
      this.migrations.delete(id);
      if (!cur || cur.desired !== 'run' || cur.migrate?.state !== 'pending') continue;
      const o = m.outcome;
      const rec: InstanceRecord = { ...cur, migrate: { ...cur.migrate, state: 'done', doneAtMs: nowMs, ...(o.failed ? { failed: o.failed } : { bytes: o.bytes ?? 0 }) } };
      migrated.push(rec);
      ops.push({ type: 'put', key: this.keys.instance(rec.app, rec.id), value: JSON.stringify(rec) });
      const what = `${rec.app}/${rec.component}[${rec.slot}]`;
      events.push(o.failed
        ? { kind: 'instance.volumes_left', subject: id, message: `${what}: copying ${cur.migrate.volumes.join(', ')} from ${cur.migrate.from} to ${rec.nodeId} failed ${MIGRATE_ATTEMPTS} times (${o.failed}): it starts with empty volumes; the data stays on ${cur.migrate.from}`, fields: { app: rec.app, component: rec.component, node: rec.nodeId, volumesNode: cur.migrate.from } }
        : { kind: 'instance.volumes_migrated', subject: id, message: `${what}: ${cur.migrate.volumes.join(', ')} copied from ${cur.migrate.from} to ${rec.nodeId} (${o.bytes ?? 0} bytes in ${o.ms} ms): it starts`, fields: { app: rec.app, component: rec.component, node: rec.nodeId, volumesNode: cur.migrate.from, bytes: String(o.bytes ?? 0) } });
    }
    for (const [name, a] of appUpdates) ops.push({ type: 'put', key: this.keys.app(name), value: JSON.stringify(a) });
    for (const v of versionUpdates) ops.push({ type: 'put', key: this.keys.appVersion(v.app, v.rec.version), value: JSON.stringify(v.rec) });
    if (!ops.length && !events.length) return;

    await this.commitChunked(ops, events);
    // Mirror what was committed.
    for (const s of stops) {
      const cur = this.instances.get(s.inst.id);
      if (cur) this.instances.set(cur.id, { ...cur, desired: 'stop', stoppedAtMs: nowMs, stopReason: s.reason, failure: s.failure });
    }
    for (const op of ops) if (op.type === 'delete' && op.key.startsWith(this.keys.instances)) this.instances.delete(op.key.split('/').pop()!);
    for (const rec of created) this.instances.set(rec.id, rec);
    for (const rec of migrated) if (this.instances.get(rec.id)?.desired === 'run') this.instances.set(rec.id, rec);
    if (migrated.length) this.kick();
    for (const [name, a] of appUpdates) this.apps.set(name, a);
    for (const v of versionUpdates) this.versions.get(v.app)?.set(v.rec.version, v.rec);
    for (const op of ops) {
      if (op.type === 'delete' && op.key.startsWith(this.keys.apps)) {
        const name = op.key.slice(this.keys.apps.length);
        this.apps.delete(name);
        this.versions.delete(name);
        for (const k of [...this.replicas.keys()]) if (k.startsWith(`${name}/`)) this.replicas.delete(k);
        for (const [id, i] of this.instances) if (i.app === name) this.instances.delete(id);
      }
    }
    for (const r of reverts) {
      const a = this.apps.get(r.app);
      if (a) await this.revertTo(a, r.to, r.reason);
    }
    if (created.length || stops.length) this.kick();
  }

  private lastUnplaced = new Map<string, string>();

  /**
   * The app record while its version's canaries hold the rollout: their count in the status, an
   * event when all are first healthy, and with autoPromote (every held component's) the promotion.
   */
  private canaryRound(app: AppRecord, held: { wanted: number; healthy: number; autoPromote: boolean }, nowMs: number, events: EventDraft[]): AppRecord {
    const c = app.canary!;
    const all = held.wanted > 0 && held.healthy >= held.wanted;
    const next = { ...c, wanted: held.wanted, healthy: held.healthy, ...(all && !c.healthyAtMs ? { healthyAtMs: nowMs } : {}) };
    const fields = { version: String(app.version), canaries: String(held.wanted) };
    if (all && held.autoPromote) {
      events.push({ kind: 'rollout.promoted', subject: app.name, message: `version ${app.version} of ${app.name} promoted (autoPromote): its ${held.wanted} canar${held.wanted === 1 ? 'y is' : 'ies are'} healthy; the other instances are replaced now`, fields: { ...fields, by: 'auto' } });
      return { ...app, canary: { ...next, promotedAtMs: nowMs, promotedBy: 'auto' }, status: 'deploying', statusReason: `rolling out version ${app.version} (promoted)`, updatedAtMs: nowMs };
    }
    if (all && !c.healthyAtMs) {
      events.push({ kind: 'rollout.canaries_healthy', subject: app.name, message: `version ${app.version} of ${app.name}: ${held.wanted} canar${held.wanted === 1 ? 'y' : 'ies'} healthy, waiting for promotion (tessera app promote ${app.name}) or a rollback`, fields });
    }
    const statusReason = all
      ? `version ${app.version}: ${held.wanted} canar${held.wanted === 1 ? 'y' : 'ies'} healthy; waiting for promotion (tessera app promote ${app.name})`
      : `version ${app.version}: ${held.healthy} of ${held.wanted} canar${held.wanted === 1 ? 'y' : 'ies'} healthy`;
    const same = c.wanted === next.wanted && c.healthy === next.healthy && c.healthyAtMs === next.healthyAtMs && app.statusReason === statusReason && app.status === 'deploying';
    return same ? app : { ...app, canary: next, status: 'deploying', statusReason, updatedAtMs: nowMs };
  }

  /**
   * Nomad's deployment promote: the version's canaries are good, so its rollout goes on (the old
   * instances replaced by the update strategy). Only while they hold it; `version`, when given,
   * must be the app's current one (so a script promotes what it checked).
   */
  promote(name: string, version: number, by = ''): Promise<App> {
    return this.exclusive(async () => {
      const app = this.getRecord(name);
      if (version > 0 && version !== app.version) throw new FailedPreconditionError(`app ${name} is at version ${app.version}, not ${version}: nothing promoted`);
      if (app.canary?.version !== app.version) throw new FailedPreconditionError(`version ${app.version} of ${name} has no canaries to promote (a version applied with update.canary has)`);
      if (app.canary.promotedAtMs) throw new FailedPreconditionError(`version ${app.version} of ${name} was promoted already${app.canary.promotedBy ? ` by ${app.canary.promotedBy}` : ''}`);
      if (app.status === 'failed') throw new FailedPreconditionError(`version ${app.version} of ${name} failed (${app.statusReason}): roll back or apply a new version`);
      const c = app.canary;
      if (!canaryHeld(app)) throw new FailedPreconditionError(`version ${app.version} of ${name} runs everywhere already: nothing to promote`);
      if (!c.wanted) throw new FailedPreconditionError(`version ${app.version} of ${name} has no canaries running yet (its components with update.canary replace no instance, or the first round has not run)`);
      if (c.healthy < c.wanted) throw new FailedPreconditionError(`version ${app.version} of ${name}: ${c.healthy} of ${c.wanted} canar${c.wanted === 1 ? 'y is' : 'ies are'} healthy; promote once all are`);
      const now = steadyNow();
      const next: AppRecord = { ...app, canary: { ...c, promotedAtMs: now, ...(by ? { promotedBy: by } : {}) }, status: 'deploying', statusReason: `rolling out version ${app.version} (promoted)`, updatedAtMs: now };
      await this.store.commit([{ type: 'put', key: this.keys.app(name), value: JSON.stringify(next) }], [attributed({
        kind: 'rollout.promoted', subject: name, message: `version ${app.version} of ${name} promoted: its ${c.wanted} canar${c.wanted === 1 ? 'y is' : 'ies are'} healthy; the other instances are replaced now`, fields: { version: String(app.version), canaries: String(c.wanted) },
      }, by)]);
      this.apps.set(name, next);
      this.kick();
      return this.toProto(next);
    });
  }

  private slotReady(app: string, comp: string, slot: number, delayMs: number, nowMs: number): boolean {
    const k = `${app}/${comp}/${slot}`;
    const f = this.slotFailures.get(k);
    if (!f) return true;
    // Quiet for as long as failures are remembered (their tombstones' life): the count starts over.
    if (nowMs - f.lastAtMs > TOMBSTONE_TTL_MS) {
      this.slotFailures.delete(k);
      return true;
    }
    return nowMs - f.lastAtMs >= slotBackoffMs(f.count, delayMs);
  }

  /**
   * One transaction when etcd takes it whole; otherwise in parts (Store.commitInParts: at most
   * 100 operations and ~1 MiB each, the ops in order, then the events).
   */
  private async commitChunked(ops: Op[], events: EventDraft[]): Promise<void> {
    let stored = 0;
    try {
      await this.store.commitInParts<null>([...ops.map((op) => ({ ops: [op], item: null })), ...events.map((e) => ({ ops: [], events: [e], item: null }))], () => stored++);
    } catch (err) {
      // Memory follows a round's writes only once they are all stored: a part that failed after
      // others were stored leaves etcd ahead of memory (instances placed there and not here, which
      // the next round would place again beside them). Read it all back before the next round.
      if (stored) this.resyncNeeded = true;
      throw err;
    }
  }

  /** Set when etcd holds writes this leader's memory does not (a write in parts failed half-way). */
  private resyncNeeded = false;

  /** Memory read back from etcd, as a new leader loads it. */
  private async resync(): Promise<void> {
    this.log.warn('a write in parts failed half-way: reading the apps and instances back from etcd');
    const loadedAtMs = this.loadedAtMs; // (healthy deadlines still count from the term's start)
    await this.load();
    this.loadedAtMs = loadedAtMs;
    this.resyncNeeded = false;
  }

  snapshot(excluding: ReadonlySet<string> = new Set()): NodeView[] {
    const views = new Map<string, NodeView>();
    for (const n of this.registry.allRecords()) {
      views.set(n.id, {
        id: n.id, state: n.state, labels: n.labels, ...(n.conditions ? { conditions: Object.fromEntries(Object.entries(n.conditions).map(([t, c]) => [t, c.message])) } : {}), ...(n.cordon ? { cordoned: n.cordon.reason } : {}),
        capacity: { cpuMillis: n.capacity.cpuMillis, memoryMib: n.capacity.memoryMib },
        allocated: { cpuMillis: 0, memoryMib: 0 },
        portRange: n.portRange ?? DEFAULT_PORT_RANGE, usedPorts: new Set(), groups: new Map(),
      });
    }
    // Ports stay taken while their instance's container may still run: one being stopped (this
    // round, or before and not yet reported gone) still listens there, and a new instance given
    // its port on the same host would fail to bind it or take its traffic (host networking).
    // As a terminating pod keeps its host ports and a stopping Nomad allocation its ports.
    let reportedStates: Map<string, string> | undefined;
    const stillRuns = (i: InstanceRecord) => {
      if (!this.registry.reported(i.nodeId)) return this.registry.stateOf(i.nodeId) !== 'DOWN';
      if (!reportedStates) {
        reportedStates = new Map();
        for (const n of this.registry.allRecords()) for (const o of this.registry.observed(n.id)) reportedStates.set(o.instanceId, o.state);
      }
      const st = reportedStates.get(i.id);
      return st !== undefined && st !== 'INSTANCE_STATE_STOPPED' && st !== 'INSTANCE_STATE_FAILED';
    };
    for (const i of this.instances.values()) {
      if (i.desired !== 'run' || excluding.has(i.id)) {
        const v = views.get(i.nodeId);
        if (v && Object.keys(i.ports).length && (i.desired === 'run' || stillRuns(i))) for (const p of Object.values(i.ports)) v.usedPorts.add(p);
        continue;
      }
      const v = views.get(i.nodeId);
      if (!v) continue;
      v.allocated.cpuMillis += i.resources.cpuMillis;
      v.allocated.memoryMib += i.resources.memoryMib;
      for (const p of Object.values(i.ports)) v.usedPorts.add(p);
      const g = `${i.app}/${i.component}`;
      v.groups.set(g, (v.groups.get(g) ?? 0) + 1);
    }
    return [...views.values()];
  }

  /** Quotas first (a request over its kind's quota fails on every node alike), then the placer. */
  private plan(requests: PlacementRequest[], excluding: ReadonlySet<string>): Plan {
    const used = this.kindUsage(excluding);
    const allowed: PlacementRequest[] = [];
    const refused: Plan['failures'] = [];
    for (const r of requests) {
      const q = r.kind ? this.quotas.get(r.kind) : undefined;
      if (!q) { allowed.push(r); continue; }
      const u = used.get(r.kind!) ?? { cpuMillis: 0, memoryMib: 0 };
      const over = (q.cpuMillis && u.cpuMillis + r.resources.cpuMillis > q.cpuMillis)
        ? `quota of kind ${r.kind}: cpu ${u.cpuMillis}+${r.resources.cpuMillis} > ${q.cpuMillis} millicores`
        : (q.memoryMib && u.memoryMib + r.resources.memoryMib > q.memoryMib)
          ? `quota of kind ${r.kind}: memory ${u.memoryMib}+${r.resources.memoryMib} > ${q.memoryMib} MiB` : '';
      if (over) {
        refused.push({ request: r, reasons: { '*': over }, counts: { quota: 1 } });
        continue;
      }
      used.set(r.kind!, { cpuMillis: u.cpuMillis + r.resources.cpuMillis, memoryMib: u.memoryMib + r.resources.memoryMib });
      allowed.push(r);
    }
    const plan = new Placer(this.snapshot(excluding), { sampleSize: this.opts.sampleSize, random: Math.random }).placeAll(allowed);
    return { placements: plan.placements, failures: [...refused, ...plan.failures] };
  }

  /** What each kind's running instances reserve. */
  kindUsage(excluding: ReadonlySet<string> = new Set()): Map<string, { cpuMillis: number; memoryMib: number }> {
    const used = new Map<string, { cpuMillis: number; memoryMib: number }>();
    for (const i of this.instances.values()) {
      if (i.desired !== 'run' || excluding.has(i.id)) continue;
      const k = i.kind ?? i.component;
      const u = used.get(k) ?? { cpuMillis: 0, memoryMib: 0 };
      used.set(k, { cpuMillis: u.cpuMillis + i.resources.cpuMillis, memoryMib: u.memoryMib + i.resources.memoryMib });
    }
    return used;
  }

  // ──────────────────────── registry credentials, secrets ────────────────────────

  /** The key file was read again (SIGHUP): what could not be opened is tried again, and resealed with its first key. */
  rekeyed(): Promise<void> {
    return this.sealed.rekeyed();
  }

  /** The components of each app's current version and of its stable one (an auto-revert's target). */
  private *componentsInUse(): Generator<{ app: string; component: NormalComponent }> {
    for (const app of this.apps.values()) {
      for (const v of new Set([app.version, app.stableVersion])) {
        for (const component of this.versions.get(app.name)?.get(v)?.spec?.components ?? []) yield { app: app.name, component };
      }
    }
  }

  // ─────────────────────────────── quotas ───────────────────────────────

  async setQuota(q: { kind?: string; cpuMillis?: number | string; memoryMib?: number | string } | null | undefined, by = ''): Promise<Quota> {
    const kind = q?.kind ?? '';
    const v: import('../common/errors').FieldViolation[] = [];
    if (!/^[a-z][a-z0-9-]{0,62}$/.test(kind)) v.push({ field: 'quota.kind', message: `must be a component kind (a-z, 0-9, "-"), got ${JSON.stringify(kind)}` });
    const cpu = Number(q?.cpuMillis ?? 0);
    const mem = Number(q?.memoryMib ?? 0);
    if (!Number.isInteger(cpu) || cpu < 0) v.push({ field: 'quota.cpuMillis', message: 'must be a whole number >= 0 (0: no limit)' });
    if (!Number.isInteger(mem) || mem < 0) v.push({ field: 'quota.memoryMib', message: 'must be a whole number >= 0 (0: no limit)' });
    if (!v.length && !cpu && !mem) v.push({ field: 'quota', message: 'set cpuMillis or memoryMib (or delete the quota)' });
    if (v.length) throw new InvalidArgumentError(v);
    const rec = { cpuMillis: cpu, memoryMib: mem };
    await this.store.commit([{ type: 'put', key: this.keys.quota(kind), value: JSON.stringify(rec) }], [attributed({
      kind: 'quota.set', subject: kind, message: `quota of kind ${kind}: ${cpu || 'any'} millicores, ${mem || 'any'} MiB`, fields: { cpuMillis: String(cpu), memoryMib: String(mem) },
    }, by)]);
    this.quotas.set(kind, rec);
    this.kick();
    return this.quotaOf(kind);
  }

  async deleteQuota(kind: string, by = ''): Promise<Quota> {
    if (!this.quotas.has(kind)) throw new NotFoundError('quota', kind);
    const q = this.quotaOf(kind);
    await this.store.commit([{ type: 'delete', key: this.keys.quota(kind) }], [attributed({ kind: 'quota.deleted', subject: kind, message: `quota of kind ${kind} deleted` }, by)]);
    this.quotas.delete(kind);
    this.kick();
    return q;
  }

  listQuotas(): Quota[] {
    return [...this.quotas.keys()].sort().map((k) => this.quotaOf(k));
  }

  private quotaOf(kind: string): Quota {
    const q = this.quotas.get(kind)!;
    const u = this.kindUsage().get(kind) ?? { cpuMillis: 0, memoryMib: 0 };
    return { kind, cpuMillis: q.cpuMillis, memoryMib: q.memoryMib, used: { cpuMillis: u.cpuMillis, memoryMib: u.memoryMib } };
  }

  /** Desired-run instances with their kind, for the component manager. */
  runningRecords(): InstanceRecord[] {
    return [...this.instances.values()].filter((i) => i.desired === 'run');
  }

  /** The kind of a component in the version an instance runs. */
  kindOfInstance(i: InstanceRecord): string {
    if (i.kind) return i.kind;
    const c = this.versions.get(i.app)?.get(i.version)?.spec.components.find((x) => x.name === i.component);
    return c ? kindOf(c) : i.component;
  }

  private dryPlan(spec: NormalAppSpec): Plan {
    const existing = new Set([...this.instances.values()].filter((i) => i.app === spec.name).map((i) => i.id));
    const reqs: PlacementRequest[] = [];
    for (const c of spec.components) {
      for (let slot = 0; slot < c.instances; slot++) {
        reqs.push({
          app: spec.name, component: c.name, slot, group: `${spec.name}/${c.name}`,
          resources: { cpuMillis: c.resources!.cpuMillis, memoryMib: c.resources!.memoryMib },
          ports: c.ports.map((p) => ({ name: p.name, port: p.port })), constraints: c.constraints,
          placement: c.placement as 'spread' | 'binpack', distinctHosts: c.distinctHosts, kind: kindOf(c),
        });
      }
    }
    return this.plan(reqs, existing);
  }

  // ─────────────────────────────── dispatch ───────────────────────────────

  private dispatch(nowMs: number): void {
    const byNode = new Map<string, InstanceRecord[]>();
    for (const i of this.instances.values()) {
      if (i.desired !== 'run') continue;
      if (!byNode.has(i.nodeId)) byNode.set(i.nodeId, []);
      byNode.get(i.nodeId)!.push(i);
    }
    const term = 0;
    for (const id of this.secretWaits) if (this.instances.get(id)?.desired !== 'run') this.secretWaits.delete(id);
    for (const [id, m] of this.migrations) if (!m.running && !m.outcome && this.instances.get(id)?.migrate?.state !== 'pending') this.migrations.delete(id);
    // An instruction whose effect agents report leaves `sent` (it is no longer pending).
    const reported = new Set<string>();
    for (const nodeId of this.gateway.connectedNodes()) {
      const want = byNode.get(nodeId) ?? [];
      const have = new Map(this.registry.observed(nodeId).map((o) => [o.instanceId, o]));
      const wantIds = new Set(want.map((w) => w.id));
      for (const w of want) {
        if (have.has(w.id)) {
          this.sent.delete(`run-${w.id}`);
          continue;
        }
        // Its volumes first: the RUN goes once they are copied (or given up).
        if (w.migrate?.state === 'pending') {
          this.migrateVolumes(w, nowMs);
          continue;
        }
        this.send(nodeId, `run-${w.id}`, nowMs, () => this.runInstruction(w, term));
      }
      for (const [id, o] of have) {
        if (wantIds.has(id) || o.state === 'INSTANCE_STATE_STOPPED') {
          this.sent.delete(`stop-${id}`);
          continue;
        }
        reported.add(id);
        const rec = this.instances.get(id);
        this.send(nodeId, `stop-${id}`, nowMs, () => ({
          id: `stop-${id}`, action: 'INSTRUCTION_ACTION_STOP', target: { app: o.app, component: o.component, instanceId: id, nodeId },
          reason: rec?.stopReason ?? 'no desired instance claims it', issuedAtMs: nowMs, stopGraceMs: this.stopGrace(rec),
        }));
      }
    }
    // An agent that attached (after a restart, or to a new leader) gets the RUN of each running
    // instance whose component names a registry credential or secrets once more: an adopted
    // container's label keeps neither the login nor the secret values, and the agent takes only
    // those from it (for the next pull, and a container it makes again).
    for (const [nodeId, { seq, atMs }] of this.attached) {
      // A lookup, not a copy of the list each: with thousands of agents attaching at once (a new
      // leader's first seconds) the copies made each dispatch quadratic, and the leader took 26 s
      // to take 3,000 agents back (some went DOWN meanwhile).
      if (!this.gateway.isConnected(nodeId)) continue;
      const observed = new Set(this.registry.observed(nodeId).map((o) => o.instanceId));
      // A restarted agent may say hello before it has adopted its containers: its first report names them.
      if (!observed.size && nowMs - atMs < 30_000) continue;
      this.attached.delete(nodeId);
      for (const w of byNode.get(nodeId) ?? []) {
        const comp = this.versions.get(w.app)?.get(w.version)?.spec.components.find((c) => c.name === w.component);
        if (!(comp?.imagePullCredential || comp?.secretEnv) || !observed.has(w.id)) continue;
        this.send(nodeId, `login-${w.id}-${seq}`, nowMs, () => this.runInstruction(w, term, true));
      }
    }
    for (const [k, at] of this.sent) {
      // A STOP whose container the agent no longer reports (removed) is done too.
      if (nowMs - at > 10 * RESEND_AFTER_MS || (k.startsWith('stop-') && !reported.has(k.slice(5)))) this.sent.delete(k);
    }
  }

  /** Whether a node may still give a migrating volume: it is in the list and not DOWN (its agent may be re-attaching). */
  private canGiveVolumes(nodeId: string): boolean {
    const state = this.registry.stateOf(nodeId);
    return !!state && state !== 'DOWN';
  }

  /** A node's agent to copy a volume from or to: attached, with its relay's address. */
  private attachedRelay(nodeId: string): string | undefined {
    if (!this.canGiveVolumes(nodeId) || !this.gateway.isConnected(nodeId)) return undefined;
    return this.registry.get(nodeId).endpoint || undefined;
  }

  /**
   * Copies a pending instance's migrating volumes from the node that held them to its own
   * (the agents' AgentVolumes, through the leader), one copy at a time per instance; a failed
   * copy is tried again MIGRATE_RETRY_MS later, MIGRATE_ATTEMPTS times, then given up (the
   * instance starts with empty volumes). The outcome is recorded by the next reconcile.
   */
  private migrateVolumes(w: InstanceRecord, nowMs: number): void {
    const m = this.migrations.get(w.id) ?? { running: false, attempts: 0, nextAtMs: 0 };
    this.migrations.set(w.id, m);
    if (m.running || m.outcome || nowMs < m.nextAtMs) return;
    const mig = w.migrate!;
    const from = this.attachedRelay(mig.from);
    const to = this.attachedRelay(w.nodeId);
    const copier = this.opts.volumeCopier;
    const giveUp = (why: string) => { m.outcome = { failed: why, ms: 0 }; this.kick(); };
    if (!copier) return giveUp('this coordinator cannot copy volumes');
    // DOWN or gone: nothing to wait for. Not attached (re-attaching after a change of leader, say): an attempt, tried again.
    if (!this.canGiveVolumes(mig.from)) return giveUp(`node ${mig.from} is ${this.registry.stateOf(mig.from) ?? 'gone'}`);
    if (!to) return; // its own node's agent is away: tried when it is back
    m.running = true;
    const t0 = steadyNow();
    void (async () => {
      if (!from) throw new Error(`the agent of node ${mig.from} is not attached`);
      let bytes = 0;
      for (const volume of mig.volumes) bytes += await copier.copy(from, to, { app: w.app, component: w.component, slot: w.slot, volume });
      return bytes;
    })().then((bytes) => {
      m.outcome = { bytes, ms: steadyNow() - t0 };
      this.log.info({ instance: w.id, from: mig.from, to: w.nodeId, bytes }, 'volumes migrated');
      // The old copy goes: were the slot to come back to that node empty-handed, it must not find stale data.
      for (const volume of mig.volumes) {
        copier.drop(from!, { app: w.app, component: w.component, slot: w.slot, volume })
          .catch((e) => this.log.warn({ instance: w.id, node: mig.from, volume, err: (e as Error).message }, 'the old copy of a migrated volume was not removed'));
      }
    }, (err) => {
      m.attempts++;
      const why = (err as Error).message;
      this.log.warn({ instance: w.id, from: mig.from, to: w.nodeId, attempt: m.attempts, err: why }, 'volume migration failed');
      if (m.attempts >= MIGRATE_ATTEMPTS) m.outcome = { failed: why, ms: steadyNow() - t0 };
      else m.nextAtMs = steadyNow() + MIGRATE_RETRY_MS;
    }).finally(() => {
      m.running = false;
      this.kick();
    });
  }

  /** The leader's term ended: copies in flight are dropped (the next leader starts them again). */
  stop(): void {
    this.opts.volumeCopier?.close();
  }

  /** An agent attached: its instances' registry logins go to it again with the next dispatch. */
  agentAttached(nodeId: string, nowMs = steadyNow()): void {
    this.attached.set(nodeId, { seq: ++this.attachSeq, atMs: nowMs });
  }

  private send(nodeId: string, id: string, nowMs: number, build: () => Instruction | undefined): void {
    const last = this.sent.get(id);
    if (last && nowMs - last < RESEND_AFTER_MS) return;
    const instruction = build();
    if (!instruction) return;
    if (this.gateway.send(nodeId, instruction)) {
      this.sent.set(id, nowMs);
      this.opts.metrics?.inc('tessera_instructions_sent_total', { action: String(instruction.action).replace('INSTRUCTION_ACTION_', '') });
      this.log.debug({ node: nodeId, instruction: id, resend: !!last }, 'instruction sent');
    }
  }

  /** Instructions sent within the resend window whose effect agents do not report yet (or, for a login RUN, not yet acknowledged). */
  pendingInstructions(nowMs = steadyNow()): number {
    let n = 0;
    for (const at of this.sent.values()) if (nowMs - at < RESEND_AFTER_MS) n++;
    return n;
  }

  onAck(nodeId: string, instructionId: string, ok: boolean, message: string): void {
    // A login RUN changes nothing an agent reports (the instance runs already): taken is done.
    if (ok && instructionId.startsWith('login-')) this.sent.delete(instructionId);
    if (!ok) this.log.warn({ node: nodeId, instruction: instructionId, message }, 'instruction refused by agent');
  }

  private stopGrace(rec?: InstanceRecord): number {
    if (!rec) return 10_000;
    const comp = this.versions.get(rec.app)?.get(rec.version)?.spec.components.find((c) => c.name === rec.component);
    return comp?.stopGraceMs ?? 10_000;
  }

  /**
   * The RUN of an instance; none while a secret it names cannot be given (deleted meanwhile
   * from a version the apply checked, or one this leader cannot open): it is not started without
   * its environment, and an event says why once. A hand-over (the RUN again for an instance an
   * agent adopted) is left out quietly: the instance runs already (the agent fails one it would
   * have to make again without its values, and its replacement asks again).
   */
  private runInstruction(w: InstanceRecord, term: number, handover = false): Instruction | undefined {
    const comp = this.versions.get(w.app)?.get(w.version)?.spec.components.find((c) => c.name === w.component);
    if (!comp) throw new Error(`no spec for ${w.app} v${w.version} component ${w.component}`);
    const secrets = this.sealed.secretEnv(comp);
    if (secrets.missing !== undefined && handover) {
      this.log.warn({ instance: w.id, reason: secrets.missing }, 'secret values not handed over again to the agent that adopted the instance');
      return undefined;
    }
    if (secrets.missing !== undefined) {
      this.log.warn({ instance: w.id, reason: secrets.missing }, 'instance not started: a secret it names cannot be given');
      if (!this.secretWaits.has(w.id)) {
        this.secretWaits.add(w.id);
        void this.store.commit([], [{ kind: 'instance.secret_unavailable', subject: w.id, message: `not started: ${secrets.missing}`, fields: { app: w.app, component: w.component, node: w.nodeId } }])
          .catch((e) => this.log.debug({ err: (e as Error).message }, 'secret_unavailable event not written'));
      }
      return undefined;
    }
    this.secretWaits.delete(w.id);
    const env: Record<string, string> = {
      ...comp.env,
      ...secrets.env,
      TESSERA_APP: w.app, TESSERA_COMPONENT: w.component, TESSERA_INSTANCE_ID: w.id,
      TESSERA_SLOT: String(w.slot), TESSERA_NODE_ID: w.nodeId, TESSERA_VERSION: String(w.version),
    };
    for (const [name, port] of Object.entries(w.ports)) {
      const k = name.toUpperCase().replace(/-/g, '_');
      env[`PORT_${k}`] = String(port);
    }
    const instance: InstanceSpec = {
      instanceId: w.id, app: w.app, component: w.component, specVersion: w.version, slot: w.slot,
      image: comp.image, command: comp.command, args: comp.args, env, ports: w.ports,
      resources: comp.resources, health: comp.health, restart: comp.restart, volumes: comp.volumes, stopGraceMs: comp.stopGraceMs,
      taskStatePoll: comp.taskStatePoll, capabilities: comp.capabilities, readOnlyRoot: comp.readOnlyRoot,
      cpuHardLimit: !!comp.cpuHardLimit, imagePullPolicy: comp.imagePullPolicy ?? '',
      // For the pull only (the agent keeps it out of labels and off disk); a credential deleted
      // meanwhile, or one this leader cannot open, leaves the pull to the agent's own credentials.
      pullAuth: this.sealed.pullAuth(comp),
      secretEnv: secrets.names,
    };
    return {
      id: `run-${w.id}`, action: 'INSTRUCTION_ACTION_RUN', target: { app: w.app, component: w.component, instanceId: w.id, nodeId: w.nodeId },
      reason: `v${w.version} slot ${w.slot}`, issuedAtMs: steadyNow(), leaderTerm: term, instance,
      attributes: [
        { name: 'cpu', min: comp.resources!.cpuMillis, max: comp.resources!.cpuMillis, value: comp.resources!.cpuMillis, unit: 'millicores' },
        { name: 'memory', min: comp.resources!.memoryMib, max: comp.resources!.memoryMib, value: comp.resources!.memoryMib, unit: 'MiB' },
        { name: 'image', text: comp.image },
      ],
    };
  }

  // ─────────────────────────────── helpers ───────────────────────────────

  private getRecord(name: string): AppRecord {
    if (!name) throw InvalidArgumentError.field('name', 'is required');
    const a = this.apps.get(name);
    if (!a) throw new NotFoundError('app', name);
    return a;
  }

  /** The number an app's next version takes: one past the highest it has kept. */
  private nextVersion(name: string): number {
    return Math.max(0, ...(this.versions.get(name)?.keys() ?? [])) + 1;
  }

  private async revertTo(app: AppRecord, target: VersionRecord, reason: string, by = ''): Promise<AppRecord> {
    const now = steadyNow();
    const version = this.nextVersion(app.name);
    const next: AppRecord = { ...app, version, status: 'reverting', statusReason: reason, updatedAtMs: now, rolloutStartedAtMs: now, deleting: false };
    await this.writeVersion(next, { version, createdAtMs: now, status: 'deploying', reason: `${reason} (spec of version ${target.version})`, spec: target.spec, ...(by ? { by } : {}) }, [attributed({
      kind: 'app.reverted', subject: app.name, message: `app ${app.name}: ${reason}; version ${version} has the spec of version ${target.version}`, fields: { from: String(app.version), to: String(target.version), version: String(version) },
    }, by)]);
    this.kick();
    return next;
  }

  /** Writes a new version and the app record, trimming history to KEEP_VERSIONS (keeping the stable one). */
  private async writeVersion(app: AppRecord, rec: VersionRecord, events: EventDraft[], extra: Op[] = []): Promise<void> {
    const history = new Map(this.versions.get(app.name) ?? []);
    history.set(rec.version, rec);
    const ops: Op[] = [
      { type: 'put', key: this.keys.appVersion(app.name, rec.version), value: JSON.stringify(rec) },
      { type: 'put', key: this.keys.app(app.name), value: JSON.stringify(app) },
      ...extra,
    ];
    const inUse = new Set([...this.instances.values()].filter((i) => i.app === app.name).map((i) => i.version));
    const old = [...history.keys()].sort((a, b) => b - a).slice(KEEP_VERSIONS).filter((v) => v !== app.stableVersion && !inUse.has(v));
    for (const v of old) {
      ops.push({ type: 'delete', key: this.keys.appVersion(app.name, v) });
      history.delete(v);
    }
    // A version still rolling out when a newer one comes is replaced before it finished: it
    // will never run everywhere, so its history says so instead of "deploying" for good.
    // (After the trim: a key is named once in a transaction.)
    for (const v of [...history.values()]) {
      if (v.version === rec.version || (v.status !== 'deploying' && v.status !== 'pending')) continue;
      const done: VersionRecord = { ...v, status: 'superseded', reason: `${v.reason}; replaced by version ${rec.version} before it finished rolling out` };
      history.set(v.version, done);
      ops.push({ type: 'put', key: this.keys.appVersion(app.name, v.version), value: JSON.stringify(done) });
    }
    await this.store.commit(ops, events);
    this.versions.set(app.name, history);
    this.apps.set(app.name, app);
  }

  private toProto(a: AppRecord, instances = this.listInstancesOf(a.name)): App {
    const byState: Record<string, number> = {};
    for (const i of instances) {
      const s = String(i.state ?? 'INSTANCE_STATE_PENDING').replace('INSTANCE_STATE_', '');
      if (i.desired === 'run') byState[s] = (byState[s] ?? 0) + 1;
    }
    return {
      name: a.name, version: a.version, stableVersion: a.stableVersion, spec: this.versions.get(a.name)?.get(a.version)?.spec,
      status: a.status, statusReason: a.statusReason, createdAtMs: a.createdAtMs, updatedAtMs: a.updatedAtMs, instancesByState: byState,
      ...(a.canary ? { canary: { version: a.canary.version, wanted: a.canary.wanted, healthy: a.canary.healthy, healthyAtMs: a.canary.healthyAtMs ?? 0, promotedAtMs: a.canary.promotedAtMs ?? 0, promotedBy: a.canary.promotedBy ?? '' } } : {}),
      policyInstances: Object.fromEntries([...this.replicas].filter(([k]) => k.startsWith(`${a.name}/`)).map(([k, n]) => [k.slice(a.name.length + 1), n])),
    };
  }

  private listInstancesOf(app: string): Instance[] {
    return this.apps.has(app) ? this.listInstances(app, '') : [];
  }
}

function toProtoFailure(f: import('./scheduler/types').PlacementFailure): ProtoPlacementFailure {
  return { component: f.request.component, slot: f.request.slot, reasons: f.reasons, reasonCounts: f.counts };
}

/** What an apply (or a scale, restart or policy's resize, which apply a version) answers. */
export interface Applied { app: App; changed: boolean; unplaced: ProtoPlacementFailure[]; planned: number; plan: ComponentPlanProto[] }

function toProtoPlan(p: ComponentPlan): ComponentPlanProto {
  return { component: p.component, action: `PLAN_ACTION_${p.action.toUpperCase().replace('-', '_')}` as ComponentPlanProto['action'], instancesFrom: p.instancesFrom, instancesTo: p.instancesTo, changes: p.changes, note: p.note ?? '' };
}

export { isHealthy };

export interface SlotFailures { count: number; lastAtMs: number; /** where, the latest last (at most 5) */ nodes: string[] }

function addFailure(f: SlotFailures | undefined, nodeId: string, atMs: number): SlotFailures {
  const nodes = [...(f?.nodes ?? []).filter((n) => n !== nodeId), nodeId].slice(-5);
  return { count: (f?.count ?? 0) + 1, lastAtMs: Math.max(f?.lastAtMs ?? 0, atMs), nodes };
}

/** How long a slot whose instances failed `count` times waits before its next instance: doubling from the restart delay, at most a minute. */
export function slotBackoffMs(count: number, delayMs: number): number {
  return Math.min(60_000, delayMs * Math.pow(2, Math.max(0, count - 1)));
}

/** The failures per slot (app/component/slot) that the tombstones of failed instances record. Pure. */
export function slotFailuresOf(instances: Iterable<InstanceRecord>): Map<string, SlotFailures> {
  const out = new Map<string, SlotFailures>();
  const failed = [...instances].filter((i) => i.desired === 'stop' && i.failure).sort((a, b) => (a.stoppedAtMs ?? 0) - (b.stoppedAtMs ?? 0));
  for (const i of failed) {
    const k = `${i.app}/${i.component}/${i.slot}`;
    out.set(k, addFailure(out.get(k), i.nodeId, i.stoppedAtMs ?? 0));
  }
  return out;
}
