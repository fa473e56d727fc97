import { expect } from 'chai';
import { decideNodeState, IllegalTransitionError, LivenessInput, NodeState, transition } from '../../coordinator/node-state';
import { clockOffset, disruptionText, fleetDisruption, onLeaderClock, refreshJitter, silentAfterMs } from '../../coordinator/node-registry';

describe('node state transitions', () => {
  const allowed: [NodeState | 'NEW', NodeState][] = [
    ['NEW', 'READY'], ['NEW', 'DRAINING'], ['READY', 'DOWN'], ['READY', 'DRAINING'],
    ['DOWN', 'READY'], ['DOWN', 'DRAINING'], ['DRAINING', 'READY'], ['DRAINING', 'DOWN'],
  ];
  for (const [from, to] of allowed) {
    it(`allows ${from} -> ${to}`, () => expect(transition(from, to)).to.equal(to));
  }
  it('treats the same state as a no-op', () => expect(transition('READY', 'READY')).to.equal('READY'));
  it('refuses NEW -> DOWN (a node is never born dead)', () => {
    expect(() => transition('NEW', 'DOWN')).to.throw(IllegalTransitionError, 'NEW to DOWN');
  });
});

describe('node liveness decision', () => {
  const base: LivenessInput = { current: 'READY', drain: false, lastSeenMs: 10_000, nowMs: 12_000, heartbeatTimeoutMs: 5_000, graceUntilMs: 0 };
  const cases: [string, Partial<LivenessInput>, NodeState, RegExp][] = [
    ['reporting node is READY', {}, 'READY', /reporting/],
    ['reporting drained node is DRAINING', { drain: true }, 'DRAINING', /drain/],
    ['silent past the timeout is DOWN', { nowMs: 15_001 }, 'DOWN', /no report for 5\.0 s \(timeout 5 s\)/],
    ['silent exactly at the timeout is still READY', { nowMs: 15_000 }, 'READY', /reporting/],
    ['silent during failover grace keeps READY', { lastSeenMs: 0, nowMs: 20_000, graceUntilMs: 21_000 }, 'READY', /grace/],
    ['silent during grace keeps DRAINING', { current: 'DRAINING', drain: true, lastSeenMs: 0, nowMs: 20_000, graceUntilMs: 21_000 }, 'DRAINING', /grace/],
    ['grace does not revive a DOWN node', { current: 'DOWN', lastSeenMs: 0, nowMs: 20_000, graceUntilMs: 21_000 }, 'DOWN', /no report/],
    ['never seen after grace is DOWN', { lastSeenMs: 0, nowMs: 22_000, graceUntilMs: 21_000 }, 'DOWN', /since this leader was elected/],
    ['a DOWN node that reports is READY again', { current: 'DOWN' }, 'READY', /reporting/],
  ];
  for (const [name, patch, state, reason] of cases) {
    it(name, () => {
      const d = decideNodeState({ ...base, ...patch });
      expect(d.state).to.equal(state);
      expect(d.reason).to.match(reason);
    });
  }
});

describe("agents' task reports on the leader's clock", () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const inst = (id: string, reportedAtMs: number): any => ({ instanceId: id, task: { queueDepth: 3, reportedAtMs } });

  it('reads a report whose agent time changed as fresh now, whatever the agent\'s clock says', () => {
    const first = [inst('a', 1_000_000 - 30_000)]; // the agent's clock runs 30 s behind
    const times = onLeaderClock(undefined, first, 1_000_000);
    expect(first[0].task.reportedAtMs).to.equal(1_000_000);
    const next = [inst('a', 1_000_000 - 30_000 + 2_000)];
    onLeaderClock(times, next, 1_002_000);
    expect(next[0].task.reportedAtMs).to.equal(1_002_000);
  });

  it('keeps the time a report was first seen while the agent sends it unchanged (a component that stopped reporting)', () => {
    let times = onLeaderClock(undefined, [inst('a', 5)], 1_000_000);
    for (const now of [1_002_000, 1_004_000, 1_020_000]) {
      const same = [inst('a', 5)];
      times = onLeaderClock(times, same, now);
      expect(same[0].task.reportedAtMs).to.equal(1_000_000);
    }
  });

  it('leaves instances without a task report alone, and forgets instances gone', () => {
    const none = [{ instanceId: 'b' }] as never[];
    const times = onLeaderClock(new Map([['gone', [1, 2]]]), none, 1_000_000);
    expect([...times.keys()]).to.deep.equal([]);
  });
});

describe("a node's clock offset", () => {
  it('is the largest of the samples (the one that spent least time in transit)', () => {
    expect(clockOffset([29_990, 29_950, 29_998, 29_970])).to.equal(29_998);
    expect(clockOffset([-30_010, -30_002, -30_050])).to.equal(-30_002);
    expect(clockOffset([])).to.equal(undefined);
  });
});

describe('fleetDisruption: so many nodes of a zone DOWN that their instances stay where they are', () => {
  const fleet = (down: number, up: number, zone?: string) => [...Array(down).fill('DOWN'), ...Array(up).fill('READY')].map((state) => ({ state, zone }));
  const one: [string, { state: string; zone?: string }[], number, boolean][] = [
    ['6 of 10 DOWN, over 55%', fleet(6, 4), 55, true],
    ['5 of 10 DOWN: not over 55%', fleet(5, 5), 55, false],
    ['2 of 2 DOWN: fewer than 3, a small fleet replaces as usual', fleet(2, 0), 55, false],
    ['3 of 3 DOWN', fleet(3, 0), 55, true],
    ['all DOWN, the guard off (0)', fleet(10, 0), 0, false],
    ['100 of 300 DOWN', fleet(100, 200), 55, false],
    ['DRAINING and NEW count as not DOWN', [...fleet(3, 0), { state: 'DRAINING' }, { state: 'NEW' }, { state: 'READY' }], 55, false],
    ['an empty fleet', [], 55, false],
    ['2 DOWN and 4 SILENT of 10 (dying together, not all past the timeout yet)', [...fleet(2, 4), ...Array(4).fill({ state: 'SILENT' })], 55, true],
  ];
  for (const [name, nodes, percent, disrupted] of one) {
    it(`one zone (no zone labels): ${name}`, () => {
      const d = fleetDisruption(nodes, percent);
      expect(!!d).to.equal(disrupted);
      const down = nodes.filter((x) => x.state === 'DOWN' || x.state === 'SILENT').length;
      if (d) expect(d).to.deep.equal({ down, total: nodes.length, percent, zones: [{ zone: '', down, total: nodes.length }] });
    });
  }
  // As Kubernetes' node lifecycle controller: a partly disrupted zone is held; a zone with every
  // node DOWN is a zone outage whose instances move to the zones left, unless every zone is out.
  const zoned: [string, { state: string; zone?: string }[], string[]][] = [
    ['3 of 5 DOWN in zone a (60%), 3 of 10 in the fleet: zone a held', [...fleet(3, 2, 'a'), ...fleet(0, 5, 'b')], ['a']],
    ['zone a all DOWN, zone b up: a zone outage, replaced in b', [...fleet(4, 0, 'a'), ...fleet(0, 4, 'b')], []],
    ['zones a and b all DOWN, zone c up (8 of 12): replaced in c', [...fleet(4, 0, 'a'), ...fleet(4, 0, 'b'), ...fleet(0, 4, 'c')], []],
    ['every zone all DOWN: all held (the leader is the one cut off)', [...fleet(4, 0, 'a'), ...fleet(4, 0, 'b')], ['a', 'b']],
    ['zone a all DOWN, zone b 3 of 4: b held, a replaced', [...fleet(4, 0, 'a'), ...fleet(3, 1, 'b')], ['b']],
    ['2 of 3 DOWN in zone a: fewer than 3', [...fleet(2, 1, 'a'), ...fleet(0, 3, 'b')], []],
    ['nodes without the label form a zone of their own', [...fleet(3, 1), ...fleet(0, 4, 'a')], ['']],
    ['1 of 1 in zone a and 1 of 1 in b, all DOWN: fewer than 3 in all', [...fleet(1, 0, 'a'), ...fleet(1, 0, 'b')], []],
  ];
  for (const [name, nodes, held] of zoned) {
    it(`zones: ${name}`, () => {
      const d = fleetDisruption(nodes, 55);
      expect(d?.zones.map((z) => z.zone) ?? []).to.deep.equal(held);
      if (!d) return;
      const mine = nodes.filter((x) => held.includes(x.zone ?? ''));
      expect(d.down).to.equal(mine.filter((x) => x.state === 'DOWN').length);
      expect(d.total).to.equal(mine.length);
    });
  }
  it('says which zones, and which only settle', () => {
    expect(disruptionText({ down: 6, total: 10, percent: 55, zones: [{ zone: '', down: 6, total: 10 }] })).to.match(/^6 of 10 nodes are DOWN or silent \(over 55%\): /);
    expect(disruptionText({ down: 7, total: 9, percent: 55, zones: [{ zone: 'a', down: 3, total: 5 }, { zone: 'b', down: 4, total: 4, settling: true }] }))
      .to.match(/^3 of 5 nodes in zone a, 4 of 4 nodes in zone b \(settling\) are DOWN or silent \(over 55%\)/);
    expect(disruptionText({ down: 2, total: 5, percent: 55, settling: true, zones: [{ zone: 'a', down: 2, total: 5, settling: true }] })).to.match(/^2 of 5 nodes in zone a are still DOWN or silent after a disruption/);
  });
  it('counts a node as silent past the heartbeat timeout less an interval and a half, never under one interval', () => {
    expect(silentAfterMs(10_000, 5_000)).to.equal(5_000);
    expect(silentAfterMs(3_000, 500)).to.equal(2_250);
    expect(silentAfterMs(30_000, 5_000)).to.equal(22_500);
  });
});

describe("a node record's refresh", () => {
  it('is due up to a quarter interval early, the same for a node each time and spread over a fleet', () => {
    const ids = Array.from({ length: 1_000 }, (_, i) => `node-${String(i).padStart(4, '0')}`);
    const j = ids.map((id) => refreshJitter(id, 60_000));
    expect(j.every((x) => x >= 0 && x < 15_000)).to.equal(true);
    expect(ids.map((id) => refreshJitter(id, 60_000))).to.deep.equal(j);
    // Spread: each 1.5 s slice of the quarter holds some of 1,000 nodes, none most of them.
    const slices = new Array(10).fill(0);
    for (const x of j) slices[Math.floor(x / 1_500)]++;
    expect(Math.min(...slices), slices.join(',')).to.be.above(50);
    expect(Math.max(...slices), slices.join(',')).to.be.below(150);
  });
});
