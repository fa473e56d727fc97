// Failpoints, after etcd's gofail: named places in the code where a test can inject a delay
// through the environment, to make a race that takes microseconds in production take seconds
// in a test, or an error, to fail what a real fault fails there only rarely. Off unless
// TESSERA_FAILPOINTS is set, e.g. TESSERA_FAILPOINTS="leaderStart=sleep(2000)" or
// "commitInPartsBetween=error(1)" (throws the first time it is reached). A name may carry a
// subject, name@subject, to fire only where the code names that subject (a pipeline, say):
// "directStartAck@slowp=sleep(600000)". Never set it on a real fleet.

/** Read on first use (a daemon reads it with its settings, so a bad value stops it there, exit 2). */
let parsed: Map<string, Failpoint> | undefined;
const points = (): Map<string, Failpoint> => (parsed ??= parseFailpoints(process.env.TESSERA_FAILPOINTS ?? ''));

/** sleep(ms): wait that long each time; error(n): throw the first n times. */
export type Failpoint = { sleepMs: number } | { errors: number };

/** name=sleep(ms) and name=error(n) entries, separated by ';' or ','; anything else is refused with what it could not read. */
export function parseFailpoints(spec: string): Map<string, Failpoint> {
  const out = new Map<string, Failpoint>();
  for (const part of spec.split(/[;,]/).map((s) => s.trim()).filter(Boolean)) {
    const m = /^([A-Za-z][\w.-]*(?:@[\w.-]+)?)=(sleep|error)\((\d+)\)$/.exec(part);
    if (!m) throw new Error(`TESSERA_FAILPOINTS: cannot read "${part}" (expected name=sleep(ms), name=error(n), or name@subject=...)`);
    out.set(m[1], m[2] === 'sleep' ? { sleepMs: Number(m[3]) } : { errors: Number(m[3]) });
  }
  return out;
}

/** Names of the failpoints set in this process (for a start-up warning). */
export function activeFailpoints(): string[] {
  return [...points().keys()];
}

/**
 * Waits or throws as the failpoint says when it is set (as name, or as name@subject for this
 * subject); resolves at once (no timer) when it is not.
 */
export async function failpoint(name: string, subject?: string): Promise<void> {
  const all = points();
  if (!all.size) return;
  const p = (subject !== undefined ? all.get(`${name}@${subject}`) : undefined) ?? all.get(name);
  if (!p) return;
  if ('sleepMs' in p) {
    await new Promise((r) => setTimeout(r, p.sleepMs));
  } else if (p.errors > 0) {
    p.errors--;
    throw new Error(`failpoint ${name}: injected error`);
  }
}
