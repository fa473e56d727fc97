import { expect } from 'chai';
import { planComponent, ComponentInputs, NodeStateForPlan, ObservedView } from '../../coordinator/apps/rollout';
import { normalizeAppSpec } from '../../coordinator/apps/spec';
import { componentHash, InstanceRecord, olderComponentHashes } from '../../coordinator/apps/records';

const comp = (instances: number, over: Record<string, unknown> = {}) => normalizeAppSpec({ name: 'a', components: [{ name: 'c', image: 'i', resources: { cpuMillis: 100, memoryMib: 64 }, instances, update: { maxParallel: 1, minHealthyMs: 1000, healthyDeadlineMs: 10_000, autoRevert: true }, ...over }] } as never).components[0];
const inst = (id: string, slot: number, hash: string, nodeId = 'n1', createdAtMs = 0): InstanceRecord => ({ id, app: 'a', component: 'c', version: hash === 'new' ? 2 : 1, specHash: hash, slot, nodeId, ports: {}, resources: { cpuMillis: 100, memoryMib: 64 }, createdAtMs, desired: 'run' });
const healthy: ObservedView = { state: 'INSTANCE_STATE_RUNNING', health: 'healthy', healthySinceMs: 1, exitCode: 0, oomKilled: false, message: '' };
const starting: ObservedView = { state: 'INSTANCE_STATE_STARTING', health: 'unknown', healthySinceMs: 0, exitCode: 0, oomKilled: false, message: '' };
const failed: ObservedView = { state: 'INSTANCE_STATE_FAILED', health: 'unhealthy', healthySinceMs: 0, exitCode: 3, oomKilled: false, message: 'exited with code 3' };

function run(over: Partial<ComponentInputs> & { obs?: Record<string, ObservedView>; nodes?: Record<string, NodeStateForPlan> }) {
  return planComponent({
    app: { version: 2, stableVersion: 1 }, component: comp(3), hash: 'new', instances: [], nowMs: 5_000,
    observed: (id) => over.obs?.[id], nodeState: (n) => over.nodes?.[n] ?? 'READY', slotReady: () => true, ...over,
  });
}

describe('rollout decisions per component', () => {
  it('leaves running instances alone when only the count, the update strategy or a tunable\'s range changes (the hash leaves them out); older hashes of the same spec count as current', () => {
    const three = comp(3);
    const five = comp(5);
    expect(componentHash(three)).to.equal(componentHash(five));
    expect(componentHash(three)).to.not.equal(componentHash(comp(3, { env: { X: '1' } })));
    // As a Deployment's strategy and Nomad's update block: how instances are replaced is not what they run.
    expect(componentHash(comp(3, { update: { maxParallel: 3, minHealthyMs: 0, healthyDeadlineMs: 60_000, autoRevert: false, order: 'stop-first' } }))).to.equal(componentHash(three));
    const tuned = (max: number) => comp(3, { env: { WORKERS: '4' }, tunables: [{ env: 'WORKERS', min: 1, max }] });
    expect(componentHash(tuned(8))).to.equal(componentHash(tuned(16)));
    expect(componentHash(tuned(8))).to.not.equal(componentHash(comp(3, { env: { WORKERS: '5' }, tunables: [{ env: 'WORKERS', min: 1, max: 8 }] })));
    expect(componentHash(comp(3, { restart: { attempts: 9 } }))).to.not.equal(componentHash(three));
    // Scaled up from 3 to 5: two more, none replaced.
    const up = run({ component: five, hash: componentHash(five), instances: [0, 1, 2].map((s) => inst(`i${s}`, s, componentHash(three))), obs: { i0: healthy, i1: healthy, i2: healthy } });
    expect(up.create.map((c) => c.slot)).to.deep.equal([3, 4]);
    expect(up.stop).to.deep.equal([]);
    expect(up.outdated).to.equal(0);
    // Instances hashed the oldest way (count included) under a 3-instance version: current at 5.
    const legacy = [0, 1, 2].map((s) => inst(`l${s}`, s, olderComponentHashes(three, 3)[1]));
    const obs = { obs: { l0: healthy, l1: healthy, l2: healthy } };
    expect(olderComponentHashes(five, 3)[1]).to.equal(legacy[0].specHash);
    expect(olderComponentHashes(three, 3)[0]).to.match(/^s[0-9a-f]{12}$/);
    const kept = run({ component: five, hash: componentHash(five), sameSpec: new Set([legacy[0].specHash]), instances: legacy, ...obs });
    expect(kept.stop).to.deep.equal([]);
    expect(kept.create.map((c) => c.slot)).to.deep.equal([3, 4]);
    // Without that, they would all be replaced.
    expect(run({ component: five, hash: componentHash(five), instances: legacy, ...obs }).outdated).to.equal(3);
  });
  it('creates every instance at once on a first deploy', () => {
    const d = run({ app: { version: 1, stableVersion: 0 } });
    expect(d.create.map((c) => c.slot)).to.deep.equal([0, 1, 2]);
  });
  it('replaces at most maxParallel at a time during an update', () => {
    const d = run({ instances: [inst('o0', 0, 'old'), inst('o1', 1, 'old'), inst('o2', 2, 'old')], obs: { o0: healthy, o1: healthy, o2: healthy } });
    expect(d.create).to.have.length(1);
    expect(d.stop).to.have.length(0);
  });
  it('stops an old instance only once a new one is healthy', () => {
    const waiting = run({ instances: [inst('o0', 0, 'old'), inst('o1', 1, 'old'), inst('o2', 2, 'old'), inst('n0', 0, 'new')], obs: { o0: healthy, o1: healthy, o2: healthy, n0: starting } });
    expect(waiting.stop).to.have.length(0);
    expect(waiting.create).to.have.length(0);
    const ready = run({ instances: [inst('o0', 0, 'old'), inst('o1', 1, 'old'), inst('o2', 2, 'old'), inst('n0', 0, 'new')], obs: { o0: healthy, o1: healthy, o2: healthy, n0: healthy } });
    expect(ready.stop.map((s) => s.kind)).to.deep.equal(['replaced']);
    expect(ready.create).to.have.length(1);
  });
  it('fails the rollout when a new instance fails, and avoids its node for the slot', () => {
    const d = run({ instances: [inst('o0', 0, 'old'), inst('n0', 1, 'new', 'bad')], obs: { o0: healthy, n0: failed } });
    expect(d.rolloutFailed).to.match(/failed: exited with code 3/);
    expect(d.stop.find((s) => s.inst.id === 'n0')!.kind).to.equal('failed');
  });
  it('fails the rollout when a new instance misses its healthy deadline', () => {
    const d = run({ nowMs: 20_000, instances: [inst('o0', 0, 'old'), inst('n0', 1, 'new', 'n1', 0)], obs: { o0: healthy, n0: starting } });
    expect(d.rolloutFailed).to.match(/not healthy within 10000 ms/);
  });
  it('does not fail a rollout for a new instance on a node unreachable in a fleet disruption (it waits); DOWN, it is lost and replaced', () => {
    const over = { nowMs: 20_000, instances: [inst('o0', 0, 'old'), inst('n0', 1, 'new', 'n2', 0)], obs: { o0: healthy } };
    const waits = run({ ...over, nodes: { n2: 'UNREACHABLE' } });
    expect(waits.rolloutFailed).to.equal(undefined);
    expect(waits.stop).to.deep.equal([]);
    expect(waits.create).to.deep.equal([]);
    const lost = run({ ...over, nodes: { n2: 'DOWN' } });
    expect(lost.stop.map((x) => [x.inst.id, x.kind])).to.deep.equal([['n0', 'lost']]);
    expect(run({ ...over }).rolloutFailed).to.match(/not healthy within 10000 ms/);
  });
  it('does not fail a rollout on a new leader that has not yet seen an instance healthy for minHealthyMs (or at all) when it took over', () => {
    // Created 20 s ago (the deadline is 10 s), healthy now but only since this leader's first report.
    const fresh: ObservedView = { ...healthy, healthySinceMs: 19_900 };
    expect(run({ nowMs: 20_000, instances: [inst('o0', 0, 'old'), inst('n0', 1, 'new', 'n1', 0)], obs: { o0: healthy, n0: fresh } }).rolloutFailed).to.equal(undefined);
    // Not reported yet: its deadline counts from the takeover.
    expect(run({ nowMs: 20_000, deadlineFromMs: 18_000, instances: [inst('o0', 0, 'old'), inst('n0', 1, 'new', 'n1', 0)], obs: { o0: healthy } }).rolloutFailed).to.equal(undefined);
    expect(run({ nowMs: 29_000, deadlineFromMs: 18_000, instances: [inst('o0', 0, 'old'), inst('n0', 1, 'new', 'n1', 0)], obs: { o0: healthy } }).rolloutFailed).to.match(/not healthy within 10000 ms/);
    expect(run({ nowMs: 29_000, deadlineFromMs: 18_000, instances: [inst('o0', 0, 'old'), inst('n0', 1, 'new', 'n1', 0)], obs: { o0: healthy, n0: starting } }).rolloutFailed).to.match(/not healthy within 10000 ms/);
  });
  it('counts for a stable app\'s status the instances healthy now, and those on a node that has not reported to a new leader yet', () => {
    const three = [inst('n0', 0, 'new', 'n1'), inst('n1', 1, 'new', 'n2'), inst('n2', 2, 'new', 'n2')];
    const stable = { app: { version: 2, stableVersion: 2 }, instances: three };
    // Healthy a moment ago only (not yet minHealthyMs): serving, not yet "healthy" for a rollout.
    const fresh: ObservedView = { ...healthy, healthySinceMs: 4_900 };
    const d = run({ ...stable, obs: { n0: healthy, n1: fresh, n2: healthy } });
    expect([d.healthyCurrent, d.servingCurrent]).to.deep.equal([2, 3]);
    // n2's node has not reported to this leader: taken as it was; a reported node's missing one is not serving.
    expect(run({ ...stable, obs: { n0: healthy, n1: healthy }, unreported: (node) => node === 'n2' }).servingCurrent).to.equal(3);
    expect(run({ ...stable, obs: { n0: healthy, n1: healthy }, unreported: () => false }).servingCurrent).to.equal(2);
    expect(run({ ...stable, obs: { n0: healthy, n1: healthy, n2: starting }, unreported: () => true }).servingCurrent).to.equal(2);
  });
  it('counts a new instance\'s healthy deadline from when its volumes were copied to it, not while they are', () => {
    const moving = { ...inst('n0', 1, 'new', 'n1', 0), migrate: { from: 'n2', volumes: ['data'], state: 'pending' as const } };
    expect(run({ nowMs: 20_000, instances: [inst('o0', 0, 'old'), moving], obs: { o0: healthy } }).rolloutFailed).to.equal(undefined);
    const copied = { ...moving, migrate: { ...moving.migrate, state: 'done' as const, doneAtMs: 15_000 } };
    expect(run({ nowMs: 20_000, instances: [inst('o0', 0, 'old'), copied], obs: { o0: healthy, n0: starting } }).rolloutFailed).to.equal(undefined);
    expect(run({ nowMs: 26_000, instances: [inst('o0', 0, 'old'), copied], obs: { o0: healthy, n0: starting } }).rolloutFailed).to.match(/not healthy within 10000 ms/);
  });
  it('replaces instances lost with a DOWN node', () => {
    const d = run({ app: { version: 2, stableVersion: 2 }, instances: [inst('n0', 0, 'new', 'dead'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { n1: healthy, n2: healthy }, nodes: { dead: 'DOWN' } });
    expect(d.stop.map((s) => s.kind)).to.deep.equal(['lost']);
    expect(d.create.map((c) => c.slot)).to.deep.equal([0]);
  });
  it('replaces instances on a node whose runtime has not answered past the grace (RUNTIME-DOWN), saying so', () => {
    const d = run({ app: { version: 2, stableVersion: 2 }, instances: [inst('n0', 0, 'new', 'silent'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n1: healthy, n2: healthy }, nodes: { silent: 'RUNTIME-DOWN' } });
    expect(d.stop.map((s) => [s.kind, s.reason])).to.deep.equal([['lost', 'node silent is RUNTIME-DOWN']]);
    expect(d.create.map((c) => c.slot)).to.deep.equal([0]);
  });
  it('moves instances off a draining node: new one first, then the old one', () => {
    const base = { app: { version: 2, stableVersion: 2 }, nodes: { drained: 'DRAINING' as const } };
    const first = run({ ...base, instances: [inst('d0', 0, 'new', 'drained'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { d0: healthy, n1: healthy, n2: healthy } });
    expect(first.create.map((c) => c.slot)).to.deep.equal([0]);
    expect(first.stop).to.have.length(0);
    const then = run({ ...base, instances: [inst('d0', 0, 'new', 'drained'), inst('x0', 0, 'new'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { d0: healthy, x0: healthy, n1: healthy, n2: healthy } });
    expect(then.stop.map((s) => [s.inst.id, s.kind])).to.deep.equal([['d0', 'drained']]);
  });
  it('stops what is left on a node past its drain deadline, replaced or not, and places its slot elsewhere (nomad node drain -deadline)', () => {
    const base = { app: { version: 2, stableVersion: 2 }, nodes: { drained: 'DRAIN-EXPIRED' as const } };
    // d0's replacement could not be placed before the deadline (x0 never came): d0 stops now, and slot 0 is placed again, away from the node.
    const past = run({ ...base, instances: [inst('d0', 0, 'new', 'drained'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { d0: healthy, n1: healthy, n2: healthy } });
    expect(past.stop.map((s) => [s.inst.id, s.kind, s.reason])).to.deep.equal([['d0', 'drained', 'node drained\'s drain deadline passed']]);
    expect(past.create).to.deep.equal([{ slot: 0, avoid: ['drained'] }]);
  });
  it('replaces an instance asked to be replaced: a new one in its slot first, then it stops with the reason and who asked', () => {
    const base = { app: { version: 2, stableVersion: 2 } };
    const asked = { ...inst('n1', 1, 'new'), replace: { atMs: 1, by: 'ops', reason: 'wedged' } };
    const first = run({ ...base, instances: [inst('n0', 0, 'new'), asked, inst('n2', 2, 'new')], obs: { n0: healthy, n1: healthy, n2: healthy } });
    expect(first.create.map((c) => c.slot)).to.deep.equal([1]);
    expect(first.stop).to.deep.equal([]);
    expect(first.outdated).to.equal(1);
    const waiting = run({ ...base, instances: [inst('n0', 0, 'new'), asked, inst('x1', 1, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n1: healthy, x1: starting, n2: healthy } });
    expect([waiting.create, waiting.stop]).to.deep.equal([[], []]);
    const then = run({ ...base, instances: [inst('n0', 0, 'new'), asked, inst('x1', 1, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n1: healthy, x1: healthy, n2: healthy } });
    expect(then.stop.map((s) => [s.inst.id, s.kind, s.reason])).to.deep.equal([['n1', 'replaced', 'replaced as requested by ops: wedged']]);
    expect(then.create).to.deep.equal([]);
  });
  it('replaces the slots of a component with volumes stop-first: the old one gone before the new one starts, on the node that holds the slot\'s data; maxParallel slots at a time', () => {
    const vol = comp(3, { volumes: [{ name: 'data', path: '/data' }] });
    const base = { component: vol, lastNode: (s: number) => `home${s}` };
    const old = [inst('o0', 0, 'old', 'home0'), inst('o1', 1, 'old', 'home1'), inst('o2', 2, 'old', 'home2')];
    // First the old instance of one slot stops (no new one yet: it would share the volume).
    const first = run({ ...base, instances: old, obs: { o0: healthy, o1: healthy, o2: healthy } });
    expect(first.stop.map((s) => [s.inst.id, s.kind, s.reason])).to.deep.equal([['o0', 'replaced', 'replaced by version 2 (stop-first: the new one starts once it is gone)']]);
    expect(first.create).to.deep.equal([]);
    // While it still runs (stopping), its slot waits, and no other slot is taken down.
    const stopping = run({ ...base, instances: old.slice(1), obs: { o1: healthy, o2: healthy }, stopping: (s) => s === 0 });
    expect([stopping.create, stopping.stop]).to.deep.equal([[], []]);
    // Once it is gone: the new one, on the node with the slot's data.
    const gone = run({ ...base, instances: old.slice(1), obs: { o1: healthy, o2: healthy } });
    expect(gone.create).to.deep.equal([{ slot: 0, avoid: [], prefer: 'home0' }]);
    expect(gone.stop).to.deep.equal([]);
    // The next slot only once the new one is healthy.
    const startingNew = run({ ...base, instances: [inst('n0', 0, 'new', 'home0'), ...old.slice(1)], obs: { n0: starting, o1: healthy, o2: healthy } });
    expect([startingNew.create, startingNew.stop]).to.deep.equal([[], []]);
    const next = run({ ...base, instances: [inst('n0', 0, 'new', 'home0'), ...old.slice(1)], obs: { n0: healthy, o1: healthy, o2: healthy } });
    expect(next.stop.map((s) => s.inst.id)).to.deep.equal(['o1']);
    // A new one that cannot be placed keeps its slot not serving: nothing more is stopped.
    expect(run({ ...base, instances: old.slice(1), obs: { o1: healthy, o2: healthy } }).stop).to.deep.equal([]);
    // maxParallel 2: two slots at a time.
    const two = run({ ...base, component: comp(3, { volumes: [{ name: 'data', path: '/data' }], update: { maxParallel: 2, minHealthyMs: 1000, healthyDeadlineMs: 10_000 } }), instances: old, obs: { o0: healthy, o1: healthy, o2: healthy } });
    expect(two.stop.map((s) => s.inst.id)).to.deep.equal(['o0', 'o1']);
    // Scaled down: the extra ones stop once each.
    const down = run({ ...base, app: { version: 2, stableVersion: 2 }, component: comp(1, { volumes: [{ name: 'data', path: '/data' }] }), instances: [inst('n0', 0, 'new'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n1: healthy, n2: healthy } });
    expect(down.stop.map((s) => [s.inst.id, s.kind])).to.deep.equal([['n2', 'scaled-down'], ['n1', 'scaled-down']]);
    expect(down.create).to.deep.equal([]);
    // A fresh deploy fills every slot at once; start-first named for a component with volumes keeps the overlap.
    expect(run({ ...base, app: { version: 1, stableVersion: 0 } }).create.map((c) => [c.slot, c.prefer])).to.deep.equal([[0, 'home0'], [1, 'home1'], [2, 'home2']]);
    const startFirst = run({ ...base, component: comp(3, { volumes: [{ name: 'data', path: '/data' }], update: { order: 'start-first', maxParallel: 1, minHealthyMs: 1000, healthyDeadlineMs: 10_000 } }), instances: old, obs: { o0: healthy, o1: healthy, o2: healthy } });
    expect([startFirst.create.length, startFirst.stop.length]).to.deep.equal([1, 0]);
    // Without volumes, start-first stays the default; stop-first may be named.
    expect(run({ instances: old, obs: { o0: healthy, o1: healthy, o2: healthy } }).stop).to.deep.equal([]);
    const named = run({ component: comp(3, { update: { order: 'stop-first', maxParallel: 1, minHealthyMs: 1000, healthyDeadlineMs: 10_000 } }), instances: old, obs: { o0: healthy, o1: healthy, o2: healthy } });
    expect([named.create.length, named.stop.map((s) => s.inst.id)]).to.deep.equal([0, ['o0']]);
  });
  it('scales down unhealthy and high slots first', () => {
    const d = run({ app: { version: 2, stableVersion: 2 }, component: comp(1), instances: [inst('n0', 0, 'new'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n1: starting, n2: healthy } });
    expect(d.stop.map((s) => s.inst.id).sort()).to.deep.equal(['n1', 'n2']);
  });
  it('waits out a failing slot\'s backoff before replacing it, and takes no other slot meanwhile', () => {
    const d = run({ app: { version: 1, stableVersion: 0 }, slotReady: (s) => s !== 1 });
    expect(d.create.map((c) => c.slot)).to.deep.equal([0, 2]);
    // Slot 1's instance failed; while it backs off the component runs one short.
    const e = run({ component: comp(3), instances: [inst('n0', 0, 'new'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n1: failed, n2: healthy }, slotReady: (s) => s !== 1 });
    expect(e.stop.map((s) => [s.inst.id, s.kind])).to.deep.equal([['n1', 'failed']]);
    expect(e.create).to.deep.equal([]);
    // Nor in the decision that sees it fail: the slot is asked with failingNow (its first delay starts now).
    const asked: [number, boolean][] = [];
    const g = run({ component: comp(3), instances: [inst('n0', 0, 'new'), inst('n1', 1, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n1: failed, n2: healthy }, slotReady: (s, now) => { asked.push([s, now]); return !now; } });
    expect(asked).to.deep.equal([[1, true]]);
    expect(g.create).to.deep.equal([]);
    // Once its delay has passed (the failed instance is a tombstone by then), the replacement
    // takes slot 1, away from the nodes where the slot failed.
    const f = run({ component: comp(3), instances: [inst('n0', 0, 'new'), inst('n2', 2, 'new')], obs: { n0: healthy, n2: healthy }, failedOn: (s) => (s === 1 ? ['n1', 'n3'] : []) });
    expect(f.create).to.deep.equal([{ slot: 1, avoid: ['n1', 'n3'] }]);
  });
  describe('canaries (update.canary, as Nomad\'s)', () => {
    const canaryComp = (n: number, canary: number, over: Record<string, unknown> = {}) => comp(n, { update: { maxParallel: 1, minHealthyMs: 1000, healthyDeadlineMs: 10_000, autoRevert: true, canary }, ...over });
    const held = { version: 2, stableVersion: 1, canary: { version: 2, wanted: 0, healthy: 0 } };
    const olds = [inst('o0', 0, 'old', 'n1', 1), inst('o1', 1, 'old', 'n1', 1), inst('o2', 2, 'old', 'n1', 1)];
    const oldObs = { o0: healthy, o1: healthy, o2: healthy };
    it('starts the canaries beside the old instances at once and stops none, healthy or not; promoted, the rollout goes on', () => {
      const start = run({ app: held, component: canaryComp(3, 2), instances: olds, obs: oldObs });
      expect(start.create.map((c) => c.slot)).to.deep.equal([0, 1]);
      expect(start.stop).to.deep.equal([]);
      expect(start.canaries).to.deep.equal({ wanted: 2, healthy: 0 });
      const up = run({ app: held, component: canaryComp(3, 2), instances: [...olds, inst('n0', 0, 'new'), inst('n1', 1, 'new')], obs: { ...oldObs, n0: healthy, n1: healthy } });
      expect(up.create).to.deep.equal([]);
      expect(up.stop).to.deep.equal([]);
      expect(up.canaries).to.deep.equal({ wanted: 2, healthy: 2 });
      // Promoted: the healthy canaries replace their slots' old ones, and the third slot's new one starts.
      const promoted = run({ app: { ...held, canary: { ...held.canary, promotedAtMs: 9 } }, component: canaryComp(3, 2), instances: [...olds, inst('n0', 0, 'new'), inst('n1', 1, 'new')], obs: { ...oldObs, n0: healthy, n1: healthy } });
      expect(promoted.canaries).to.equal(undefined);
      expect(promoted.stop.map((x) => x.inst.id)).to.deep.equal(['o0', 'o1']);
      // Without canaries (a version made by a rollback: its canary record is another version's), an ordinary rolling update.
      const plain = run({ app: { version: 3, stableVersion: 1, canary: held.canary }, component: canaryComp(3, 2), instances: olds, obs: oldObs });
      expect(plain.canaries).to.equal(undefined);
      expect(plain.create).to.have.length(1);
    });
    it('fails the rollout on a failing canary, and caps the canaries at the count', () => {
      const bad = run({ app: held, component: canaryComp(3, 1), instances: [...olds, inst('n0', 0, 'new', 'n2')], obs: { ...oldObs, n0: failed } });
      expect(bad.rolloutFailed).to.match(/failed: exited with code 3/);
      expect(bad.stop.map((x) => x.inst.id)).to.deep.equal(['n0']);
      const late = run({ app: held, nowMs: 20_000, component: canaryComp(3, 1), instances: [...olds, inst('n0', 0, 'new', 'n2', 0)], obs: { ...oldObs, n0: starting } });
      expect(late.rolloutFailed).to.match(/not healthy within/);
      expect(run({ app: held, component: canaryComp(2, 5), instances: olds.slice(0, 2), obs: oldObs }).create.map((c) => c.slot)).to.deep.equal([0, 1]);
    });
    it('fills an empty slot past the canaries with the stable version (a scale-up or a lost instance while they hold; the new one without a stable spec)', () => {
      const stable = { version: 1, component: comp(3), hash: 'old' };
      // Slot 2 lost its instance: the stable version again; slot 0 is the canary.
      const gap = run({ app: held, component: canaryComp(3, 1), instances: olds.slice(0, 2), obs: oldObs, stable });
      expect(gap.create.map((c) => [c.slot, !!c.stable])).to.deep.equal([[0, false], [2, true]]);
      // Scaled from 3 to 5 while the canary holds (by hand or by a policy): two more of the stable version, none of the new.
      const up = run({ app: held, component: canaryComp(5, 1), instances: [...olds, inst('n0', 0, 'new')], obs: { ...oldObs, n0: healthy }, stable });
      expect(up.create.map((c) => [c.slot, !!c.stable])).to.deep.equal([[3, true], [4, true]]);
      expect(up.canaries).to.deep.equal({ wanted: 1, healthy: 1 });
      // Filled, they are old instances of their slots: kept until the promotion rolls them.
      const filled = run({ app: held, component: canaryComp(5, 1), instances: [...olds, inst('n0', 0, 'new'), inst('o3', 3, 'old'), inst('o4', 4, 'old')], obs: { ...oldObs, n0: healthy, o3: healthy, o4: healthy }, stable });
      expect(filled.create).to.deep.equal([]);
      expect(filled.stop).to.deep.equal([]);
    });
    it('moves an old instance past the canaries (a draining node, a replacement asked for) to the stable version, kept beside it until healthy; a canary slot still moves to the new one', () => {
      const stable = { version: 1, component: comp(3), hash: 'old' };
      const drain = [inst('o0', 0, 'old', 'n9', 1), inst('o1', 1, 'old', 'n9', 1), inst('o2', 2, 'old', 'n1', 1)];
      const nodes = { n9: 'DRAINING' as const };
      // Slot 0 is the canary's (the new version, beside o0); slot 1 moves to the stable version.
      const d1 = run({ app: held, component: canaryComp(3, 1), instances: drain, obs: oldObs, nodes, stable });
      expect(d1.create.map((c) => [c.slot, !!c.stable])).to.deep.equal([[0, false], [1, true]]);
      expect(d1.stop).to.deep.equal([]);
      // The heir placed (h1, stable spec, later): not stopped as a second instance of its slot, none created again; o1 stays until it is healthy.
      const placed = [...drain, inst('c0', 0, 'new', 'n1', 5), inst('h1', 1, 'old', 'n1', 5)];
      const d2 = run({ app: held, component: canaryComp(3, 1), instances: placed, obs: { ...oldObs, h1: starting }, nodes, stable });
      expect(d2.create).to.deep.equal([]);
      expect(d2.stop).to.deep.equal([]);
      // Healthy: the draining ones go (o0 once its canary is healthy), the heir stays; no new-version instance past the canary.
      const d3 = run({ app: held, component: canaryComp(3, 1), instances: placed, obs: { ...oldObs, c0: healthy, h1: healthy }, nodes, stable });
      expect(d3.stop.map((x) => [x.inst.id, x.kind]).sort()).to.deep.equal([['o0', 'drained'], ['o1', 'drained']]);
      expect(d3.create).to.deep.equal([]);
      // Once o1 has gone the heir is its slot's old instance, rolled by the promotion like the others.
      const d4 = run({ app: held, component: canaryComp(3, 1), instances: [inst('c0', 0, 'new', 'n1', 5), inst('h1', 1, 'old', 'n1', 5), drain[2]], obs: { ...oldObs, c0: healthy, h1: healthy }, nodes, stable });
      expect(d4.create).to.deep.equal([]);
      expect(d4.stop).to.deep.equal([]);
      expect(d4.outdated).to.equal(2);
      // Asked to be replaced: the same, to the stable version.
      const asked = run({ app: held, component: canaryComp(3, 1), instances: [olds[0], olds[1], { ...olds[2], replace: { atMs: 1, by: 'ops', reason: 'r' } }], obs: oldObs, stable });
      expect(asked.create.map((c) => [c.slot, !!c.stable])).to.deep.equal([[0, false], [2, true]]);
      const done = run({ app: held, component: canaryComp(3, 1), instances: [olds[0], olds[1], { ...olds[2], replace: { atMs: 1, by: 'ops', reason: 'r' } }, inst('h2', 2, 'old', 'n1', 5)], obs: { ...oldObs, h2: healthy }, stable });
      expect(done.stop.map((x) => [x.inst.id, x.kind])).to.deep.equal([['o2', 'replaced']]);
      // A second stable instance of a slot whose oldest no longer moves (the node undrained): the later one goes.
      const undrained = run({ app: held, component: canaryComp(3, 1), instances: placed, obs: { ...oldObs, c0: healthy, h1: healthy }, stable });
      expect(undrained.stop.map((x) => x.inst.id)).to.deep.equal(['h1']);
    });
    it('still fills an empty slot, moves instances off a draining node and replaces one asked to be, to the new version; drops superseded canaries and slots above the count', () => {
      // Slot 2 lost its instance, and the app has no stable spec of the component: filled with the new one; slot 0 is the canary.
      const gap = run({ app: held, component: canaryComp(3, 1), instances: olds.slice(0, 2), obs: oldObs });
      expect(gap.create.map((c) => [c.slot, !!c.stable])).to.deep.equal([[0, false], [2, false]]);
      // o1 on a draining node: its slot's new one first, then it goes.
      const drain = [inst('o0', 0, 'old', 'n1', 1), inst('o1', 1, 'old', 'n9', 1), inst('o2', 2, 'old', 'n1', 1)];
      const d1 = run({ app: held, component: canaryComp(3, 1), instances: drain, obs: oldObs, nodes: { n9: 'DRAINING' } });
      expect(d1.create.map((c) => c.slot)).to.deep.equal([0, 1]);
      expect(d1.stop).to.deep.equal([]);
      const d2 = run({ app: held, component: canaryComp(3, 1), instances: [...drain, inst('n1', 1, 'new', 'n1')], obs: { ...oldObs, n1: healthy }, nodes: { n9: 'DRAINING' } });
      expect(d2.stop.map((x) => [x.inst.id, x.kind])).to.deep.equal([['o1', 'drained']]);
      const asked = run({ app: held, component: canaryComp(3, 1), instances: [olds[0], olds[1], { ...olds[2], replace: { atMs: 1, by: 'ops', reason: 'r' } }], obs: oldObs });
      expect(asked.create.map((c) => c.slot)).to.deep.equal([0, 2]);
      // A canary of an earlier version in slot 0 (applied over before its promotion) goes; the oldest stays. Slot 3 is above the count.
      const sup = run({ app: held, component: canaryComp(3, 1), instances: [...olds, inst('c0', 0, 'mid', 'n1', 50), inst('o3', 3, 'old', 'n1', 1)], obs: { ...oldObs, c0: healthy, o3: healthy } });
      expect(sup.stop.map((x) => [x.inst.id, x.kind]).sort()).to.deep.equal([['c0', 'replaced'], ['o3', 'scaled-down']]);
      expect(sup.create.map((c) => c.slot)).to.deep.equal([0]);
    });
    it('checks the spec: a whole number, start-first only, autoPromote needs canaries; left out of the spec when off', () => {
      const bad = (update: Record<string, unknown>, over: Record<string, unknown> = {}) => () => comp(3, { update, ...over });
      expect(bad({ canary: -1 })).to.throw(/components\[0\]\.update\.canary: must be a whole number/);
      expect(bad({ canary: 1, order: 'stop-first' })).to.throw(/components\[0\]\.update\.canary: needs update\.order start-first/);
      expect(bad({ canary: 1 }, { volumes: [{ name: 'd', path: '/d' }] })).to.throw(/update\.canary: needs update\.order start-first/);
      expect(() => comp(3, { update: { canary: 1, order: 'start-first' }, volumes: [{ name: 'd', path: '/d' }] })).to.not.throw();
      expect(bad({ autoPromote: true })).to.throw(/components\[0\]\.update\.autoPromote: needs update\.canary/);
      expect(comp(3).update).to.not.have.property('canary');
      expect(comp(3, { update: { canary: 2, autoPromote: true } }).update).to.include({ canary: 2, autoPromote: true });
      expect(componentHash(canaryComp(3, 2))).to.equal(componentHash(comp(3)));
    });
  });
});
