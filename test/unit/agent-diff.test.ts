import { expect } from 'chai';
import { diffInstances, restartDecision } from '../../agent/diff';

describe('agent diff: desired against observed', () => {
  const obs = (entries: [string, boolean][]) => new Map(entries.map(([id, running]) => [id, { running, status: running ? 'running' : 'exited' }]));
  const cases: [string, Parameters<typeof diffInstances>[0], ReturnType<typeof diffInstances>][] = [
    ['starts what is desired and missing', { desired: new Set(['a']), observed: obs([]), stopping: new Set(), failed: new Set() }, { start: ['a'], restart: [], stop: [], keep: [] }],
    ['keeps what runs', { desired: new Set(['a']), observed: obs([['a', true]]), stopping: new Set(), failed: new Set() }, { start: [], restart: [], stop: [], keep: ['a'] }],
    ['restarts what exited', { desired: new Set(['a']), observed: obs([['a', false]]), stopping: new Set(), failed: new Set() }, { start: [], restart: ['a'], stop: [], keep: [] }],
    ['stops what it was told to stop', { desired: new Set(), observed: obs([['a', true]]), stopping: new Set(['a']), failed: new Set() }, { start: [], restart: [], stop: ['a'], keep: [] }],
    ['keeps an unknown container for the leader to judge', { desired: new Set(), observed: obs([['x', true]]), stopping: new Set(), failed: new Set() }, { start: [], restart: [], stop: [], keep: ['x'] }],
    ['never restarts a FAILED instance', { desired: new Set(['a']), observed: obs([['a', false]]), stopping: new Set(), failed: new Set(['a']) }, { start: [], restart: [], stop: [], keep: [] }],
  ];
  for (const [name, input, want] of cases) it(name, () => expect(diffInstances(input)).to.deep.equal(want));
});

describe('restart policy', () => {
  const p = { attempts: 2, windowMs: 10_000, delayMs: 1_000 };
  it('waits the delay after an exit', () => expect(restartDecision([], 1_500, p, 1_000)).to.equal('later'));
  it('restarts after the delay', () => expect(restartDecision([], 2_000, p, 1_000)).to.equal('now'));
  it('gives up after the attempts within the window', () => expect(restartDecision([5_000, 6_000], 8_000, p, 6_500)).to.equal('give-up'));
  it('forgets restarts older than the window', () => expect(restartDecision([1, 2], 20_000, p, 15_000)).to.equal('now'));
});
