// Failpoints, after etcd's gofail: named places in the code where a test can inject a delay
// through the environment, to make a race that takes microseconds in production take seconds
// in a test. Off unless TESSERA_FAILPOINTS is set, e.g. TESSERA_FAILPOINTS="leaderStart=sleep(2000)".
// Never set it on a real fleet.

/** Read on first use (a daemon reads it with its settings, so a bad value stops it there, exit 2). */
let parsed: Map<string, number> | undefined;
const points = (): Map<string, number> => (parsed ??= parseFailpoints(process.env.TESSERA_FAILPOINTS ?? ''));

/** name=sleep(ms) entries, separated by ';' or ','; anything else is refused with what it could not read. */
export function parseFailpoints(spec: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const part of spec.split(/[;,]/).map((s) => s.trim()).filter(Boolean)) {
    const m = /^([A-Za-z][\w.-]*)=sleep\((\d+)\)$/.exec(part);
    if (!m) throw new Error(`TESSERA_FAILPOINTS: cannot read "${part}" (expected name=sleep(ms))`);
    out.set(m[1], Number(m[2]));
  }
  return out;
}

/** Names of the failpoints set in this process (for a start-up warning). */
export function activeFailpoints(): string[] {
  return [...points().keys()];
}

/** Waits as the failpoint says when it is set; resolves at once (no timer) when it is not. */
export async function failpoint(name: string): Promise<void> {
  const ms = points().get(name);
  if (ms !== undefined) await new Promise((r) => setTimeout(r, ms));
}
