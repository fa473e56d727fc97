import { expect } from 'chai';
import { Backoff, baseDelay, jitteredDelay, sleep } from '../../common/backoff';

const opts = { initialMs: 100, maxMs: 1_000, multiplier: 2, jitter: 0.2 };

describe('backoff', () => {
  const table: [number, number][] = [[0, 100], [1, 200], [2, 400], [3, 800], [4, 1_000], [20, 1_000]];
  for (const [attempt, expected] of table) {
    it(`attempt ${attempt} waits ${expected} ms before jitter`, () => expect(baseDelay(attempt, opts)).to.equal(expected));
  }
  it('spreads by +-jitter', () => {
    expect(jitteredDelay(2, opts, 0)).to.equal(320);
    expect(jitteredDelay(2, opts, 0.5)).to.equal(400);
    expect(jitteredDelay(2, opts, 0.999999)).to.equal(480);
  });
  it('grows until reset, then starts over', () => {
    const b = new Backoff(opts, () => 0.5);
    expect([b.next(), b.next(), b.next()]).to.deep.equal([100, 200, 400]);
    b.reset();
    expect(b.next()).to.equal(100);
  });
  it('sleep ends early when aborted', async () => {
    const ac = new AbortController();
    const t0 = Date.now();
    const p = sleep(5_000, ac.signal);
    ac.abort();
    await p;
    expect(Date.now() - t0).to.be.lessThan(1_000);
  });
});
