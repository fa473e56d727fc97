// The per-component decision, as a pure function: given what should run (the spec), the
// instance records, what agents observe and the nodes' states, say which instances to create
// and which to stop, and whether a rollout has failed. No I/O; tested in tables.
import { canaryHeld, type AppRecord, type InstanceRecord } from './records';
import { updateOrder, type NormalComponent } from './spec';

/** A node's state as the planner sees it: RUNTIME-DOWN is a READY node whose runtime has not answered past the grace (its instances are lost). */
/** UNREACHABLE: a DOWN node during a fleet disruption (see fleetDisruption): its instances are kept, not replaced. */
/** DRAIN-EXPIRED: a DRAINING node past its drain's deadline: its instances are stopped, replaced or not. */
export type NodeStateForPlan = 'READY' | 'DOWN' | 'DRAINING' | 'RUNTIME-DOWN' | 'UNREACHABLE' | 'DRAIN-EXPIRED';

export interface ObservedView {
  state: string; // INSTANCE_STATE_*
  health: string;
  healthySinceMs: number; // 0 = not healthy now
  exitCode: number;
  oomKilled: boolean;
  message: string;
}

export interface ComponentInputs {
  app: Pick<AppRecord, 'version' | 'stableVersion' | 'canary'>;
  component: NormalComponent;
  hash: string;
  /** Further hashes that mean the same spec (instances created by older coordinators: see olderComponentHashes). */
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
  /** An instance of the slot that is no longer wanted still runs (stop-first waits for it to go). */
  stopping?(slot: number): boolean;
  /** The node the slot's last instance ran on: where its volumes' data is. */
  lastNode?(slot: number): string | undefined;
  nowMs: number;
  /**
   * When this leader began to observe (it loaded the cluster state): the healthy deadline of an
   * instance it has not seen healthy counts from then at the earliest, since it cannot know what
   * the previous leader saw and its agents report again only after they re-attach.
   */
  deadlineFromMs?: number;
  /** The node has not reported to this leader since it took over: its instances are taken as they were, for the app's status. */
  unreported?(nodeId: string): boolean;
  /**
   * The app's stable version of this component, when it has one that runs something else: while
   * canaries hold the rollout, an empty slot past them, or one whose instance must move (a
   * draining node, a replacement asked for), is filled with it (see canaries).
   */
  stable?: { version: number; component: NormalComponent; hash: string };
}

export interface StopDecision {
  inst: InstanceRecord;
  reason: string;
  kind: 'lost' | 'failed' | 'replaced' | 'scaled-down' | 'drained' | 'removed';
  failure?: { exitCode: number; oomKilled: boolean; message: string };
}

export interface ComponentDecision {
  /**
   * prefer: the node that holds the slot's volumes (a component with volumes). stable: an
   * instance of the stable version (ComponentInputs.stable), not of the one rolling out.
   */
  create: { slot: number; avoid: string[]; prefer?: string; stable?: boolean }[];
  stop: StopDecision[];
  current: number;
  healthyCurrent: number;
  /**
   * Current instances serving as far as this leader can tell, for the status of an app that is
   * not rolling out: healthy now (minHealthyMs is the rollout's test), or on a node that has not
   * reported to it yet (a new leader's first seconds are not a degradation).
   */
  servingCurrent: number;
  outdated: number;
  /** Set when an instance of the version being rolled out failed or missed its deadline. */
  rolloutFailed?: string;
  /** Set while the component's canaries hold its rollout (update.canary, version not promoted). */
  canaries?: { wanted: number; healthy: number };
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
    if (ns === 'DRAIN-EXPIRED') {
      // The drain's deadline passed (nomad node drain -deadline): stopped now, its slot placed
      // elsewhere like any empty one (if it can be: a deadline is for what could not move).
      stop.push({ inst, kind: 'drained', reason: `node ${inst.nodeId}'s drain deadline passed` });
      avoidBySlot.set(inst.slot, [...(avoidBySlot.get(inst.slot) ?? []), inst.nodeId]);
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
  const servingCurrent = current.filter((x) => {
    const o = i.observed(x.id);
    return o ? o.state === 'INSTANCE_STATE_RUNNING' && o.health === 'healthy' : !!i.unreported?.(x.nodeId);
  }).length;
  const n = c.instances;

  if (outdated.length && i.app.version !== i.app.stableVersion) {
    for (const x of current) {
      // A slot's volumes being copied to it (migrate) is not the new instance's time yet.
      if (x.migrate?.state === 'pending') continue;
      // Nor is an instance the leader cannot hear from during a fleet disruption: the rollout
      // waits for it (its slot counts as not yet healthy) rather than failing and reverting.
      if (i.nodeState(x.nodeId) === 'UNREACHABLE') continue;
      // Healthy now, if not yet for minHealthyMs (a new leader counts that from its first report): not late.
      const o = i.observed(x.id);
      if (o?.state === 'INSTANCE_STATE_RUNNING' && o.health === 'healthy') continue;
      const from = Math.max(x.migrate?.doneAtMs ?? x.createdAtMs, i.deadlineFromMs ?? 0);
      if (!healthy(x) && i.nowMs - from > c.update.healthyDeadlineMs) {
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

  if (updateOrder(c) === 'stop-first') return { ...stopFirst(i, { stop, avoidBySlot, current, outdated, healthyCurrent, healthy, rolloutFailed }), servingCurrent };
  if ((c.update.canary ?? 0) > 0 && outdated.length && canaryHeld(i.app)) return { ...canaries(i, { stop, avoidBySlot, current, outdated, healthyCurrent, healthy, rolloutFailed }), servingCurrent };

  // Missing ones: all at once on a fresh deploy, maxParallel at a time while replacing.
  const create: ComponentDecision['create'] = [];
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
      create.push(slotCreate(i, slot, avoidBySlot));
    }
  }

  // Old ones go as new ones prove healthy: never fewer than n healthy-or-old at a time.
  const removable = Math.max(0, healthyCurrent.length + outdated.length - n);
  const byPreference = [...outdated].sort((a, b) => Number(i.nodeState(b.nodeId) === 'DRAINING') - Number(i.nodeState(a.nodeId) === 'DRAINING'));
  for (const x of byPreference.slice(0, removable)) stop.push(replacedStop(i, x));

  return { create, stop, current: current.length, healthyCurrent: healthyCurrent.length, servingCurrent, outdated: outdated.length, rolloutFailed };
}

/** An outdated instance's stop: moved off a draining node, asked to be replaced, or replaced by the version rolling out. */
function replacedStop(i: ComponentInputs, x: InstanceRecord, note = ''): StopDecision {
  if (i.nodeState(x.nodeId) === 'DRAINING') return { inst: x, kind: 'drained', reason: `node ${x.nodeId} is draining${note}` };
  const why = x.replace ? `replaced as requested${x.replace.by ? ` by ${x.replace.by}` : ''}: ${x.replace.reason}` : `replaced by version ${i.app.version}`;
  return { inst: x, kind: 'replaced', reason: why + note };
}

/** A new instance for a slot: away from where it failed; for a component with volumes, on the node that holds them if it can. */
function slotCreate(i: ComponentInputs, slot: number, avoidBySlot: Map<number, string[]>): ComponentDecision['create'][number] {
  const prefer = i.component.volumes.length ? i.lastNode?.(slot) : undefined;
  return { slot, avoid: [...new Set([...(avoidBySlot.get(slot) ?? []), ...(i.failedOn?.(slot) ?? [])])], ...(prefer ? { prefer } : {}) };
}

/**
 * Stop-first replacement (update.order, the default for a component with volumes): a slot's old
 * instance is stopped, and its new one created only once no instance of the slot runs any
 * more, so two processes never share the slot's volume; maxParallel slots at a time. As a
 * StatefulSet's rolling update and Docker Swarm's stop-first order. A fresh deploy, a scale-up
 * and a failed or lost instance's slot are filled at once, as in start-first.
 */
function stopFirst(i: ComponentInputs, s: {
  stop: StopDecision[]; avoidBySlot: Map<number, string[]>; current: InstanceRecord[]; outdated: InstanceRecord[];
  healthyCurrent: InstanceRecord[]; healthy: (x: InstanceRecord) => boolean; rolloutFailed?: string;
}): Omit<ComponentDecision, 'servingCurrent'> {
  const c = i.component;
  const n = c.instances;
  // (Too many current ones were scaled down before: planComponent.)
  const { stop, current, outdated } = s;
  const currentSlots = new Set(current.map((x) => x.slot));
  // Outdated instances of slots above the count, or of a slot a current one holds: no gap to wait for.
  const spare = outdated.filter((x) => x.slot >= n || currentSlots.has(x.slot));
  const inSlot = outdated.filter((x) => !spare.includes(x));
  // Slots not serving now (their old one stopping or gone, their new one not yet placed or not
  // yet healthy): at most maxParallel of them. A new instance that cannot be placed keeps its
  // slot not serving, and so stops the rollout taking down the next.
  let inFlight = 0;
  for (let slot = 0; slot < n; slot++) {
    if (!current.some((x) => x.slot === slot && s.healthy(x)) && !inSlot.some((x) => x.slot === slot)) inFlight++;
  }
  const stopNow = [...inSlot].sort((a, b) => Number(i.nodeState(b.nodeId) === 'DRAINING') - Number(i.nodeState(a.nodeId) === 'DRAINING') || a.slot - b.slot)
    .slice(0, Math.max(0, c.update.maxParallel - inFlight));
  for (const x of [...spare, ...stopNow]) stop.push(replacedStop(i, x, ' (stop-first: the new one starts once it is gone)'));
  // A slot is filled once nothing of it runs: no current or old instance, none still stopping.
  const create: ComponentDecision['create'] = [];
  const held = new Set([...currentSlots, ...inSlot.map((x) => x.slot)]);
  for (let slot = 0; slot < n; slot++) {
    if (held.has(slot) || i.stopping?.(slot)) continue;
    if (!i.slotReady(slot, s.avoidBySlot.has(slot))) continue;
    create.push(slotCreate(i, slot, s.avoidBySlot));
  }
  return { create, stop, current: current.length, healthyCurrent: s.healthyCurrent.length, outdated: outdated.length, rolloutFailed: s.rolloutFailed };
}

/**
 * A version's canaries (update.canary, as Nomad's): until the version is promoted, slots
 * 0..canary-1 each get an instance of it beside their old one, and no old instance is replaced
 * for the version's sake. A slot past the canaries with no instance (a scale-up, by hand or by a
 * scaling policy, or one lost or failed) is filled with the stable version (ComponentInputs.stable),
 * which the promotion then rolls like the other old instances: before session 30 it got this
 * version, so a scale-up while canaries held put the unpromoted version in service beyond them.
 * Without a stable version of the component, it gets this one. What must move still does: an
 * old instance on a draining node or asked to be replaced gives way once its slot's new one is
 * healthy; past the canaries that new one is again of the stable version (the slot's heir: kept
 * beside the old one until it has gone), before session 31 of this one, so draining a node
 * while canaries held put the unpromoted version in service on every slot that moved. Outdated
 * instances nothing needs go: those above the count (scaled down) and, in a slot that holds more
 * than one, all but its oldest and its heir (canaries of a version applied over this one before
 * its promotion). A canary that fails or misses the healthy deadline fails the rollout, as any
 * new instance does (planComponent).
 */
function canaries(i: ComponentInputs, s: {
  stop: StopDecision[]; avoidBySlot: Map<number, string[]>; current: InstanceRecord[]; outdated: InstanceRecord[];
  healthyCurrent: InstanceRecord[]; healthy: (x: InstanceRecord) => boolean; rolloutFailed?: string;
}): Omit<ComponentDecision, 'servingCurrent'> {
  const n = i.component.instances;
  const wanted = Math.min(i.component.update.canary ?? 0, n);
  const { stop, current, outdated } = s;
  const moving = (x: InstanceRecord) => i.nodeState(x.nodeId) === 'DRAINING' || !!x.replace;
  const first = (a: InstanceRecord | undefined, x: InstanceRecord) => !a || x.createdAtMs < a.createdAtMs || (x.createdAtMs === a.createdAtMs && x.id < a.id);
  const oldest = new Map<number, InstanceRecord>();
  for (const x of outdated) if (x.slot < n && first(oldest.get(x.slot), x)) oldest.set(x.slot, x);
  // Past the canaries, a slot whose oldest must move is taken over by an instance of the stable
  // version that need not (its heir), started beside it.
  const heir = new Map<number, InstanceRecord>();
  for (const x of outdated) {
    const o = oldest.get(x.slot);
    if (!i.stable || !o || x === o || x.slot < wanted || !moving(o) || moving(x) || x.specHash !== i.stable.hash) continue;
    if (first(heir.get(x.slot), x)) heir.set(x.slot, x);
  }
  for (const x of outdated) {
    if (x.slot >= n) stop.push({ inst: x, kind: 'scaled-down', reason: `scaled down to ${n}` });
    else if (oldest.get(x.slot) !== x && heir.get(x.slot) !== x) stop.push(replacedStop(i, x, ` (its slot's canary is version ${i.app.version}'s now)`));
  }
  const create: ComponentDecision['create'] = [];
  for (let slot = 0; slot < n; slot++) {
    const old = oldest.get(slot);
    const mv = !!old && moving(old);
    const mine = current.filter((x) => x.slot === slot);
    const h = heir.get(slot);
    if (!mine.length && !h && (slot < wanted || !old || mv) && i.slotReady(slot, s.avoidBySlot.has(slot))) {
      create.push({ ...slotCreate(i, slot, s.avoidBySlot), ...(slot >= wanted && i.stable ? { stable: true } : {}) });
    }
    if (mv && (mine.some(s.healthy) || (h && s.healthy(h)))) stop.push(replacedStop(i, old));
  }
  return {
    create, stop, current: current.length, healthyCurrent: s.healthyCurrent.length, outdated: outdated.length, rolloutFailed: s.rolloutFailed,
    canaries: { wanted, healthy: s.healthyCurrent.filter((x) => x.slot < wanted).length },
  };
}
