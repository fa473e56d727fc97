// A warning that repeats (a retry loop failing while etcd or a coordinator is away) is logged
// the first time and then at most once a period, with how many were held back meanwhile (those
// go to debug): the log says what is wrong and for how long without a line per attempt.
import { monoMs } from './clock';

export class LogThrottle {
  private lastAtMs = -Infinity;
  private held = 0;

  constructor(private readonly periodMs = 60_000, private readonly now: () => number = monoMs) {}

  /** undefined: hold this one back; else how many were held back since the last one logged. */
  take(): number | undefined {
    const t = this.now();
    if (t - this.lastAtMs < this.periodMs) {
      this.held++;
      return undefined;
    }
    const held = this.held;
    this.held = 0;
    this.lastAtMs = t;
    return held;
  }

  /** It works again: the next warning is logged at once. Returns whether any was logged since the last reset. */
  reset(): boolean {
    const was = this.lastAtMs !== -Infinity;
    this.lastAtMs = -Infinity;
    this.held = 0;
    return was;
  }
}
