// Where a job's CPU goes: the jobs benchmark's 4-stage chain at 64 in flight, with each
// process's CPU time (utime + stime from /proc/<pid>/stat) divided by the jobs done, and the
// machine's idle share (/proc/stat), for Tessera (leader, agent, the four component containers,
// etcd, the client) and, in the same rounds, for the peer (Moleculer's client and four services).
// Tessera runs twice a round: jobs over a SubmitJobs stream (the leader relays each one to the
// agent) and direct jobs (this client runs each one straight to the agent along routes the leader
// leases it, Admin.DirectJobs, while the leader records it).
// What the rate is made of: rate = cores x (1 - idle) / CPU per job; the gap to the peer is the
// CPU per job and the idle time (the convoy), and this says how much of each.
//
//   node dist/scripts/bench/jobs-cpu.js [--seconds 10] [--rounds 3] [--inflight 64] [--warm-seconds 10]
import * as fs from 'node:fs';
import * as os from 'node:os';
import { execSync } from 'node:child_process';
import { AdminClient } from '../../common/admin-client';
import { table } from '../../common/table';
import { EtcdCluster } from '../../test/helpers/etcd';
import { Fleet } from '../../test/helpers/processes';
import { waitForLeader } from '../../test/helpers/cluster';
import { waitFor } from '../../test/helpers/ports';
import { removeContainers } from '../../test/helpers/docker';
import { fmt, median, processCpuUs, progress } from './stats';
import { moleculer } from './peer-moleculer';

const args = process.argv.slice(2);
const arg = (n: string, d: number) => (args.includes(`--${n}`) ? Number(args[args.indexOf(`--${n}`) + 1]) : d);
const SECONDS = arg('seconds', 10);
const ROUNDS = arg('rounds', 3);
const INFLIGHT = arg('inflight', 64);
const WARM_S = arg('warm-seconds', 10);
const IMAGE = 'tessera/components:local';
const QUIET = { TESSERA_LOG_LEVEL: 'warn' };

const cpuUs = processCpuUs;
function machine(): { idle: number; all: number } {
  const l = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number);
  return { idle: l[3] + l[4], all: l.reduce((a, b) => a + b, 0) };
}

interface Sample { rate: number; perJob: Record<string, number>; total: number; idlePct: number }

/** Runs `one` from INFLIGHT loops for SECONDS and reads every group's CPU around it. */
async function measure(groups: Record<string, number[]>, one: () => Promise<boolean>, seconds = SECONDS): Promise<Sample> {
  const read = () => Object.fromEntries(Object.entries(groups).map(([k, pids]) => [k, pids.reduce((a, p) => a + cpuUs(p), 0)]));
  const before = read();
  const m0 = machine();
  const t0 = performance.now();
  let n = 0;
  const end = Date.now() + seconds * 1000;
  await Promise.all(Array.from({ length: INFLIGHT }, async () => {
    while (Date.now() < end) if (await one().catch(() => false)) n++;
  }));
  const secs = (performance.now() - t0) / 1000;
  const m1 = machine();
  const after = read();
  const perJob = Object.fromEntries(Object.keys(groups).map((k) => [k, (after[k] - before[k]) / Math.max(1, n)]));
  return { rate: n / secs, perJob, total: Object.values(perJob).reduce((a, b) => a + b, 0), idlePct: ((m1.idle - m0.idle) / (m1.all - m0.all)) * 100 };
}

async function main(): Promise<void> {
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  let mol: Awaited<ReturnType<typeof moleculer>> | undefined;
  try {
    progress('starting etcd, a coordinator, an agent and the four components');
    const c = await fleet.coordinator({ etcd: etcd.endpoints, id: 'cpu', extra: ['--reconcile-interval-ms', '200', '--job-max-in-flight-per-instance', '256'], env: QUIET });
    await waitForLeader([c.address]);
    const agent = fleet.agent({ coordinators: [c.address], nodeId: 'bench-node', extra: ['--port-range', '27000-27999', '--cpu-millis', '64000'], env: QUIET });
    const admin = new AdminClient([c.address], { timeoutMs: 30_000 });
    await waitFor('the node READY', async () => (await admin.listNodes()).nodes.length === 1, 20_000);
    const comp = (i: number) => ({
      name: `t${i}`, kind: `t${i}`, image: IMAGE, command: ['node', '/app/echo.js'], env: { KIND: `t${i}` }, ports: [{ name: 'grpc' }],
      health: { type: 'tcp', port: 'grpc', intervalMs: 1000, timeoutMs: 500, graceMs: 5000 }, resources: { cpuMillis: 1000, memoryMib: 64 }, instances: 1, stopGraceMs: 1000,
    });
    await admin.applyApp({ name: 'jobbench', components: [1, 2, 3, 4].map(comp) });
    await admin.applyPipeline({ name: 'chain4', stages: [1, 2, 3, 4].map((i) => ({ name: `s${i}`, kind: `t${i}` })) });
    await waitFor('4 instances registered', async () => (await admin.listComponents()).instances.length === 4, 120_000, 500);
    // Each container's processes (its init and node) as the host sees them.
    const roots = execSync("docker ps -q --filter label=tessera.app=jobbench | xargs docker inspect -f '{{.State.Pid}}'").toString().trim().split('\n').map(Number);
    const comps = roots.flatMap((p) => {
      try {
        return [p, ...execSync(`pgrep -P ${p}`).toString().trim().split('\n').map(Number)];
      } catch {
        return [p];
      }
    });
    const etcdPid = etcd.members[0].proc!.pid!;
    const client = new AdminClient([c.address]);
    const stream = client.jobStream();
    const payload = Buffer.from('{"hello":"tessera"}');
    const tessera = () => stream.submit({ pipeline: 'chain4', payload, wait: true, timeoutMs: 10_000, view: 'JOB_VIEW_BASIC' }).then((j) => j.state === 'JOB_STATE_SUCCEEDED');
    const tGroups = { leader: [c.pid!], agent: [agent.pid!], components: comps, etcd: [etcdPid], client: [process.pid] };
    const directJobs = client.directJobs();
    const direct = () => directJobs.submit({ pipeline: 'chain4', payload, wait: true, timeoutMs: 10_000, view: 'JOB_VIEW_BASIC' }).then((j) => j.state === 'JOB_STATE_SUCCEEDED');

    progress('starting the peer');
    mol = await moleculer();
    const peer = () => mol!.call({ hello: 'tessera' }).then(() => true);
    const pGroups = { client: [process.pid], services: mol.pids };

    progress(`warming both up (${WARM_S} s each at ${INFLIGHT} in flight)`);
    await measure(tGroups, tessera, WARM_S);
    await measure(pGroups, peer, WARM_S);
    await measure(tGroups, direct, WARM_S);
    const d: Sample[] = [];
    const t: Sample[] = [];
    const p: Sample[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      progress(`round ${r + 1} of ${ROUNDS}: Tessera, the peer, then Tessera direct (${SECONDS} s each)`);
      t.push(await measure(tGroups, tessera));
      p.push(await measure(pGroups, peer));
      d.push(await measure(tGroups, direct));
    }
    stream.close();
    console.log(`direct: ${JSON.stringify(directJobs.counts)}`);
    directJobs.close();
    client.close();
    admin.close();

    const med = (xs: Sample[], f: (s: Sample) => number) => median(xs.map(f));
    const us = (xs: Sample[], k: string) => fmt(med(xs, (s) => s.perJob[k]), 0);
    console.log(`\nCPU per job at ${INFLIGHT} in flight, the jobs benchmark's 4-stage chain (${os.cpus().length} cores, ${os.cpus()[0]?.model ?? ''}); medians of ${ROUNDS} rounds of ${SECONDS} s, taking turns`);
    console.log(table(['', 'JOBS/S', 'LEADER US', 'AGENT US', 'COMPONENTS US', 'ETCD US', 'CLIENT US', 'CPU US/JOB', 'IDLE %'], [
      ['Tessera', fmt(med(t, (s) => s.rate)), us(t, 'leader'), us(t, 'agent'), us(t, 'components'), us(t, 'etcd'), us(t, 'client'), fmt(med(t, (s) => s.total)), fmt(med(t, (s) => s.idlePct))],
      ['Tessera (direct)', fmt(med(d, (s) => s.rate)), us(d, 'leader'), us(d, 'agent'), us(d, 'components'), us(d, 'etcd'), us(d, 'client'), fmt(med(d, (s) => s.total)), fmt(med(d, (s) => s.idlePct))],
      ['Moleculer', fmt(med(p, (s) => s.rate)), '-', '-', us(p, 'services'), '-', us(p, 'client'), fmt(med(p, (s) => s.total)), fmt(med(p, (s) => s.idlePct))],
      ['ratio', fmt(med(t, (s) => s.rate) / med(p, (s) => s.rate), 2), '', '', '', '', '', fmt(med(t, (s) => s.total) / med(p, (s) => s.total), 2), ''],
      ['ratio (direct)', fmt(med(d, (s) => s.rate) / med(p, (s) => s.rate), 2), '', '', '', '', '', fmt(med(d, (s) => s.total) / med(p, (s) => s.total), 2), ''],
    ]));
    console.log('(the components row holds the peer\'s four services; CPU is counted in 10 ms ticks, so a few us per job is noise)');
  } finally {
    await mol?.stop();
    await fleet.stop();
    removeContainers('tessera.app=jobbench');
    await etcd.stop();
  }
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
