// The component manager (leader only): which component instances can take job steps now.
//
//   deployed  an instance Tessera runs is registered while it is RUNNING, healthy, on a node that
//             is not DOWN, and has answered Component.Describe (kind, version, operations); it is
//             deregistered the moment any of that stops being true (a stop decision, a failed
//             health check, a crash, its node going DOWN).
//   external  registered through Admin with a lease (ttl); renewing = registering again; the
//             leader deletes it when the lease runs out. Stored in etcd, so a new leader keeps
//             them (and gives each one a full ttl from its takeover to renew).
//
// Routing figures live here too: per instance a peak-EWMA step latency, the jobs the leader has
// in flight through it, and a "suspect" mark after a transport failure (left out of routing for
// a few seconds: passive health checking, like Envoy's outlier detection).
import * as grpc from '@grpc/grpc-js';
import * as semver from 'semver';
import { steadyNow } from '../common/clock';
import { InvalidArgumentError, NotFoundError } from '../common/errors';
import type { Logger } from '../common/logger';
import type { ComponentInstance } from '../common/generated/tessera/v1/ComponentInstance';
import type { RegisterComponentRequest__Output } from '../common/generated/tessera/v1/RegisterComponentRequest';
import type { Deployments } from './deployments';
import type { Keys } from './keys';
import type { NodeRegistry } from './node-registry';
import { attributed, EventDraft, Store } from './store';
import type { Candidate } from './jobs/path';

export interface Routable {
  instanceId: string;
  kind: string;
  version: string;
  operations: string[];
  nodeId: string;
  endpoint: string;
  agentEndpoint: string;
  source: 'deployed' | 'external';
  app: string;
  registeredAtMs: number;
  leaseExpiresAtMs: number;
  /**
   * The follower its node's agent is attached through: the agent cannot reach the leader, and
   * the leader (most likely) cannot reach it, so its instances are left out of routing while so.
   */
  relayedBy?: string;
}

/**
 * The instances a job's planned path holds while it runs, with the share of the path's latency
 * each stands for (they add up to 1): a 4-stage job on instances of like latency is about a
 * quarter of a step in progress on each at any moment, and one 10x slower than the others holds
 * most of it. The path cost counts load this way; saturation counts whole jobs.
 */
export interface Holding {
  ids: string[];
  shares: number[];
}

/** A path-planner candidate with the instance it stands for. */
export type LiveCandidate = Candidate & { r: Routable };

interface ExternalRecord {
  instanceId: string;
  kind: string;
  version: string;
  operations: string[];
  endpoint: string;
  ttlMs: number;
  registeredAtMs: number;
  expiresAtMs: number;
}

interface Figures {
  ewmaMs: number;
  lastAtMs: number;
  inFlight: number;
  /** The jobs in flight each weighted by this instance's share of its path (see Holding). */
  load: number;
  ok: number;
  failed: number;
  suspectUntilMs: number;
}

export interface ComponentManagerOptions {
  /** Jobs in flight through one instance before it counts as saturated. */
  maxInFlightPerInstance: number;
  /** How long an instance that failed a step with a transport error is left out. */
  suspectMs: number;
  /** Peak-EWMA decay time constant. */
  decayMs: number;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const KIND_RE = /^[a-z][a-z0-9-]{0,62}$/;
/** Codes that say "this instance (or its host) is in trouble", not "this input is bad". */
export const TRANSPORT_CODES = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.CANCELLED, grpc.status.UNKNOWN, grpc.status.INTERNAL, grpc.status.RESOURCE_EXHAUSTED, grpc.status.ABORTED]);

export class ComponentManager {
  private externals = new Map<string, ExternalRecord>();
  private figures = new Map<string, Figures>();
  private routable: Routable[] = [];
  private registered = new Map<string, Routable>();
  /** Deployed instances that ran when this leader took over, not yet routable under it (see rebuild). */
  private inherited = new Set<string>();
  private rebuiltAtMs = 0;
  /** Queue depth each deployed instance last reported, taken at the rebuild (not per job). */
  private queueDepths = new Map<string, number>();
  private dirty = true;

  constructor(
    private readonly store: Store,
    private readonly keys: Keys,
    private readonly deployments: Deployments,
    private readonly registry: NodeRegistry,
    private readonly opts: ComponentManagerOptions,
    private readonly log: Logger,
  ) {}

  async load(nowMs = steadyNow()): Promise<void> {
    this.inherited = new Set(this.deployments.runningRecords().map((r) => r.id));
    const all = await this.store.client.getAll().prefix(this.keys.externals).strings();
    for (const v of Object.values(all)) {
      const r = JSON.parse(v) as ExternalRecord;
      // A new leader gives every lease a full ttl from now: the instance may have been
      // renewing against the old leader a moment ago.
      this.externals.set(r.instanceId, { ...r, expiresAtMs: Math.max(r.expiresAtMs, nowMs + r.ttlMs) });
    }
    this.rebuild(nowMs);
  }

  /** Something changed (an instance event): rebuild the routing view before the next job. */
  invalidate(): void {
    this.dirty = true;
  }

  /** Routable instances now (rebuilt at most every 100 ms, or at once after invalidate). */
  list(nowMs = steadyNow()): Routable[] {
    if (this.dirty || nowMs - this.rebuiltAtMs > 100) this.rebuild(nowMs);
    return this.routable;
  }

  private rebuild(nowMs: number): void {
    this.dirty = false;
    this.rebuiltAtMs = nowMs;
    const out: Routable[] = [];
    this.queueDepths = new Map();
    const statusByNode = new Map<string, Map<string, import('../common/generated/tessera/v1/InstanceStatus').InstanceStatus__Output>>();
    const nodes = new Map([...this.registry.allRecords()].map((n) => [n.id, n]));
    // Why a wanted instance is out of routing, for its deregistration event (an instance not
    // wanted any more is out because it stops).
    const why = new Map<string, string>();
    for (const rec of this.deployments.runningRecords()) {
      const node = nodes.get(rec.nodeId);
      if (!node || node.state === 'DOWN' || !node.endpoint) {
        why.set(rec.id, !node ? `its node ${rec.nodeId} is gone` : node.state === 'DOWN' ? `its node ${rec.nodeId} is DOWN` : `its node ${rec.nodeId} gives no agent endpoint`);
        continue;
      }
      let idx = statusByNode.get(rec.nodeId);
      if (!idx) {
        idx = new Map(this.registry.observed(rec.nodeId).map((o) => [o.instanceId, o]));
        statusByNode.set(rec.nodeId, idx);
      }
      const o = idx.get(rec.id);
      const port = rec.ports.grpc;
      if (!o || !port || o.state !== 'INSTANCE_STATE_RUNNING' || o.health !== 'healthy' || !o.described) {
        why.set(rec.id, !o ? 'its node no longer reports it' : !port ? 'it has no grpc port'
          : o.state !== 'INSTANCE_STATE_RUNNING' ? `it is ${String(o.state).replace('INSTANCE_STATE_', '')}` : o.health !== 'healthy' ? `its health is ${o.health || 'unknown'}` : 'it no longer describes itself');
        continue;
      }
      this.queueDepths.set(rec.id, Number(o.task?.queueDepth ?? 0));
      out.push({
        instanceId: rec.id, kind: this.deployments.kindOfInstance(rec), version: o.described.version, operations: o.described.operations,
        nodeId: rec.nodeId, endpoint: `127.0.0.1:${port}`, agentEndpoint: node.endpoint, source: 'deployed', app: rec.app,
        registeredAtMs: this.registered.get(rec.id)?.registeredAtMs ?? nowMs, leaseExpiresAtMs: 0,
        ...(node.relayedBy ? { relayedBy: node.relayedBy } : {}),
      });
    }
    for (const e of this.externals.values()) {
      if (e.expiresAtMs <= nowMs) continue;
      out.push({
        instanceId: e.instanceId, kind: e.kind, version: e.version, operations: e.operations, nodeId: '', endpoint: e.endpoint, agentEndpoint: '',
        source: 'external', app: '', registeredAtMs: e.registeredAtMs, leaseExpiresAtMs: e.expiresAtMs,
      });
    }
    this.routable = out;
    // Registration events for deployed instances (externals have theirs at register/expire).
    const now = new Map(out.map((r) => [r.instanceId, r]));
    const events: EventDraft[] = [];
    // Instances that ran before this leader took over were registered and announced by the one
    // before it (or were about to be): they come back into routing as agents re-attach, without
    // an event each (a failover used to repeat every registration in the event log).
    let inherited = 0;
    for (const [id, r] of now) {
      if (!this.registered.has(id) && r.source === 'deployed') {
        if (this.inherited.delete(id)) {
          inherited++;
          continue;
        }
        events.push({ kind: 'component.registered', subject: id, message: `${r.kind} ${r.version} instance ${id} on ${r.nodeId} registered (${r.operations.join(', ')})`, fields: { kind: r.kind, version: r.version, node: r.nodeId } });
      }
    }
    for (const [id, r] of this.registered) {
      if (!now.has(id) && r.source === 'deployed') {
        const stopping = this.deployments.instance(id);
        const reason = why.get(id) ?? (stopping?.stopReason ? `it stops: ${stopping.stopReason}` : 'it stops');
        events.push({ kind: 'component.deregistered', subject: id, message: `${r.kind} instance ${id} on ${r.nodeId} deregistered: ${reason}`, fields: { kind: r.kind, node: r.nodeId, reason } });
        this.figures.delete(id);
      }
    }
    this.registered = now;
    if (inherited) this.log.info({ instances: inherited }, 'instances running before this leader took over are routable again');
    // In parts: a node going DOWN with hundreds of instances makes more events than etcd takes in one transaction.
    if (events.length) this.store.commitInParts(events.map((e) => ({ ops: [], events: [e], item: e }))).catch((err) => this.log.debug({ err: (err as Error).message }, 'registration events not recorded'));
  }

  /**
   * Path-planner candidates, with the live routing figures. The same objects (and array) on
   * every call while the registry list stands, their figures refreshed in place: the scheduler
   * plans every job, and a fresh copy per job was most of what planning allocated. Valid until
   * the next call; nobody keeps them.
   */
  candidates(nowMs = steadyNow()): LiveCandidate[] {
    const list = this.list(nowMs);
    let c = this.cands;
    if (!c || c.of !== list) {
      const objs = list.map((r): LiveCandidate => ({
        instanceId: r.instanceId, kind: r.kind, nodeId: r.nodeId || `external:${r.endpoint}`,
        latencyMs: 1, inFlight: 0, load: 0, queueDepth: 0, healthy: true, saturated: false, unreachable: false, r,
      }));
      c = this.cands = { of: list, list: objs, byId: new Map(objs.map((o) => [o.instanceId, o])) };
    }
    for (const x of c.list) {
      const f = this.figures.get(x.instanceId);
      x.latencyMs = f ? this.estimate(f) : 1;
      x.inFlight = f?.inFlight ?? 0;
      x.load = f?.load ?? 0;
      x.queueDepth = this.queueDepths.get(x.instanceId) ?? 0;
      x.unreachable = !!x.r.relayedBy;
      x.healthy = !(f && f.suspectUntilMs > nowMs) && !x.unreachable;
      x.saturated = x.inFlight >= this.opts.maxInFlightPerInstance;
    }
    return c.list;
  }

  /** An external instance (registered through the Admin API, run by someone else), if this is one. */
  external(instanceId: string): { kind: string; endpoint: string } | undefined {
    return this.externals.get(instanceId);
  }

  /** The candidate of an instance from the last candidates() call. */
  candidate(instanceId: string): LiveCandidate | undefined {
    return this.cands?.byId.get(instanceId);
  }

  private cands?: { of: Routable[]; list: LiveCandidate[]; byId: Map<string, LiveCandidate> };

  /**
   * The latency estimate: it moves only with new samples (as Finagle's peak EWMA does), so an
   * instance that was slow stays expensive until the others' load makes it worth trying again
   * (the cost multiplies latency by 1 + jobs in flight), and then its new samples count.
   */
  private estimate(f: Figures): number {
    return f.ewmaMs + 0.05;
  }

  private fig(id: string): Figures {
    let f = this.figures.get(id);
    if (!f) {
      f = { ewmaMs: 1, lastAtMs: steadyNow(), inFlight: 0, load: 0, ok: 0, failed: 0, suspectUntilMs: 0 };
      this.figures.set(id, f);
    }
    return f;
  }

  /** A job's planned path takes these instances until release(). */
  acquire(h: Holding): void {
    for (let i = 0; i < h.ids.length; i++) {
      const f = this.fig(h.ids[i]);
      f.inFlight++;
      f.load += h.shares[i];
    }
  }

  release(h: Holding): void {
    for (let i = 0; i < h.ids.length; i++) {
      const f = this.figures.get(h.ids[i]);
      if (!f || f.inFlight <= 0) continue;
      f.inFlight--;
      // Back to exactly 0 with the last job (no drift from adding and taking fractions).
      f.load = f.inFlight ? Math.max(0, f.load - h.shares[i]) : 0;
    }
  }

  /** A step's outcome: peak-EWMA latency (a slow sample counts at once, a fast one decays in). */
  observe(id: string, durationMs: number, ok: boolean, code: number, nowMs = steadyNow()): void {
    const f = this.fig(id);
    if (ok) {
      f.ok++;
      // A slower sample counts at once; a faster one moves the estimate with a weight that
      // grows with the time since the last sample (time constant decayMs).
      const w = Math.exp(-Math.max(1, nowMs - f.lastAtMs) / this.opts.decayMs);
      f.ewmaMs = durationMs > f.ewmaMs ? durationMs : f.ewmaMs * w + durationMs * (1 - w);
      f.lastAtMs = nowMs;
      return;
    }
    f.failed++;
    if (TRANSPORT_CODES.has(code)) {
      f.suspectUntilMs = nowMs + this.opts.suspectMs;
      f.ewmaMs = Math.max(f.ewmaMs, durationMs);
      f.lastAtMs = nowMs;
    }
  }

  // ───────────────────────────── external instances ─────────────────────────────

  async register(req: RegisterComponentRequest__Output, nowMs = steadyNow(), by = ''): Promise<ComponentInstance> {
    const v: import('../common/errors').FieldViolation[] = [];
    if (!ID_RE.test(req.instanceId)) v.push({ field: 'instanceId', message: 'must be 1-128 characters of letters, digits, ".", "_" or "-"' });
    if (!KIND_RE.test(req.kind)) v.push({ field: 'kind', message: `must be a component kind (a-z, 0-9, "-"), got ${JSON.stringify(req.kind)}` });
    if (req.version && !semver.valid(req.version)) v.push({ field: 'version', message: `must be a semantic version such as 1.2.0, got ${JSON.stringify(req.version)}` });
    if (!/^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(req.endpoint)) v.push({ field: 'endpoint', message: `must be host:port of a tessera.v1.Component server, got ${JSON.stringify(req.endpoint)}` });
    const ttl = Number(req.ttlMs) || 30_000;
    if (ttl < 2_000 || ttl > 600_000) v.push({ field: 'ttlMs', message: 'must be 2000..600000 ms (0: 30 s)' });
    req.operations.forEach((op, i) => { if (!/^[A-Za-z][A-Za-z0-9_.-]{0,62}$/.test(op)) v.push({ field: `operations[${i}]`, message: `not an operation name: ${JSON.stringify(op)}` }); });
    if (v.length) throw new InvalidArgumentError(v);
    const deployed = this.registered.get(req.instanceId);
    if (deployed?.source === 'deployed') throw InvalidArgumentError.field('instanceId', `${req.instanceId} is an instance Tessera deploys; external instances need their own ids`);
    const prev = this.externals.get(req.instanceId);
    const rec: ExternalRecord = {
      instanceId: req.instanceId, kind: req.kind, version: req.version, operations: [...req.operations], endpoint: req.endpoint, ttlMs: ttl,
      registeredAtMs: prev && prev.kind === req.kind && prev.endpoint === req.endpoint ? prev.registeredAtMs : nowMs, expiresAtMs: nowMs + ttl,
    };
    const renewal = !!prev && prev.kind === rec.kind && prev.endpoint === rec.endpoint && prev.version === rec.version;
    await this.store.commit([{ type: 'put', key: this.keys.external(rec.instanceId), value: JSON.stringify(rec) }], renewal ? [] : [attributed({
      kind: 'component.registered', subject: rec.instanceId, message: `external ${rec.kind} ${rec.version} instance ${rec.instanceId} at ${rec.endpoint} registered (lease ${ttl} ms)`,
      fields: { kind: rec.kind, version: rec.version, endpoint: rec.endpoint, source: 'external' },
    }, by)]);
    this.externals.set(rec.instanceId, rec);
    this.dirty = true;
    return this.toProto(this.externalRoutable(rec), nowMs);
  }

  async deregister(id: string, reason = 'deregistered through Admin', by = ''): Promise<ComponentInstance> {
    const rec = this.externals.get(id);
    if (!rec) {
      if (this.registered.get(id)?.source === 'deployed') throw InvalidArgumentError.field('instanceId', `${id} is deployed by Tessera: stop it by scaling or deleting its app`);
      throw new NotFoundError('component instance', id);
    }
    await this.store.commit([{ type: 'delete', key: this.keys.external(id) }], [attributed({
      kind: 'component.deregistered', subject: id, message: `external ${rec.kind} instance ${id} at ${rec.endpoint}: ${reason}`, fields: { kind: rec.kind, source: 'external' },
    }, by)]);
    this.externals.delete(id);
    this.figures.delete(id);
    this.dirty = true;
    return this.toProto(this.externalRoutable(rec));
  }

  /**
   * Deletes external registrations whose lease ran out, and rebuilds the routing table if no job
   * has since (at most every 100 ms anyway): its registration events come when an instance
   * changes, not at the next job.
   */
  async tick(nowMs = steadyNow()): Promise<void> {
    for (const e of [...this.externals.values()]) {
      if (e.expiresAtMs > nowMs) continue;
      await this.deregister(e.instanceId, `lease of ${e.ttlMs} ms expired without renewal`);
    }
    this.list(nowMs);
  }

  private externalRoutable(e: ExternalRecord): Routable {
    return {
      instanceId: e.instanceId, kind: e.kind, version: e.version, operations: e.operations, nodeId: '', endpoint: e.endpoint, agentEndpoint: '',
      source: 'external', app: '', registeredAtMs: e.registeredAtMs, leaseExpiresAtMs: e.expiresAtMs,
    };
  }

  describe(kind: string, nowMs = steadyNow()): ComponentInstance[] {
    return this.list(nowMs)
      .filter((r) => !kind || r.kind === kind)
      .sort((a, b) => a.kind.localeCompare(b.kind) || a.instanceId.localeCompare(b.instanceId))
      .map((r) => this.toProto(r, nowMs));
  }

  private toProto(r: Routable, nowMs = steadyNow()): ComponentInstance {
    const f = this.figures.get(r.instanceId);
    const state = r.relayedBy ? 'unreachable' : f && f.suspectUntilMs > nowMs ? 'suspect' : (f?.inFlight ?? 0) >= this.opts.maxInFlightPerInstance ? 'saturated' : 'routable';
    return {
      instanceId: r.instanceId, kind: r.kind, version: r.version, operations: r.operations, nodeId: r.nodeId, endpoint: r.endpoint,
      agentEndpoint: r.agentEndpoint, source: r.source, app: r.app, state, registeredAtMs: r.registeredAtMs, leaseExpiresAtMs: r.leaseExpiresAtMs,
      latencyMs: f ? Math.round(this.estimate(f) * 100) / 100 : 0, inFlight: f?.inFlight ?? 0, queueDepth: this.queueDepths.get(r.instanceId) ?? 0,
      stepsOk: f?.ok ?? 0, stepsFailed: f?.failed ?? 0,
    };
  }
}

/** Does an instance's version satisfy a stage's range? (An empty range accepts anything.) */
export function versionMatches(version: string, range: string): boolean {
  if (!range) return true;
  return !!semver.valid(version) && semver.satisfies(version, range, { includePrerelease: true });
}
