// What etcd holds for apps, versions and instances, and the instance lifecycle vocabulary.
import { createHash } from 'node:crypto';
import type { NormalAppSpec, NormalComponent } from './spec';
import { specKey } from './spec';

export type AppStatus = 'deploying' | 'running' | 'degraded' | 'reverting' | 'failed' | 'deleting';
export type VersionStatus = 'pending' | 'deploying' | 'running' | 'failed' | 'superseded';

export interface AppRecord {
  name: string;
  version: number;
  stableVersion: number;
  status: AppStatus;
  statusReason: string;
  createdAtMs: number;
  updatedAtMs: number;
  deleting: boolean;
  /** When the current version started rolling out. */
  rolloutStartedAtMs: number;
  /**
   * The canaries of a version applied with update.canary (see CanaryState in the proto): while
   * `version` is the app's version and it is not promoted, its components start their canaries
   * beside the old instances and replace none.
   */
  canary?: { version: number; wanted: number; healthy: number; healthyAtMs?: number; promotedAtMs?: number; promotedBy?: string };
}

/** Whether the app's current version waits for its canaries to be promoted (not once it ran everywhere: a later replace or drain just rolls). */
export function canaryHeld(app: Pick<AppRecord, 'version' | 'stableVersion' | 'canary'>): boolean {
  return app.canary?.version === app.version && !app.canary.promotedAtMs && app.version !== app.stableVersion;
}

export interface VersionRecord {
  version: number;
  createdAtMs: number;
  status: VersionStatus;
  reason: string;
  spec: NormalAppSpec;
  /** Who made it (the Admin caller), when known. */
  by?: string;
}

/**
 * A desired instance. `desired: 'run'` records are what the cluster should run; `'stop'`
 * records are tombstones kept for a while so `tessera ps` can show why an instance failed.
 */
export interface InstanceRecord {
  id: string;
  app: string;
  component: string;
  /** The kind it registers as (absent in records written before kinds existed: the component name). */
  kind?: string;
  version: number;
  /** Hash of the component spec it runs: a new app version that leaves a component alone does not restart it. */
  specHash: string;
  slot: number;
  nodeId: string;
  ports: Record<string, number>;
  resources: { cpuMillis: number; memoryMib: number };
  createdAtMs: number;
  desired: 'run' | 'stop';
  stoppedAtMs?: number;
  stopReason?: string;
  failure?: { exitCode: number; oomKilled: boolean; message: string };
  /** Asked to be replaced (ReplaceInstance): a new instance takes its slot, then it stops. */
  replace?: { atMs: number; by: string; reason: string };
  /**
   * Its slot's volumes (those with migrate) are copied from the node that held them before it
   * starts (VolumeSpec.migrate): pending until the copy is done or given up (failed says why).
   */
  migrate?: { from: string; volumes: string[]; state: 'pending' | 'done'; bytes?: number; failed?: string; doneAtMs?: number };
}

/**
 * What an instance runs, as a hash of its component's spec without what only the leader reads:
 * the instance count (scaling a component, by apply as by a policy, adds or removes instances
 * and leaves the others running, as a Kubernetes replica count or a Nomad group count does), the
 * update strategy (how instances are replaced, as a Deployment's strategy is outside its pod
 * template, and Nomad's update block is an in-place change), the tunables' ranges (what a
 * scaling policy may set; the setting itself is in env) and whether volumes migrate.
 */
export function componentHash(c: NormalComponent): string {
  let h = hashes.get(c);
  if (h === undefined) hashes.set(c, (h = computeHash(c)));
  return h;
}

/**
 * Each component object's hash, computed once: the leader asks for it for every component of
 * every app at every reconcile round (each 500 ms), and a stored spec's objects do not change.
 * With 500 apps the hashing (stable JSON, then SHA-256) was a tenth of the leader's CPU.
 */
const hashes = new WeakMap<NormalComponent, string>();

function computeHash(c: NormalComponent): string {
  const { update: _update, tunables: _tunables, ...runs } = c;
  // Whether a volume moves with its slot is the leader's business too.
  const volumes = runs.volumes.map(({ migrate: _migrate, ...v }) => v);
  return `u${createHash('sha256').update(specKey({ name: '', components: [{ ...runs, volumes, instances: 0 } as NormalComponent], labels: {} })).digest('hex').slice(0, 12)}`;
}

/**
 * The hashes instances created by older coordinators carry: from session 10 to 16 ("s") over the
 * whole component but its count; before session 10 (no prefix) over the whole component, its
 * count included.
 */
export function olderComponentHashes(c: NormalComponent, instances: number): string[] {
  const key = (n: number) => specKey({ name: '', components: [{ ...c, instances: n }], labels: {} });
  return [`s${createHash('sha256').update(key(0)).digest('hex').slice(0, 12)}`, createHash('sha256').update(key(instances)).digest('hex').slice(0, 12)];
}

export function newInstanceId(app: string, component: string): string {
  return `${app}-${component}-${Math.random().toString(36).slice(2, 8)}${Date.now().toString(36).slice(-3)}`;
}
