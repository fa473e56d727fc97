// The agent's loop, as a pure function: what it was told to run (desired), what Docker has
// (observed), and what it is stopping -> what to start, stop, restart and keep. The apply step
// (instances.ts) carries it out and logs the counts.
import type { ObservedContainer } from './docker-runtime';

export interface DiffInput {
  desired: ReadonlySet<string>;
  observed: ReadonlyMap<string, Pick<ObservedContainer, 'running' | 'status'>>;
  /** Told to stop (or given up on as FAILED): remove if present, never start. */
  stopping: ReadonlySet<string>;
  failed: ReadonlySet<string>;
}

export interface DiffResult {
  start: string[];     // desired, no container
  restart: string[];   // desired, container exited
  stop: string[];      // told to stop, container present
  keep: string[];      // running as it should, or adopted and left for the leader to judge
}

export function diffInstances(i: DiffInput): DiffResult {
  const out: DiffResult = { start: [], restart: [], stop: [], keep: [] };
  for (const id of i.desired) {
    if (i.stopping.has(id) || i.failed.has(id)) continue;
    const o = i.observed.get(id);
    if (!o) out.start.push(id);
    else if (o.running) out.keep.push(id);
    else out.restart.push(id);
  }
  for (const [id] of i.observed) {
    if (i.stopping.has(id)) out.stop.push(id);
    else if (!i.desired.has(id)) out.keep.push(id);
  }
  return out;
}

/** Restart policy: may this instance restart now, given its recent restart times? Pure. */
export function restartDecision(restartTimes: number[], nowMs: number, policy: { attempts: number; windowMs: number; delayMs: number }, lastExitMs: number): 'now' | 'later' | 'give-up' {
  const recent = restartTimes.filter((t) => nowMs - t < policy.windowMs);
  if (recent.length >= policy.attempts) return 'give-up';
  return nowMs - lastExitMs >= policy.delayMs ? 'now' : 'later';
}
