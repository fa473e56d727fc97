// Clocks for control loops. The system clock (Date.now) can step: an NTP step, a VM resumed
// from a snapshot, an operator's `date -s`. A leader that measured a node's silence or its own
// lease on it took a step of +60 s for a minute of silence (it stepped down, or would have marked
// every node DOWN and replaced every instance), and a step back held every timeout a minute
// longer (a dead node stayed READY, health checks stopped). Go's time package gives each reading
// a monotonic part for this (time.Since); here:
//
// - monoMs(): milliseconds since the process started, on CLOCK_MONOTONIC (performance.now()):
//   for durations that stay in memory (leases, keepalive quiet, intervals).
// - steadyNow(): epoch milliseconds, like Date.now(), that never step: they start at the system
//   clock and advance with the monotonic clock, and when the system clock steps they follow it
//   by slewing, at most SLEW (5%) faster or slower than real time (a 60 s step is caught up in
//   20 minutes). For times that are both compared within the process (a node's last report, a
//   lease's expiry, a backoff) and stored or shown; a duration measured on it is off by at most
//   5%. Times that come from other processes (a client's job deadline, Docker's start times)
//   stay on the system clock: comparing them with steadyNow() adds the slewed-away offset.
//
// watchClock() logs each step of the system clock; clockOffsetMs() says how far steadyNow() is
// from it (the metric tessera_clock_offset_seconds).
import { performance } from 'node:perf_hooks';

export const SLEW = 0.05;
/** A change of the system clock against the monotonic one larger than this is a step (logged). */
export const STEP_MS = 1_000;

export function monoMs(): number {
  return performance.now();
}

/** A slewing clock over two sources (the system clock and a monotonic one): testable with fakes. */
export class SteadyClock {
  private mono: number;
  private steady: number;

  constructor(private readonly wall: () => number = Date.now, private readonly monotonic: () => number = monoMs, private readonly slew = SLEW) {
    this.mono = monotonic();
    this.steady = wall();
  }

  now(): number {
    const mono = this.monotonic();
    const elapsed = Math.max(0, mono - this.mono);
    let steady = this.steady + elapsed;
    const off = this.wall() - steady;
    if (off !== 0) {
      const max = elapsed * this.slew;
      steady += Math.max(-max, Math.min(max, off));
    }
    this.mono = mono;
    this.steady = steady;
    return Math.floor(steady);
  }

  /** How far the system clock is from this one now (ms; positive: the system clock is ahead). */
  offsetMs(): number {
    return this.wall() - this.now();
  }
}

const process_ = new SteadyClock();

export function steadyNow(): number {
  return process_.now();
}

/** The system clock minus steadyNow() (ms): non-zero after a step, until slewed away. */
export function clockOffsetMs(): number {
  return process_.offsetMs();
}

interface ClockLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/**
 * Watches for steps of the system clock (every second, against the monotonic clock): a warning
 * with its size for each, and an info line once steadyNow() has caught up with it.
 */
export function watchClock(log: ClockLog, intervalMs = 1_000): () => void {
  let base = Date.now() - monoMs();
  let behind = false;
  const t = setInterval(() => {
    const b = Date.now() - monoMs();
    const step = b - base;
    base = b;
    const offset = clockOffsetMs();
    if (Math.abs(step) > STEP_MS) {
      behind = true;
      log.warn({ stepMs: Math.round(step), offsetMs: offset },
        `the system clock stepped by ${(step / 1000).toFixed(1)} s: timers and liveness here follow it, at most ${SLEW * 100}% faster or slower than real time (caught up in ~${Math.max(1, Math.ceil(Math.abs(offset) / SLEW / 60_000))} min)`);
    } else if (behind && Math.abs(offset) < STEP_MS) {
      behind = false;
      log.info({ offsetMs: offset }, 'timers have caught up with the system clock');
    }
  }, intervalMs);
  t.unref();
  return () => clearInterval(t);
}

/** A time read on the system clock (another process's: Docker's start time) as steadyNow() would have read it. */
export function fromSystemClock(wallMs: number): number {
  return wallMs - clockOffsetMs();
}
