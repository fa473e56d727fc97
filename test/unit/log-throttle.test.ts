import { expect } from 'chai';
import { LogThrottle } from '../../common/log-throttle';

describe('LogThrottle', () => {
  it('lets the first through, then one a period with the count held back', () => {
    let now = 0;
    const t = new LogThrottle(30_000, () => now);
    expect(t.take()).to.equal(0);
    for (const at of [1_000, 5_000, 29_999]) {
      now = at;
      expect(t.take()).to.equal(undefined);
    }
    now = 30_000;
    expect(t.take()).to.equal(3);
    now = 30_001;
    expect(t.take()).to.equal(undefined);
  });

  it('lets the next one through at once after a reset, and says whether any was let through before', () => {
    let now = 0;
    const t = new LogThrottle(30_000, () => now);
    expect(t.reset()).to.equal(false);
    t.take();
    now = 1_000;
    expect(t.take()).to.equal(undefined);
    expect(t.reset()).to.equal(true);
    expect(t.take()).to.equal(0);
  });
});
