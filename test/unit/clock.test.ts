// The steady clock (common/clock.ts): epoch milliseconds that follow the monotonic clock and
// catch up with a step of the system clock by slewing, never by stepping.
import { expect } from 'chai';
import { SteadyClock } from '../../common/clock';

describe('SteadyClock', () => {
  const fakes = (wall0: number) => {
    const t = { wall: wall0, mono: 0 };
    const clock = new SteadyClock(() => t.wall, () => t.mono, 0.05);
    const advance = (ms: number) => { t.wall += ms; t.mono += ms; };
    return { t, clock, advance };
  };

  it('reads the system clock while it does not step', () => {
    const { clock, advance } = fakes(1_000_000);
    expect(clock.now()).to.equal(1_000_000);
    advance(1_234);
    expect(clock.now()).to.equal(1_001_234);
    expect(clock.offsetMs()).to.equal(0);
  });

  it('follows a step forward at most 5% faster than real time', () => {
    const { t, clock, advance } = fakes(1_000_000);
    clock.now();
    t.wall += 60_000; // the step
    advance(1_000);
    expect(clock.now()).to.equal(1_001_050); // a second of real time reads as 1.05 s, not 61 s
    expect(clock.offsetMs()).to.equal(60_000 - 50);
    // Caught up after 60 s / 5% = 20 minutes, one reading a second; from then on it reads the system clock.
    for (let i = 0; i < 1_200; i++) { advance(1_000); clock.now(); }
    expect(clock.offsetMs()).to.equal(0);
    advance(500);
    expect(clock.now()).to.equal(t.wall);
  });

  it('never runs backwards when the system clock steps back: it runs 5% slower until caught up', () => {
    const { t, clock, advance } = fakes(1_000_000);
    let last = clock.now();
    t.wall -= 60_000;
    for (let i = 0; i < 100; i++) {
      advance(100);
      const now = clock.now();
      expect(now - last).to.be.within(94, 96); // 100 ms of real time read as 95 ms
      last = now;
    }
    expect(clock.offsetMs()).to.be.closeTo(-60_000 + 500, 1);
  });

  it('slews by at most 5% of the time since its last reading, however long that was', () => {
    const { t, clock, advance } = fakes(1_000_000);
    clock.now();
    t.wall += 60_000;
    advance(600_000); // ten minutes without a reading: 30 s of the step caught up
    expect(clock.now()).to.equal(1_000_000 + 600_000 + 30_000);
    advance(600_000);
    expect(clock.now()).to.equal(t.wall);
  });
});
