// The per-component decision, as a pure function: given what should run (the spec), the
// instance records, what agents observe and the nodes' states, say which instances to create
// and which to stop, and whether a rollout has failed. No I/O; tested in tables.
import type { AppRecord, InstanceRecord } from './records';
import type { NormalComponent } from './spec';

/** A node's state as the planner sees it: RUNTIME-DOWN is a READY node whose runtime has not answered past the grace (its instances are lost). */
export type NodeStateForPlan = 'READY' | 'DOWN' | 'DRAINING' | 'RUNTIME-DOWN';

export interface ObservedView {
  state: string; // INSTANCE_STATE_*
  health: string;
  healthySinceMs: number; // 0 = not healthy now
  exitCode: number;
  oomKilled: boolean;
  message: string;
}

export interface ComponentInputs {
  app: Pick<AppRecord, 'version' | 'stableVersion'>;
  component: NormalComponent;
  hash: string;
  /** Further hashes that mean the same spec (instances created with an older hash: see legacyComponentHash). */
  sameSpec?: ReadonlySet<string>;
  /** desired=run records of this component. */
  instances: InstanceRecord[];
  observed(id: string): ObservedView | undefined;
  nodeState(nodeId: string): NodeStateForPlan | undefined;
  /**
   * False while a slot that failed recently is backing off before its replacement. `failingNow`:
   * an instance of the slot fails in this very decision (its failure is not counted yet).
   */
  slotReady(slot: number, failingNow: boolean): boolean;
  /** Nodes where the slot's instances failed recently: its replacement avoids them if it can. */
  failedOn?(slot: number): string[];
  /** Work an instance holds (queue + in flight): scale-down removes the least busy first. */
  busy?(id: string): number;
  nowMs: number;
}

export interface StopDecision {
  inst: InstanceRecord;
  reason: string;
  kind: 'lost' | 'failed' | 'replaced' | 'scaled-down' | 'drained' | 'removed';
  failure?: { exitCode: number; oomKilled: boolean; message: string };
}

export interface ComponentDecision {
  create: { slot: number; avoid: string[] }[];
  stop: StopDecision[];
  current: number;
  healthyCurrent: number;
  outdated: number;
  /** Set when an instance of the version being rolled out failed or missed its deadline. */
  rolloutFailed?: string;
}

export function isHealthy(o: ObservedView | undefined, nowMs: number, minHealthyMs: number): boolean {
  return !!o && o.state === 'INSTANCE_STATE_RUNNING' && o.health === 'healthy' && o.healthySinceMs > 0 && nowMs - o.healthySinceMs >= minHealthyMs;
}

export function planComponent(i: ComponentInputs): ComponentDecision {
  const c = i.component;
  const stop: StopDecision[] = [];
  const avoidBySlot = new Map<number, string[]>();
  const live: InstanceRecord[] = [];
  let rolloutFailed: string | undefined;
  // One asked to be replaced is outdated whatever it runs: a new one takes its slot first.
  const isCurrent = (x: InstanceRecord) => !x.replace && (x.specHash === i.hash || !!i.sameSpec?.has(x.specHash));

  for (const inst of i.instances) {
    const ns = i.nodeState(inst.nodeId);
    if (ns === 'DOWN' || ns === 'RUNTIME-DOWN' || ns === undefined) {
      stop.push({ inst, kind: 'lost', reason: `node ${inst.nodeId} is ${ns ?? 'gone'}` });
      continue;
    }
    const o = i.observed(inst.id);
    if (o?.state === 'INSTANCE_STATE_FAILED') {
      const failure = { exitCode: o.exitCode, oomKilled: o.oomKilled, message: o.message };
      stop.push({ inst, kind: 'failed', reason: `failed on ${inst.nodeId}: ${o.message || `exit ${o.exitCode}`}${o.oomKilled ? ' (OOM killed)' : ''}`, failure });
      avoidBySlot.set(inst.slot, [...(avoidBySlot.get(inst.slot) ?? []), inst.nodeId]);
      if (isCurrent(inst) && i.app.version !== i.app.stableVersion) {
        rolloutFailed = `instance ${inst.id} of the new version failed: ${o.message || `exit ${o.exitCode}`}`;
      }
      continue;
    }
    live.push(inst);
  }

  const current = live.filter((x) => isCurrent(x) && i.nodeState(x.nodeId) !== 'DRAINING');
  const outdated = live.filter((x) => !current.includes(x));
  const healthy = (x: InstanceRecord) => isHealthy(i.observed(x.id), i.nowMs, c.update.minHealthyMs);
  const healthyCurrent = current.filter(healthy);
  const n = c.instances;

  if (outdated.length && i.app.version !== i.app.stableVersion) {
    for (const x of current) {
      if (!healthy(x) && i.nowMs - x.createdAtMs > c.update.healthyDeadlineMs) {
        rolloutFailed ??= `instance ${x.id} was not healthy within ${c.update.healthyDeadlineMs} ms`;
      }
    }
  }

  // Too many of the current spec: remove the least useful first (unhealthy, then the least
  // busy, then high slots). The stop grace lets in-flight work finish before the kill.
  if (current.length > n) {
    const busy = (x: InstanceRecord) => i.busy?.(x.id) ?? 0;
    const extra = [...current].sort((a, b) => Number(healthy(a)) - Number(healthy(b)) || busy(a) - busy(b) || b.slot - a.slot).slice(0, current.length - n);
    for (const x of extra) stop.push({ inst: x, kind: 'scaled-down', reason: `scaled down to ${n}` });
  }

  // Missing ones: all at once on a fresh deploy, maxParallel at a time while replacing.
  const create: { slot: number; avoid: string[] }[] = [];
  let missing = n - current.length;
  if (missing > 0 && outdated.length) {
    const inFlight = current.length - healthyCurrent.length;
    missing = Math.min(missing, Math.max(0, c.update.maxParallel - inFlight));
  }
  if (missing > 0) {
    // Slots 0..n-1 only (a slot is an instance's identity: a storage shard is its slot). A slot
    // backing off after a failure stays empty until its delay has passed, as a crash-looping pod
    // waits out its CrashLoopBackOff: a free slot above n would restart the loop at once.
    const used = new Set(current.map((x) => x.slot));
    for (let slot = 0; create.length < missing && slot < n; slot++) {
      if (used.has(slot)) continue;
      if (!i.slotReady(slot, avoidBySlot.has(slot))) continue;
      create.push({ slot, avoid: [...new Set([...(avoidBySlot.get(slot) ?? []), ...(i.failedOn?.(slot) ?? [])])] });
    }
  }

  // Old ones go as new ones prove healthy: never fewer than n healthy-or-old at a time.
  const removable = Math.max(0, healthyCurrent.length + outdated.length - n);
  const byPreference = [...outdated].sort((a, b) => Number(i.nodeState(b.nodeId) === 'DRAINING') - Number(i.nodeState(a.nodeId) === 'DRAINING'));
  for (const x of byPreference.slice(0, removable)) {
    const drained = i.nodeState(x.nodeId) === 'DRAINING';
    const asked = x.replace ? `replaced as requested${x.replace.by ? ` by ${x.replace.by}` : ''}: ${x.replace.reason}` : `replaced by version ${i.app.version}`;
    stop.push({ inst: x, kind: drained ? 'drained' : 'replaced', reason: drained ? `node ${x.nodeId} is draining` : asked });
  }

  return { create, stop, current: current.length, healthyCurrent: healthyCurrent.length, outdated: outdated.length, rolloutFailed };
}
