import { expect } from 'chai';
import { activeSchedule, decide, decideEnv, decideVertical, EngineInput, InstanceFigures, Policy } from '../../coordinator/scaling/engine';
import { normalizePolicy } from '../../coordinator/scaling/policy';
import { InvalidArgumentError } from '../../common/errors';

const policy = (over: Partial<Policy> = {}): Policy => ({
  min: 1, max: 10, checks: [{ metric: 'queue_depth', target: 10 }], tolerance: 0.1,
  scaleUp: { stabilizationMs: 0, maxInstances: 4, maxPercent: 100, periodMs: 15_000 },
  scaleDown: { stabilizationMs: 60_000, maxInstances: 1, maxPercent: 0, periodMs: 15_000 },
  cooldownMs: 0, queueDrainMs: 30_000, vertical: {}, schedules: [], ...over,
});
const inst = (n: number, f: Partial<InstanceFigures>): InstanceFigures[] => Array.from({ length: n }, (_, i) => ({ id: `i${i}`, ready: true, ...f }));
const input = (over: Partial<EngineInput>): EngineInput => ({
  policy: policy(), current: 2, reservation: { cpuMillis: 500, memoryMib: 256 }, instances: inst(2, { queueDepth: 10 }),
  nowMs: 1_000_000, recommendations: [], changes: [], ...over,
});

describe('scaling engine', () => {
  const cases: [string, Partial<EngineInput>, number, RegExp][] = [
    ['steps up on a backlog', { instances: inst(2, { queueDepth: 40 }) }, 6, /scale-up 2 -> 6: queue_depth/],
    ['holds within tolerance (no flapping around the target)', { instances: inst(2, { queueDepth: 10.8 }) }, 2, /steady/],
    ['clamps to max', { instances: inst(2, { queueDepth: 400 }), policy: policy({ scaleUp: { stabilizationMs: 0, maxInstances: 100, maxPercent: 100, periodMs: 1 } }) }, 10, /scale-up 2 -> 10/],
    ['limits a scale-up by the rate limit', { current: 2, instances: inst(2, { queueDepth: 200 }), policy: policy({ scaleUp: { stabilizationMs: 0, maxInstances: 1, maxPercent: 50, periodMs: 15_000 } }) }, 3, /limited to 1 by the rate limit/],
    ['counts recent moves against the rate limit', { current: 4, instances: inst(4, { queueDepth: 200 }), changes: [{ atMs: 995_000, from: 2, to: 6 }], policy: policy({ scaleUp: { stabilizationMs: 0, maxInstances: 4, maxPercent: 0, periodMs: 15_000 } }) }, 4, /limited to 0/],
    ['waits out the scale-down window', { current: 4, instances: inst(4, { queueDepth: 0 }), recommendations: [{ atMs: 990_000, value: 4 }] }, 4, /waiting out the 60 s scale-down window/],
    ['scales down once the window agrees, one at a time', { current: 4, instances: inst(4, { queueDepth: 0 }), recommendations: [{ atMs: 900_000, value: 4 }] }, 3, /scale-down 4 -> 3/],
    ['holds on missing figures, and says so', { current: 4, instances: inst(4, {}) }, 4, /no check has enough figures.*never scaling down on missing data/],
    ['does not scale down when half the instances are silent', { current: 4, instances: [...inst(1, { queueDepth: 0 }), ...inst(3, {})] }, 4, /holding|no check/],
    ['says when no instance is ready yet (warming up), rather than "0 of 0"', { current: 2, instances: [{ id: 'a', ready: false, queueDepth: 0 }, { id: 'b', ready: false }] }, 2, /no check has enough figures \(no ready instance \(2 not yet running and healthy for the policy's warmupMs\): too few to decide\)/],
    ['ignores instances that are still starting', { current: 3, instances: [...inst(2, { queueDepth: 10 }), { id: 's', ready: false, queueDepth: 500 }] }, 3, /still starting/],
    ['respects the cooldown', { instances: inst(2, { queueDepth: 40 }), changes: [{ atMs: 990_000, from: 1, to: 2 }], policy: policy({ cooldownMs: 30_000 }) }, 2, /cooldown: last change 10 s ago/],
    ['takes the safest of several checks', { instances: inst(2, { queueDepth: 10, cpuPercentOfHost: 100 }), policy: policy({ checks: [{ metric: 'queue_depth', target: 10 }, { metric: 'cpu', target: 50 }] }) }, 6, /cpu at 200% of the reservation/],
    ['moves into a schedule\'s range at once', { current: 2, nowMs: Date.UTC(2026, 10, 25, 9, 30), policy: policy({ schedules: [{ days: [], start: '09:00', end: '17:00', min: 5, max: 8 }] }) }, 5, /outside 5..8 \(schedule\)/],
  ];
  for (const [name, over, value, reason] of cases) {
    it(name, () => {
      const d = decide(input(over));
      expect(d.value, d.reason).to.equal(value);
      expect(d.reason).to.match(reason);
      expect(d.attribute).to.equal('replicas');
    });
  }
  it('sizes for draining the backlog in time when the service rate is known', () => {
    // 2 instances each serving 5/s, backlog 300, drain in 30 s: (10 + 10) / 5 = 4 instances.
    const d = decide(input({ instances: inst(2, { queueDepth: 150, processingRate: 5 }), policy: policy({ checks: [{ metric: 'queue_depth', target: 1000 }] }) }));
    expect(d.value).to.equal(4);
    expect(d.reason).to.match(/drain it in 30 s/);
  });
  it('names the range and the inputs in every decision', () => {
    const d = decide(input({ instances: inst(2, { queueDepth: 40 }) }));
    expect([d.min, d.max, d.current]).to.deep.equal([1, 10, 2]);
    expect(d.inputs).to.include({ current: 2, ready: 2 });
    expect(d.checks[0]).to.include({ metric: 'queue_depth', value: 80, recommendation: 8 });
  });
});

describe('vertical sizing', () => {
  it('clamps to the range', () => {
    const d = decideVertical('memory', { min: 256, max: 1024 }, 512, [1000], 0.1)!;
    expect(d.value).to.equal(1024);
    expect(d.change).to.equal(true);
    expect(decideVertical('memory', { min: 256, max: 1024 }, 512, [50], 0.1)!.value).to.equal(256);
  });
  it('does not change within tolerance', () => {
    expect(decideVertical('memory', { min: 256, max: 1024 }, 512, [400], 0.1)!.change).to.equal(false);
  });
  it('gives nothing without figures', () => expect(decideVertical('cpu', { min: 100, max: 1000 }, 500, [], 0.1)).to.equal(undefined));
});

describe('schedules', () => {
  it('wraps past midnight', () => {
    const s = [{ days: [], start: '22:00', end: '06:00', min: 1, max: 2 }];
    expect(activeSchedule(s, Date.UTC(2026, 0, 1, 23, 0))).to.not.equal(undefined);
    expect(activeSchedule(s, Date.UTC(2026, 0, 1, 5, 59))).to.not.equal(undefined);
    expect(activeSchedule(s, Date.UTC(2026, 0, 1, 12, 0))).to.equal(undefined);
  });
});

describe('env tuning', () => {
  const t = { env: 'BATCH', metric: 'queue_depth', target: 20, min: 1, max: 8 };
  const ready = (q: number) => inst(2, { queueDepth: q });
  it('raises the setting in proportion, within the range', () => {
    const d = decideEnv(t, 2, ready(60), 0.1)!;
    expect([d.attribute, d.value, d.change]).to.deep.equal(['env:BATCH', 6, true]);
    expect(decideEnv(t, 2, ready(400), 0.1)!.value).to.equal(8);
  });
  it('holds within tolerance and without figures', () => {
    expect(decideEnv(t, 2, ready(21), 0.1)!.change).to.equal(false);
    expect(decideEnv(t, 2, inst(2, {}), 0.1)).to.equal(undefined);
  });
  it('refuses a policy that tunes an env setting the spec does not allow', () => {
    const base = { app: 'a', component: 'c', min: 1, max: 2, env: [{ env: 'THREADS', metric: 'queue_depth', target: 5 }] };
    expect(() => normalizePolicy(base, { cpuMillis: 2000, memoryMib: 4096 }, [{ env: 'BATCH', min: 1, max: 8 }])).to.throw(InvalidArgumentError, 'env[0].env: the component\'s spec does not allow tuning "THREADS" (declare it in tunables; allowed: BATCH)');
    expect(normalizePolicy({ ...base, env: [{ env: 'BATCH', metric: 'queue_depth', target: 5 }] }, { cpuMillis: 2000, memoryMib: 4096 }, [{ env: 'BATCH', min: 1, max: 8 }]).env[0]).to.deep.equal({ env: 'BATCH', metric: 'queue_depth', target: 5, min: 1, max: 8 });
  });
});
