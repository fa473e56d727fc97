// An instance's CPU and memory, read from its container's cgroup files, as the kubelet's cAdvisor
// reads them, instead of a Docker stats stream per container. Each open stream makes the Engine
// (dockerd and containerd) sample the container every second: measured here, ~0.45% of a core
// per running container (10 containers: 4.7% of a core against 0.6% without the streams), which
// on a host of a hundred containers is half a core spent on figures the agent reads every second
// or so. The files cost a few microseconds to read.
//
// Where: the container's main process (its pid from one inspect) names its cgroups in
// /proc/<pid>/cgroup, and /proc/self/mountinfo says where each hierarchy is mounted. Both cgroup
// versions, with either of Docker's cgroup drivers (cgroupfs: /docker/<id>; systemd:
// /system.slice/docker-<id>.scope) and any --cgroup-parent, since the path is read, not guessed.
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface CgroupMount {
  /** The part of the hierarchy this mount shows (/ unless the agent runs in a cgroup namespace). */
  root: string;
  point: string;
  /** cgroup v1 controllers of this hierarchy (e.g. cpu, cpuacct); empty for v2. */
  controllers: string[];
  v2: boolean;
}

/** The cgroup mounts in /proc/self/mountinfo. */
export function parseCgroupMounts(mountinfo: string): CgroupMount[] {
  const out: CgroupMount[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const f = line.slice(0, sep).split(' ');
    const [fstype, , superOpts = ''] = line.slice(sep + 3).split(' ');
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({
      root: unescape(f[3]), point: unescape(f[4]), v2: fstype === 'cgroup2',
      controllers: fstype === 'cgroup' ? superOpts.split(',').filter((o) => o !== 'rw' && o !== 'ro' && !o.includes('=')) : [],
    });
  }
  return out;
}

export interface CgroupFiles {
  version: 1 | 2;
  /** v1: cpuacct.usage (ns); v2: cpu.stat (usage_usec). */
  cpu: string;
  /** v1: memory.usage_in_bytes; v2: memory.current. */
  memory: string;
  memoryStat: string;
}

/**
 * The files holding a process's CPU time and memory, from its /proc/<pid>/cgroup and the mounts;
 * undefined when they cannot be found or read (the caller falls back to the Engine's stats).
 */
export function cgroupFiles(procCgroup: string, mounts: CgroupMount[], exists: (p: string) => boolean = fs.existsSync): CgroupFiles | undefined {
  const lines = procCgroup.split('\n').filter(Boolean).map((l) => {
    const a = l.indexOf(':');
    const b = l.indexOf(':', a + 1);
    return { controllers: l.slice(a + 1, b).split(',').filter(Boolean), path: l.slice(b + 1) };
  });
  const under = (m: CgroupMount, p: string) => {
    const rel = path.posix.relative(m.root, p);
    return rel.startsWith('..') ? undefined : path.posix.join(m.point, rel);
  };
  const v1 = (controller: string) => {
    const l = lines.find((x) => x.controllers.includes(controller));
    const m = mounts.find((x) => !x.v2 && x.controllers.includes(controller));
    return l && m ? under(m, l.path) : undefined;
  };
  const cpu = v1('cpuacct');
  const mem = v1('memory');
  if (cpu && mem && exists(path.posix.join(cpu, 'cpuacct.usage')) && exists(path.posix.join(mem, 'memory.usage_in_bytes'))) {
    return { version: 1, cpu: path.posix.join(cpu, 'cpuacct.usage'), memory: path.posix.join(mem, 'memory.usage_in_bytes'), memoryStat: path.posix.join(mem, 'memory.stat') };
  }
  const unified = lines.find((x) => !x.controllers.length);
  const m2 = mounts.find((x) => x.v2);
  const dir = unified && m2 ? under(m2, unified.path) : undefined;
  // (In a hybrid layout the unified hierarchy may hold no controllers: then it has no cpu.stat figures of use.)
  if (dir && exists(path.posix.join(dir, 'cpu.stat')) && exists(path.posix.join(dir, 'memory.current'))) {
    return { version: 2, cpu: path.posix.join(dir, 'cpu.stat'), memory: path.posix.join(dir, 'memory.current'), memoryStat: path.posix.join(dir, 'memory.stat') };
  }
  return undefined;
}

function statField(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

/**
 * CPU time used so far (ns) and the working set (bytes: usage less inactive file pages, what the
 * kubelet reports as container_memory_working_set_bytes and `docker stats` shows).
 */
export function readCgroupSample(f: CgroupFiles, read: (p: string) => string = (p) => fs.readFileSync(p, 'utf8')): { cpuNs: number; memoryBytes: number } {
  const cpuNs = f.version === 1 ? Number(read(f.cpu).trim()) : (statField(read(f.cpu), 'usage_usec') ?? NaN) * 1000;
  const usage = Number(read(f.memory).trim());
  const stat = read(f.memoryStat);
  const inactive = (f.version === 1 ? statField(stat, 'total_inactive_file') ?? statField(stat, 'inactive_file') : statField(stat, 'inactive_file')) ?? 0;
  if (!Number.isFinite(cpuNs) || !Number.isFinite(usage)) throw new Error(`unreadable cgroup figures in ${f.cpu} / ${f.memory}`);
  return { cpuNs, memoryBytes: Math.max(0, usage - inactive) };
}

/**
 * An instance's memory in MiB as reported: rounded, but an instance that uses any memory shows at
 * least 1 (a busybox httpd's few hundred KiB would round to 0, which `tessera ps` shows as "-", no
 * figure at all).
 */
export function usedMib(bytes: number): number {
  return bytes > 0 ? Math.max(1, Math.round(bytes / 1024 / 1024)) : 0;
}
