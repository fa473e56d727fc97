// Jittered exponential backoff, as grpc-js's backoff-timeout does it: each delay is the
// previous one times a multiplier, capped, then spread by +-jitter so that a fleet of agents
// that lost the same coordinator does not come back in lockstep.
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  multiplier: number;
  /** 0..1: the delay is spread uniformly over [d*(1-jitter), d*(1+jitter)]. */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 100, maxMs: 5000, multiplier: 1.6, jitter: 0.2 };

/** The un-jittered delay before retry number `attempt` (0-based). Pure. */
export function baseDelay(attempt: number, opts: BackoffOptions): number {
  return Math.min(opts.maxMs, opts.initialMs * Math.pow(opts.multiplier, Math.max(0, attempt)));
}

/** The jittered delay for `attempt`, given a random number in [0,1). Pure. */
export function jitteredDelay(attempt: number, opts: BackoffOptions, random: number): number {
  const d = baseDelay(attempt, opts);
  return Math.max(0, Math.round(d * (1 - opts.jitter + 2 * opts.jitter * random)));
}

/** Stateful helper: next() gives the next delay, reset() after a success. */
export class Backoff {
  private attempt = 0;
  constructor(private readonly opts: BackoffOptions = DEFAULT_BACKOFF, private readonly random: () => number = Math.random) {}
  next(): number {
    return jitteredDelay(this.attempt++, this.opts, this.random());
  }
  reset(): void {
    this.attempt = 0;
  }
  get attempts(): number {
    return this.attempt;
  }
}

/** A sleep whose timer does not keep the process alive and that an AbortSignal can cut short. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    t.unref();
    function done() {
      signal?.removeEventListener('abort', done);
      clearTimeout(t);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
