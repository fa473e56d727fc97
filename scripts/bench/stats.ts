// Small statistics and table helpers shared by the benchmarks.
import * as fs from 'node:fs';

/** CPU time of a process so far (utime + stime from /proc/<pid>/stat), in microseconds; 0 once it is gone. */
export function processCpuUs(pid: number): number {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) * (1e6 / 100); // in clock ticks, USER_HZ 100 on Linux
  } catch {
    return 0;
  }
}
export function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i];
}
export const median = (xs: number[]) => quantile(xs, 0.5);
export const p99 = (xs: number[]) => quantile(xs, 0.99);

export function fmt(n: number, digits = 0): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '-';
}

export function progress(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}
