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
}

/**
 * What an instance runs, as a hash of its component's spec without the instance count: scaling
 * a component (by apply, as by a policy) adds or removes instances and leaves the others
 * running, as a Kubernetes replica count or a Nomad group count does.
 */
export function componentHash(c: NormalComponent): string {
  return `s${createHash('sha256').update(specKey({ name: '', components: [{ ...c, instances: 0 }], labels: {} })).digest('hex').slice(0, 12)}`;
}

/**
 * The hash instances created before session 10 carry: over the whole component, its count
 * included. An instance of an unchanged spec whose hash is this for some count it had is
 * current too (an upgrade restarts nothing).
 */
export function legacyComponentHash(c: NormalComponent, instances: number): string {
  return createHash('sha256').update(specKey({ name: '', components: [{ ...c, instances }], labels: {} })).digest('hex').slice(0, 12);
}

export function newInstanceId(app: string, component: string): string {
  return `${app}-${component}-${Math.random().toString(36).slice(2, 8)}${Date.now().toString(36).slice(-3)}`;
}
