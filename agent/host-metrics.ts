// Host figures, cheap calls only. Memory from systeminformation's mem() (reads /proc/meminfo).
// CPU from /proc/stat read here: si.currentLoad() runs `cat /proc/stat | grep cpu` through
// execSync on Linux, which blocks the event loop for the spawn of three processes every report
// (measured: 8% of a busy agent's CPU, and every relayed job step waits behind it).
// Disk comes from statfs(2) on the state dir: si.fsSize() spawns df (3.5 ms of CPU a call).
// processes() and versions() cost 90-600 ms and stay off the report loop.
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import type { Systeminformation } from 'systeminformation';

// The two systeminformation modules we use, loaded alone: the package's index loads all 20
// of its modules, about 7 MB of resident memory the agent has no use for. (Version pinned.)
// eslint-disable-next-line @typescript-eslint/no-require-imports
const si = {
  ...(require('systeminformation/lib/memory') as { mem(): Promise<Systeminformation.MemData> }),
};
import type { HostUsage } from '../common/generated/tessera/v1/HostUsage';
import type { Resources } from '../common/generated/tessera/v1/Resources';

const MIB = 1024 * 1024;

export async function sampleHost(stateDir: string): Promise<HostUsage> {
  const [cpu, mem, disk] = await Promise.all([cpuBusyPercent(), si.mem(), diskOf(stateDir)]);
  const [l1, l5, l15] = os.loadavg();
  return {
    cpuPercent: round(cpu),
    memoryUsedMib: Math.round(mem.active / MIB),
    memoryTotalMib: Math.round(mem.total / MIB),
    diskUsedMib: disk ? Math.round(disk.used / MIB) : 0,
    diskTotalMib: disk ? Math.round(disk.size / MIB) : 0,
    load1: round(l1), load5: round(l5), load15: round(l15),
    sampledAtMs: Date.now(),
  };
}

let lastTicks: { busy: number; total: number } | undefined;

/**
 * Percent of the host's CPU time spent busy (user, nice, system, irq, softirq) since the last
 * sample (since boot for the first): idle, iowait and steal count as not busy. Linux /proc/stat,
 * read without spawning anything; elsewhere os.cpus().
 */
export async function cpuBusyPercent(): Promise<number> {
  let ticks: { busy: number; total: number };
  try {
    const line = (await fsp.readFile('/proc/stat', 'latin1')).split('\n', 1)[0];
    ticks = ticksOfStatLine(line);
  } catch {
    let busy = 0;
    let total = 0;
    for (const c of os.cpus()) {
      const t = c.times;
      busy += t.user + t.nice + t.sys + t.irq;
      total += t.user + t.nice + t.sys + t.irq + t.idle;
    }
    ticks = { busy, total };
  }
  const prev = lastTicks ?? { busy: 0, total: 0 };
  lastTicks = ticks;
  const dt = ticks.total - prev.total;
  return dt > 0 ? Math.min(100, Math.max(0, (100 * (ticks.busy - prev.busy)) / dt)) : 0;
}

/** The aggregate "cpu" line of /proc/stat as busy and total ticks. */
export function ticksOfStatLine(line: string): { busy: number; total: number } {
  const f = line.trim().split(/\s+/);
  if (f[0] !== 'cpu') throw new Error(`not the aggregate cpu line: ${line.slice(0, 40)}`);
  // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
  const [user, nice, system, idle, iowait, irq, softirq, steal] = Array.from({ length: 8 }, (_, i) => Number(f[i + 1]) || 0);
  const busy = user + nice + system + irq + softirq;
  return { busy, total: busy + idle + iowait + steal };
}

/** Size and use of the filesystem holding the state dir, from statfs(2). */
async function diskOf(dir: string): Promise<{ size: number; used: number } | undefined> {
  try {
    const s = await fsp.statfs(dir);
    return { size: s.blocks * s.bsize, used: (s.blocks - s.bfree) * s.bsize };
  } catch {
    return undefined;
  }
}

export async function hostCapacity(stateDir: string, cpuMillis?: number, memoryMib?: number): Promise<Resources> {
  const disk = await diskOf(stateDir);
  return {
    cpuMillis: cpuMillis ?? os.cpus().length * 1000,
    memoryMib: memoryMib ?? Math.round(os.totalmem() / MIB),
    diskMib: disk ? Math.round(disk.size / MIB) : 0,
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
