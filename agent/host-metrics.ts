// Host figures from systeminformation, cheap calls only: currentLoad and mem read /proc.
// Disk comes from statfs(2) on the state dir: si.fsSize() spawns df (3.5 ms of CPU a call),
// which at a 1 s interval alone would cost the agent a third of a percent of a core.
// processes() and versions() cost 90-600 ms and stay off the report loop.
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import type { Systeminformation } from 'systeminformation';

// The two systeminformation modules we use, loaded alone: the package's index loads all 20
// of its modules, about 7 MB of resident memory the agent has no use for. (Version pinned.)
// eslint-disable-next-line @typescript-eslint/no-require-imports
const si = {
  ...(require('systeminformation/lib/cpu') as { currentLoad(): Promise<Systeminformation.CurrentLoadData> }),
  ...(require('systeminformation/lib/memory') as { mem(): Promise<Systeminformation.MemData> }),
};
import type { HostUsage } from '../common/generated/tessera/v1/HostUsage';
import type { Resources } from '../common/generated/tessera/v1/Resources';

const MIB = 1024 * 1024;

export async function sampleHost(stateDir: string): Promise<HostUsage> {
  const [load, mem, disk] = await Promise.all([si.currentLoad(), si.mem(), diskOf(stateDir)]);
  const [l1, l5, l15] = os.loadavg();
  return {
    cpuPercent: round(load.currentLoad),
    memoryUsedMib: Math.round(mem.active / MIB),
    memoryTotalMib: Math.round(mem.total / MIB),
    diskUsedMib: disk ? Math.round(disk.used / MIB) : 0,
    diskTotalMib: disk ? Math.round(disk.size / MIB) : 0,
    load1: round(l1), load5: round(l5), load15: round(l15),
    sampledAtMs: Date.now(),
  };
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
