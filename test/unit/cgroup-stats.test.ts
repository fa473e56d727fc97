import { expect } from 'chai';
import { cgroupFiles, parseCgroupMounts, readCgroupSample, usedMib } from '../../agent/cgroup-stats';

// Mount tables and /proc/<pid>/cgroup as hosts print them.
const hybridV1 = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw`;
const combinedV1 = `25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory`;
const v2 = `28 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot`;
const id = 'c0ffee';

describe('container figures from cgroup files (agent/cgroup-stats.ts)', () => {
  it('reads the cgroup mounts, v1 controllers and v2', () => {
    const m = parseCgroupMounts(hybridV1);
    expect(m.map((x) => [x.point, x.controllers.join('+'), x.v2])).to.deep.equal([
      ['/sys/fs/cgroup/cpu', 'cpu', false], ['/sys/fs/cgroup/cpuacct', 'cpuacct', false], ['/sys/fs/cgroup/memory', 'memory', false],
      ['/sys/fs/cgroup/systemd', '', false], ['/sys/fs/cgroup/unified', '', true],
    ]);
    expect(parseCgroupMounts(v2)).to.deep.equal([{ root: '/', point: '/sys/fs/cgroup', controllers: [], v2: true }]);
  });

  const cases: [string, string, string, string[], ReturnType<typeof cgroupFiles>][] = [
    ['v1, cgroupfs driver, controllers mounted apart, a hybrid unified mount beside them', hybridV1,
      `12:cpuacct:/docker/${id}\n8:memory:/docker/${id}\n1:name=systemd:/docker/${id}\n0::/docker/${id}`,
      [`/sys/fs/cgroup/cpuacct/docker/${id}/cpuacct.usage`, `/sys/fs/cgroup/memory/docker/${id}/memory.usage_in_bytes`],
      { version: 1, cpu: `/sys/fs/cgroup/cpuacct/docker/${id}/cpuacct.usage`, memory: `/sys/fs/cgroup/memory/docker/${id}/memory.usage_in_bytes`, memoryStat: `/sys/fs/cgroup/memory/docker/${id}/memory.stat` }],
    ['v1, systemd driver, cpu and cpuacct mounted together', combinedV1,
      `4:cpu,cpuacct:/system.slice/docker-${id}.scope\n3:memory:/system.slice/docker-${id}.scope`,
      [`/sys/fs/cgroup/cpu,cpuacct/system.slice/docker-${id}.scope/cpuacct.usage`, `/sys/fs/cgroup/memory/system.slice/docker-${id}.scope/memory.usage_in_bytes`],
      { version: 1, cpu: `/sys/fs/cgroup/cpu,cpuacct/system.slice/docker-${id}.scope/cpuacct.usage`, memory: `/sys/fs/cgroup/memory/system.slice/docker-${id}.scope/memory.usage_in_bytes`, memoryStat: `/sys/fs/cgroup/memory/system.slice/docker-${id}.scope/memory.stat` }],
    ['v2, systemd driver', v2, `0::/system.slice/docker-${id}.scope`,
      [`/sys/fs/cgroup/system.slice/docker-${id}.scope/cpu.stat`, `/sys/fs/cgroup/system.slice/docker-${id}.scope/memory.current`],
      { version: 2, cpu: `/sys/fs/cgroup/system.slice/docker-${id}.scope/cpu.stat`, memory: `/sys/fs/cgroup/system.slice/docker-${id}.scope/memory.current`, memoryStat: `/sys/fs/cgroup/system.slice/docker-${id}.scope/memory.stat` }],
    ['v2 seen from a cgroup namespace (the mount shows a subtree)', '28 22 0:26 /kubepods/agent /sys/fs/cgroup rw - cgroup2 cgroup2 rw',
      `0::/kubepods/agent/docker/${id}`, [`/sys/fs/cgroup/docker/${id}/cpu.stat`, `/sys/fs/cgroup/docker/${id}/memory.current`],
      { version: 2, cpu: `/sys/fs/cgroup/docker/${id}/cpu.stat`, memory: `/sys/fs/cgroup/docker/${id}/memory.current`, memoryStat: `/sys/fs/cgroup/docker/${id}/memory.stat` }],
    ['a hybrid host whose unified hierarchy holds no controllers and no v1 files: not found', hybridV1, `0::/docker/${id}`, [], undefined],
    ['a path outside what the mount shows: not found', '28 22 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw', `0::/docker/${id}`, [], undefined],
    ['the files gone (the container exited): not found', v2, `0::/docker/${id}`, [], undefined],
  ];
  for (const [name, mountinfo, procCgroup, present, want] of cases) {
    it(`finds the files: ${name}`, () => {
      expect(cgroupFiles(procCgroup, parseCgroupMounts(mountinfo), (p) => present.includes(p))).to.deep.equal(want);
    });
  }

  it('reads CPU time in ns and the working set (usage less inactive file pages), v1 and v2', () => {
    const v1Files = { version: 1 as const, cpu: 'cpu', memory: 'mem', memoryStat: 'stat' };
    const v1Text: Record<string, string> = { cpu: '123456789\n', mem: '10485760\n', stat: 'cache 4194304\ninactive_file 1048576\ntotal_cache 4194304\ntotal_inactive_file 2097152\n' };
    expect(readCgroupSample(v1Files, (p) => v1Text[p])).to.deep.equal({ cpuNs: 123456789, memoryBytes: 10485760 - 2097152 });
    const v2Files = { version: 2 as const, cpu: 'cpu', memory: 'mem', memoryStat: 'stat' };
    const v2Text: Record<string, string> = { cpu: 'usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n', mem: '8388608\n', stat: 'anon 1000\nfile 9000\ninactive_file 9999999999\n' };
    expect(readCgroupSample(v2Files, (p) => v2Text[p])).to.deep.equal({ cpuNs: 5_000_000, memoryBytes: 0 });
    expect(() => readCgroupSample(v2Files, (p) => (p === 'cpu' ? 'user_usec 1\n' : v2Text[p]))).to.throw(/unreadable cgroup figures/);
  });

  it('reports memory in MiB, rounded, and at least 1 for any use (a busybox httpd\'s ~300 KiB is not "no figure")', () => {
    expect([0, -4096, 300 * 1024, 1024 * 1024, 1.4 * 1024 * 1024, 1.6 * 1024 * 1024, 512 * 1024 * 1024].map(usedMib)).to.deep.equal([0, 0, 1, 1, 1, 2, 512]);
  });
});
