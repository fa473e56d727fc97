// Test lanes: `scripts/test.sh` runs the integration files in two processes at once (mocha
// --parallel --jobs 2). They share one Docker Engine and the host's network (containers use host
// networking), so each process claims a lane for its life and keeps to it:
//  - lane 0 uses the host ports the files name (24000-31999) and the agent's default range
//    (20000-32000); lane 1 the same ranges 13000 lower (11000-18999) and 19000-19999 by default;
//  - freePort() takes ports from 3000-6999 in lane 0 and 8000-10999 in lane 1;
//  - the agents a Fleet names itself are n1, n2, ... in lane 0 and l1n1, l1n2, ... in lane 1, so
//    that no two agents at once list (and adopt or stop) containers under one node label.
// A file that names its node ids or apps keeps them unique across the files (the Docker labels
// `tessera.node` and `tessera.app` are what the tests and agents filter on). A run of one
// process (mocha without --parallel) is lane 0: what every file did before lanes.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const LANES = 2;
const SHIFT = -13_000;
let claimed: number | undefined;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** This process's lane: claimed once through an exclusive lock file, held until it exits. */
export function lane(): number {
  if (claimed !== undefined) return claimed;
  for (let k = 0; k < LANES; k++) {
    const file = path.join(os.tmpdir(), `tessera-test-lane-${k}.lock`);
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
    } catch {
      let owner = 0;
      try {
        owner = Number(fs.readFileSync(file, 'utf8').trim());
      } catch {
        /* gone meanwhile: try again */
      }
      if (owner === process.pid) return (claimed = k);
      if (owner > 0 && alive(owner)) continue;
      fs.rmSync(file, { force: true }); // left by a process that is gone
      k--;
      continue;
    }
    process.once('exit', () => fs.rmSync(file, { force: true }));
    return (claimed = k);
  }
  throw new Error(`all ${LANES} test lanes are held by live processes (${os.tmpdir()}/tessera-test-lane-*.lock)`);
}

/** A host port range ("START-END") a file names, moved into this process's lane. */
export function laneRange(range: string): string {
  const m = /^(\d+)-(\d+)$/.exec(range);
  if (!m) throw new Error(`not a port range: ${range}`);
  const d = lane() * SHIFT;
  return `${Number(m[1]) + d}-${Number(m[2]) + d}`;
}

/** A port a file names (one in a range it gave laneRange), moved the same way. */
export function lanePort(port: number): number {
  return port + lane() * SHIFT;
}

/** The --port-range of an agent whose file names none (the agent's own default in lane 0). */
export function laneDefaultPortRange(): string | undefined {
  return lane() === 0 ? undefined : '19000-19999';
}

/** The ports freePort() hands out in this lane: below the kernel's ephemeral range (32768 on). */
export function lanePortPool(): [number, number] {
  return lane() === 0 ? [3000, 6999] : [8000, 10999]; // not 7400-7499: Tessera's default ports
}

/** The prefix of the node ids a Fleet gives its agents. */
export function laneNodePrefix(): string {
  return lane() === 0 ? 'n' : `l${lane()}n`;
}
