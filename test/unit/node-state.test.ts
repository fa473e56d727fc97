import { expect } from 'chai';
import { decideNodeState, IllegalTransitionError, LivenessInput, NodeState, transition } from '../../coordinator/node-state';
import { clockOffset, fleetDisruption, onLeaderClock, silentAfterMs } from '../../coordinator/node-registry';

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

describe('fleetDisruption: so many nodes DOWN that their instances stay where they are', () => {
  const fleet = (down: number, up: number) => [...Array(down).fill('DOWN'), ...Array(up).fill('READY')];
  const cases: [string, string[], number, boolean][] = [
    ['6 of 10 DOWN, over 55%', fleet(6, 4), 55, true],
    ['5 of 10 DOWN: not over 55%', fleet(5, 5), 55, false],
    ['2 of 2 DOWN: fewer than 3, a small fleet replaces as usual', fleet(2, 0), 55, false],
    ['3 of 3 DOWN', fleet(3, 0), 55, true],
    ['all DOWN, the guard off (0)', fleet(10, 0), 0, false],
    ['100 of 300 DOWN', fleet(100, 200), 55, false],
    ['DRAINING and NEW count as not DOWN', [...fleet(3, 0), 'DRAINING', 'NEW', 'READY'], 55, false],
    ['an empty fleet', [], 55, false],
    ['2 DOWN and 4 SILENT of 10 (dying together, not all past the timeout yet)', [...fleet(2, 4), ...Array(4).fill('SILENT')], 55, true],
  ];
  for (const [name, states, percent, disrupted] of cases) {
    it(name, () => {
      const d = fleetDisruption(states, percent);
      expect(!!d).to.equal(disrupted);
      if (d) expect(d).to.deep.equal({ down: states.filter((x) => x === 'DOWN' || x === 'SILENT').length, total: states.length, percent });
    });
  }
  it('counts a node as silent past the heartbeat timeout less an interval and a half, never under one interval', () => {
    expect(silentAfterMs(10_000, 5_000)).to.equal(5_000);
    expect(silentAfterMs(3_000, 500)).to.equal(2_250);
    expect(silentAfterMs(30_000, 5_000)).to.equal(22_500);
  });
});
