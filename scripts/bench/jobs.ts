// Jobs through pipelines: throughput and routing overhead against Moleculer, and balancing
// quality with a slow instance, all in one run on this machine.
//
//   throughput  a 4-stage pipeline of trivial components (tessera/components:local, echo.js, one
//               container per stage), jobs submitted with wait=true over a SubmitJobs stream to
//               the leader at 1, 16 and 64 in flight,
//               every job recorded (group commit) before it is acknowledged and when it ends.
//               Both flows: chain (agent to agent) and per-stage (each hop through the leader).
//   overhead    per stage: (Tessera job latency - the same 4 calls made directly) / 4
//   peer        the same chain in Moleculer 0.14.36: TCP transporter, static peers on 127.0.0.1,
//               UDP discovery off, one service per process, the client calling the stages in turn
//   balancing   4 instances per stage, one 10x slower; p99 job latency with the pipeline's routing
//               set to round robin, least-loaded and path cost (the default), against path cost
//               with the slow instances excluded by a version pin (the no-fault p99)
//
//   node dist/scripts/bench/jobs.js [--seconds 8] [--base-ms 5] [--balancing-only]
import { fork, ChildProcess } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ServiceBroker } from 'moleculer';
import { AdminClient } from '../../common/admin-client';
import { StepRunner } from '../../common/relay';
import { table } from '../../common/table';
import { EtcdCluster } from '../../test/helpers/etcd';
import { Fleet } from '../../test/helpers/processes';
import { waitForLeader } from '../../test/helpers/cluster';
import { freePort, waitFor } from '../../test/helpers/ports';
import { removeContainers } from '../../test/helpers/docker';
import { fmt, median, p99, progress } from './stats';

const args = process.argv.slice(2);
const arg = (n: string, d: number) => (args.includes(`--${n}`) ? Number(args[args.indexOf(`--${n}`) + 1]) : d);
const SECONDS = arg('seconds', 8);
const BASE_MS = arg('base-ms', 5);
const LEVELS = [1, 16, 64];
const IMAGE = 'tessera/components:local';
const QUIET = { TESSERA_LOG_LEVEL: 'warn' };

interface Run { rate: number; p50: number; p99: number; n: number; failed: number }

/** Runs `one` from `inflight` loops for `seconds`; latency per call. */
async function load(inflight: number, seconds: number, one: () => Promise<boolean>): Promise<Run> {
  const lat: number[] = [];
  let failed = 0;
  // Warm up: connections, JIT, EWMAs.
  const warmEnd = Date.now() + 2_000;
  await Promise.all(Array.from({ length: inflight }, async () => { while (Date.now() < warmEnd) await one().catch(() => false); }));
  const end = Date.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: inflight }, async () => {
    while (Date.now() < end) {
      const t = performance.now();
      const ok = await one().catch(() => false);
      if (ok) lat.push(performance.now() - t); else failed++;
    }
  }));
  const s = (performance.now() - t0) / 1000;
  return { rate: lat.length / s, p50: median(lat), p99: p99(lat), n: lat.length, failed };
}

function app(): unknown {
  const comp = (name: string, kind: string, instances: number, env: Record<string, string>) => ({
    name, kind, image: IMAGE, command: ['node', '/app/echo.js'], env: { KIND: kind, ...env }, ports: [{ name: 'grpc' }],
    health: { type: 'tcp', port: 'grpc', intervalMs: 1000, timeoutMs: 500, graceMs: 5000 }, resources: { cpuMillis: 1000, memoryMib: 64 }, instances, stopGraceMs: 1000,
  });
  return {
    name: 'jobbench',
    components: [
      ...[1, 2, 3, 4].map((i) => comp(`t${i}`, `t${i}`, 1, {})),
      ...[1, 2, 3, 4].flatMap((i) => [
        comp(`b${i}`, `b${i}`, 3, { DELAY_MS: String(BASE_MS), COMPONENT_VERSION: '1.0.0' }),
        comp(`b${i}-slow`, `b${i}`, 1, { DELAY_MS: String(BASE_MS * 10), COMPONENT_VERSION: '1.1.0' }),
      ]),
    ],
  };
}

async function moleculer(): Promise<{ call: (p: unknown) => Promise<unknown>; stop: () => Promise<void> }> {
  const ports = await Promise.all([0, 1, 2, 3, 4].map(() => freePort()));
  const ids = ['client', 's1', 's2', 's3', 's4'];
  const peers = ids.map((id, i) => `${id}=${ports[i]}`).join(',');
  const children: ChildProcess[] = [];
  for (let i = 1; i <= 4; i++) {
    const child = fork(path.join(__dirname, 'moleculer-node.js'), [ids[i], String(ports[i]), `s${i}`, peers], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    children.push(child);
    await new Promise<void>((r) => child.once('message', () => r()));
  }
  const urls = peers.split(',').map((p) => { const [id, pt] = p.split('='); return `127.0.0.1:${pt}/${id}`; });
  const broker = new ServiceBroker({ nodeID: 'client', logger: false, transporter: { type: 'TCP', options: { udpDiscovery: false, port: ports[0], urls } } });
  await broker.start();
  await broker.waitForServices(['s1', 's2', 's3', 's4'], 20_000);
  return {
    call: async (p) => {
      let x = p;
      for (let i = 1; i <= 4; i++) x = await broker.call(`s${i}.echo`, x);
      return x;
    },
    stop: async () => {
      await broker.stop();
      for (const c of children) c.kill('SIGTERM');
    },
  };
}

async function main(): Promise<void> {
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  const runner = new StepRunner({ selfNodeId: '', relayCredentials: grpc.credentials.createInsecure(), chain: true });
  const rows: (string | number)[][] = [];
  const bal: (string | number)[][] = [];
  try {
    progress('starting etcd, two coordinators (chain and per-stage flow) and an agent');
    const common = ['--reconcile-interval-ms', '200', '--job-max-in-flight-per-instance', '256'];
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints, id: 'chain', extra: [...common, '--job-flow', 'chain'], env: QUIET });
    await waitForLeader([c1.address]);
    const c2 = await fleet.coordinator({ etcd: etcd.endpoints, id: 'per-stage', extra: [...common, '--job-flow', 'per-stage'], env: QUIET });
    fleet.agent({ coordinators: [c1.address, c2.address], nodeId: 'bench-node', extra: ['--port-range', '27000-27999', '--cpu-millis', '64000'], env: QUIET });
    const admin = new AdminClient([c1.address, c2.address], { timeoutMs: 30_000 });
    await waitFor('node ready', async () => (await admin.listNodes()).nodes.length === 1, 20_000);
    progress('deploying 20 component containers');
    await admin.applyApp(app());
    await admin.applyPipeline({ name: 'chain4', stages: [1, 2, 3, 4].map((i) => ({ name: `s${i}`, kind: `t${i}` })) });
    await admin.applyPipeline({ name: 'bal', stages: [1, 2, 3, 4].map((i) => ({ name: `s${i}`, kind: `b${i}` })) });
    await admin.applyPipeline({ name: 'bal-nofault', stages: [1, 2, 3, 4].map((i) => ({ name: `s${i}`, kind: `b${i}`, version: '1.0.x' })) });
    for (const routing of ['round-robin', 'least-loaded']) {
      await admin.applyPipeline({ name: `bal-${routing}`, routing, stages: [1, 2, 3, 4].map((i) => ({ name: `s${i}`, kind: `b${i}` })) });
    }
    await waitFor('20 instances registered', async () => (await admin.listComponents()).instances.length === 20, 180_000, 500);
    const comps = (await admin.listComponents()).instances;
    const endpoint = (kind: string) => comps.filter((c) => c.kind === kind).map((c) => c.endpoint);
    const payload = Buffer.from('{"hello":"tessera"}');

    // The same four calls, made directly by this process: the floor.
    const direct = (eps: string[]) => runner.run({
      jobId: 'direct', payload, headers: {}, deadlineMs: 0, attempt: 1, firstIndex: 0,
      route: eps.map((e, i) => ({ stage: `s${i}`, timeoutMs: 0, options: [{ kind: '', operation: '', instanceId: e, nodeId: '', endpoint: e, agentEndpoint: '', whenHeader: '' }] })),
    } as never).then((r) => r.ok);
    const tEps = [1, 2, 3, 4].map((i) => endpoint(`t${i}`)[0]);
    progress('direct calls (4 stages, 1 in flight)');
    const floor = await load(1, SECONDS, () => direct(tEps));
    // Jobs go over one SubmitJobs stream to the leader (as a high-rate client would send them).
    let stream = new AdminClient([c1.address]).jobStream();
    const submit = (pipeline: string) => stream.submit({ pipeline, payload, wait: true, timeoutMs: 10_000, view: 'JOB_VIEW_BASIC' }).then((j) => j.state === 'JOB_STATE_SUCCEEDED');

    const tess: Record<string, Run> = {};
    const balancingOnly = args.includes('--balancing-only');
    for (const n of balancingOnly ? [] : LEVELS) {
      progress(`Tessera chain flow, ${n} in flight`);
      tess[`chain-${n}`] = await load(n, SECONDS, () => submit('chain4'));
    }

    // Balancing: the same jobs routed round robin, least-loaded and by path cost (a pipeline's
    // routing setting), against path cost with the slow instances pinned out (the no-fault p99).
    const BAL_N = 16;
    progress(`balancing at ${BAL_N} in flight: no fault, round robin, least-loaded, path cost`);
    const noFault = await load(BAL_N, SECONDS, () => submit('bal-nofault'));
    const rrRun = await load(BAL_N, SECONDS, () => submit('bal-round-robin'));
    const llRun = await load(BAL_N, SECONDS, () => submit('bal-least-loaded'));
    const tRun = await load(BAL_N, SECONDS, () => submit('bal'));
    bal.push(['path cost, slow instances pinned out (no fault)', fmt(noFault.p50, 1), fmt(noFault.p99, 1), '1.00', fmt(noFault.rate)]);
    for (const [name, r] of [['round robin', rrRun], ['least-loaded', llRun], ['path cost (Tessera default)', tRun]] as const) {
      bal.push([name, fmt(r.p50, 1), fmt(r.p99, 1), (r.p99 / noFault.p99).toFixed(2), fmt(r.rate)]);
    }

    if (balancingOnly) {
      console.log(`\nBalancing: 4 instances per stage, one 10x slower (${BASE_MS * 10} ms vs ${BASE_MS} ms per step), ${BAL_N} in flight`);
      console.log(table(['ROUTING', 'P50 MS', 'P99 MS', 'P99 VS NO FAULT', 'JOBS/S'], bal));
      return;
    }
    progress('per-stage flow: stopping the chain coordinator; the per-stage one leads');
    await c1.kill('SIGTERM');
    await waitForLeader([c2.address]);
    await waitFor('instances registered with the new leader', async () => (await admin.listComponents()).instances.length === 20, 60_000, 500);
    stream.close();
    stream = new AdminClient([c2.address]).jobStream();
    for (const n of LEVELS) {
      progress(`Tessera per-stage flow, ${n} in flight`);
      tess[`per-stage-${n}`] = await load(n, SECONDS, () => submit('chain4'));
    }

    progress('Moleculer 0.14.36 peer: 4 service processes, TCP transporter');
    const mol = await moleculer();
    const peer: Record<number, Run> = {};
    for (const n of LEVELS) {
      progress(`Moleculer, ${n} in flight`);
      peer[n] = await load(n, SECONDS, () => mol.call({ hello: 'tessera' }).then(() => true));
    }
    await mol.stop();

    for (const n of LEVELS) {
      for (const flow of ['chain', 'per-stage']) {
        const t = tess[`${flow}-${n}`];
        rows.push([`${n}`, `Tessera (${flow})`, fmt(t.rate), fmt(t.p50, 2), fmt(t.p99, 2), (t.rate / peer[n].rate).toFixed(2), t.failed]);
      }
      rows.push([`${n}`, 'Moleculer 0.14.36 (peer)', fmt(peer[n].rate), fmt(peer[n].p50, 2), fmt(peer[n].p99, 2), '1.00', peer[n].failed]);
    }
    const c = tess['chain-1'];
    const ps = tess['per-stage-1'];
    console.log(`\nJobs through a 4-stage pipeline of trivial components (${os.cpus().length} cores, ${os.cpus()[0]?.model ?? ''}), ${SECONDS} s per row`);
    console.log('every Tessera job recorded in etcd (group commit, fsynced) before it is answered: once, at its end (jobs here take well under --job-record-after-ms)');
    console.log(table(['IN FLIGHT', 'SYSTEM', 'JOBS/S', 'P50 MS', 'P99 MS', 'RATE VS PEER', 'FAILED'], rows));
    console.log(`\nRouting overhead per stage at 1 in flight, against the same 4 calls made directly (direct: p50 ${fmt(floor.p50, 2)} ms, p99 ${fmt(floor.p99, 2)} ms per chain)`);
    console.log(table(['FLOW', 'P50 MS/STAGE', 'P99 MS/STAGE'], [
      ['chain', fmt((c.p50 - floor.p50) / 4, 3), fmt((c.p99 - floor.p99) / 4, 3)],
      ['per-stage', fmt((ps.p50 - floor.p50) / 4, 3), fmt((ps.p99 - floor.p99) / 4, 3)],
    ]));
    console.log(`\nBalancing: 4 instances per stage, one 10x slower (${BASE_MS * 10} ms vs ${BASE_MS} ms per step), ${BAL_N} in flight`);
    console.log(table(['ROUTING', 'P50 MS', 'P99 MS', 'P99 VS NO FAULT', 'JOBS/S'], bal));
    admin.close();
  } finally {
    runner.close();
    // The agent first: alive, it would start the containers again.
    await fleet.stop();
    removeContainers('tessera.app=jobbench');
    await etcd.stop();
  }
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
