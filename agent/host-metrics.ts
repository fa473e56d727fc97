// Host figures from systeminformation, cheap calls only: currentLoad (~5 ms), mem (~1 ms),
// fsSize (~8 ms). processes() and versions() cost 90-600 ms and stay off the report loop.
import * as os from 'node:os';
import si from 'systeminformation';
import type { HostUsage } from '../common/generated/tessera/v1/HostUsage';
import type { Resources } from '../common/generated/tessera/v1/Resources';

const MIB = 1024 * 1024;

export async function sampleHost(stateDir: string): Promise<HostUsage> {
  const [load, mem, fs] = await Promise.all([si.currentLoad(), si.mem(), si.fsSize().catch(() => [])]);
  const disk = pickFs(fs, stateDir);
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

/** The filesystem holding the state dir: the longest mount point that prefixes it. */
function pickFs(list: si.Systeminformation.FsSizeData[], dir: string) {
  let best: si.Systeminformation.FsSizeData | undefined;
  for (const f of list) {
    if (dir.startsWith(f.mount) && (!best || f.mount.length > best.mount.length)) best = f;
  }
  return best ?? list.find((f) => f.mount === '/');
}

export async function hostCapacity(stateDir: string, cpuMillis?: number, memoryMib?: number): Promise<Resources> {
  const disk = pickFs(await si.fsSize().catch(() => []), stateDir);
  return {
    cpuMillis: cpuMillis ?? os.cpus().length * 1000,
    memoryMib: memoryMib ?? Math.round(os.totalmem() / MIB),
    diskMib: disk ? Math.round(disk.size / MIB) : 0,
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
