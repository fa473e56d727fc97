// Jobs through pipelines: throughput and routing overhead against Moleculer, and balancing
// quality with a slow instance, all in one run on this machine.
//
//   throughput  a 4-stage pipeline of trivial components (tessera/components:local, echo.js, one
//               container per stage), jobs submitted with wait=true over a SubmitJobs stream to
//               the leader at 1, 16 and 64 in flight,
//               every job recorded (group commit) before it is acknowledged and when it ends.
//               Three flows: chain (the leader relays each job to the agents, which pass it agent to
//               agent), direct (this client runs each job straight to the agents along routes
//               the leader leases it, Admin.DirectJobs, while the leader records it), and
//               per-stage (each hop through the leader).
//   overhead    per stage: (Tessera job latency - the same 4 calls made directly) / 4
//   peer        the same chain in Moleculer 0.14.36: TCP transporter, static peers on 127.0.0.1,
//               UDP discovery off, one service per process, the client calling the stages in turn
//   balancing   4 instances per stage, one 10x slower; p99 job latency with the pipeline's routing
//               set to round robin, least-loaded and path cost (the default), and with path cost
//               and direct jobs (leased routes), against path cost with the slow instances
//               excluded by a version pin (the no-fault p99)
//
// This machine's speed drifts by tens of percent within minutes (a shared host), so Tessera and
// the peer take turns: each round runs Tessera at a level and then the peer at the same level,
// the ratio is taken within the round, and the table gives medians over the rounds (and the
// range of the rates). The direct calls take turns with Tessera at 1 in flight the same way.
//
// Each flow starts with every process warmed up at 64 in flight (--warm-seconds, 8 each), and
// each level's rounds start with Tessera, the peer (and at 1 in flight the direct calls) warmed
// up at that level as long again: the rounds measure optimised code, not V8's interpreter. A
// 64-in-flight warm-up optimises the per-job code but runs the per-message code (streams, http2,
// grpc-js: one message carries 64 jobs) too rarely; after it Tessera at 1 in flight still sped up
// from ~125 to ~210 jobs/s over 15 s.
//
//   node dist/scripts/bench/jobs.js [--seconds 5] [--rounds 3] [--base-ms 5] [--warm-seconds 8] [--balancing-only]
import * as os from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { StepRunner } from '../../common/relay';
import { table } from '../../common/table';
import { EtcdCluster } from '../../test/helpers/etcd';
import { Fleet } from '../../test/helpers/processes';
import { waitForLeader } from '../../test/helpers/cluster';
import { waitFor } from '../../test/helpers/ports';
import { removeContainers } from '../../test/helpers/docker';
import { fmt, median, p99, progress } from './stats';
import { moleculer } from './peer-moleculer';

const args = process.argv.slice(2);
const arg = (n: string, d: number) => (args.includes(`--${n}`) ? Number(args[args.indexOf(`--${n}`) + 1]) : d);
const SECONDS = arg('seconds', 5);
const ROUNDS = arg('rounds', 3);
const BASE_MS = arg('base-ms', 5);
const WARM_S = arg('warm-seconds', 8);
const LEVELS = [1, 16, 64];
const IMAGE = 'tessera/components:local';
const QUIET = { TESSERA_LOG_LEVEL: 'warn' };

interface Run { rate: number; p50: number; p99: number; n: number; failed: number; lat: number[] }

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
  return { rate: lat.length / s, p50: median(lat), p99: p99(lat), n: lat.length, failed, lat };
}

/** Several runs as one row: rates by median (and their range), latencies pooled. */
interface Rounds { rate: number; min: number; max: number; p50: number; p99: number; failed: number }
function pool(runs: Run[]): Rounds {
  const lat = runs.flatMap((r) => r.lat);
  const rates = runs.map((r) => r.rate);
  return { rate: median(rates), min: Math.min(...rates), max: Math.max(...rates), p50: median(lat), p99: p99(lat), failed: runs.reduce((n, r) => n + r.failed, 0) };
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

async function main(): Promise<void> {
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  const runner = new StepRunner({ selfNodeId: '', relayCredentials: grpc.credentials.createInsecure(), chain: true });
  const rows: (string | number)[][] = [];
  const bal: (string | number)[][] = [];
  let mol: Awaited<ReturnType<typeof moleculer>> | undefined;
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
    // Jobs go over one SubmitJobs stream to the leader (as a high-rate client would send them).
    let stream = new AdminClient([c1.address]).jobStream();
    // The direct flow: jobs run by this client along routes the leader leases it (Admin.DirectJobs).
    const directJobs = new AdminClient([c1.address]).directJobs();
    let via: { submit: typeof stream.submit } = stream;
    const submit = (pipeline: string) => via.submit({ pipeline, payload, wait: true, timeoutMs: 10_000, view: 'JOB_VIEW_BASIC' }).then((j) => j.state === 'JOB_STATE_SUCCEEDED');

    progress('Moleculer 0.14.36 peer: 4 service processes, TCP transporter');
    const peerChain = await moleculer();
    mol = peerChain;
    const molecule = () => peerChain.call({ hello: 'tessera' }).then(() => true);
    // Per flow and level: a Tessera run and a peer run per round; at 1 in flight also the direct calls.
    const tess: Record<string, Run[]> = {};
    const peer: Record<string, Run[]> = {};
    const floor: Record<string, Run[]> = {};
    const rounds = async (flow: string): Promise<void> => {
      // Every process warm before the first round: V8 optimises a function after thousands of
      // calls, and at 1 in flight (about 100 jobs/s here at first) the 2 s warm-up of a run left
      // Tessera's six processes half interpreted (their rate rose 2-3x over the first 40 s). The
      // peer and the direct calls get the same.
      progress(`warming up: Tessera ${flow} flow, the peer and the direct calls, ${WARM_S} s each at 64 in flight`);
      await load(64, WARM_S, () => submit('chain4'));
      await load(64, WARM_S, molecule);
      await load(64, WARM_S, () => direct(tEps));
      for (const n of LEVELS) {
        const key = `${flow}-${n}`;
        tess[key] = [];
        peer[key] = [];
        floor[key] = [];
        progress(`warming up at ${n} in flight: Tessera ${flow} flow, the peer${n === 1 ? ' and the direct calls' : ''}, ${WARM_S} s each`);
        await load(n, WARM_S, () => submit('chain4'));
        await load(n, WARM_S, molecule);
        if (n === 1) await load(1, WARM_S, () => direct(tEps));
        for (let r = 1; r <= ROUNDS; r++) {
          if (n === 1) {
            progress(`direct calls (4 stages, 1 in flight), round ${r}/${ROUNDS}`);
            floor[key].push(await load(1, SECONDS, () => direct(tEps)));
          }
          progress(`Tessera ${flow} flow, ${n} in flight, round ${r}/${ROUNDS}`);
          tess[key].push(await load(n, SECONDS, () => submit('chain4')));
          progress(`Moleculer, ${n} in flight, round ${r}/${ROUNDS}`);
          peer[key].push(await load(n, SECONDS, molecule));
        }
      }
    };
    const balancingOnly = args.includes('--balancing-only');
    if (!balancingOnly) {
      await rounds('chain');
      via = directJobs;
      await rounds('direct');
      via = stream;
    }

    // Balancing: the same jobs routed round robin, least-loaded and by path cost (a pipeline's
    // routing setting), against path cost with the slow instances pinned out (the no-fault p99).
    const BAL_N = 16;
    // The four take turns for ROUNDS rounds; each row pools its rounds' latencies.
    // And path cost with direct jobs: the client goes round robin over the routes its lease holds
    // (the path cost's best few, each planned with the ones before it counted as load).
    const balRuns: Record<string, Run[]> = { 'bal-nofault': [], 'bal-round-robin': [], 'bal-least-loaded': [], bal: [], 'bal-direct': [] };
    const directSubmit = () => directJobs.submit({ pipeline: 'bal', payload, wait: true, timeoutMs: 10_000, view: 'JOB_VIEW_BASIC' }).then((j) => j.state === 'JOB_STATE_SUCCEEDED');
    for (let r = 1; r <= ROUNDS; r++) {
      for (const name of Object.keys(balRuns)) {
        progress(`balancing: ${name}, round ${r}/${ROUNDS}`);
        balRuns[name].push(await load(BAL_N, SECONDS, name === 'bal-direct' ? directSubmit : () => submit(name)));
      }
    }
    directJobs.close();
    const [noFault, rrRun, llRun, tRun, dRun] = Object.values(balRuns).map(pool);
    bal.push(['path cost, slow instances pinned out (no fault)', fmt(noFault.p50, 1), fmt(noFault.p99, 1), '1.00', fmt(noFault.rate)]);
    for (const [name, r] of [['round robin', rrRun], ['least-loaded', llRun], ['path cost (Tessera default)', tRun], ['path cost, direct jobs (leased routes)', dRun]] as const) {
      bal.push([name, fmt(r.p50, 1), fmt(r.p99, 1), (r.p99 / noFault.p99).toFixed(2), fmt(r.rate)]);
    }

    if (balancingOnly) {
      console.log(`\nBalancing: 4 instances per stage, one 10x slower (${BASE_MS * 10} ms vs ${BASE_MS} ms per step), ${BAL_N} in flight, ${ROUNDS} rounds of ${SECONDS} s taking turns, latencies pooled`);
      console.log(table(['ROUTING', 'P50 MS', 'P99 MS', 'P99 VS NO FAULT', 'JOBS/S'], bal));
      return;
    }
    progress('per-stage flow: stopping the chain coordinator; the per-stage one leads');
    await c1.kill('SIGTERM');
    await waitForLeader([c2.address]);
    await waitFor('instances registered with the new leader', async () => (await admin.listComponents()).instances.length === 20, 60_000, 500);
    stream.close();
    stream = new AdminClient([c2.address]).jobStream();
    via = stream;
    await rounds('per-stage');

    const range = (r: Rounds): string => `${fmt(r.min)}-${fmt(r.max)}`;
    for (const n of LEVELS) {
      for (const flow of ['chain', 'direct', 'per-stage']) {
        const key = `${flow}-${n}`;
        const t = pool(tess[key]);
        const ratios = tess[key].map((run, i) => run.rate / peer[key][i].rate);
        rows.push([`${n}`, `Tessera (${flow})`, fmt(t.rate), range(t), fmt(t.p50, 2), fmt(t.p99, 2), median(ratios).toFixed(2), t.failed]);
      }
      const m = pool([...peer[`chain-${n}`], ...peer[`direct-${n}`], ...peer[`per-stage-${n}`]]);
      rows.push([`${n}`, 'Moleculer 0.14.36 (peer)', fmt(m.rate), range(m), fmt(m.p50, 2), fmt(m.p99, 2), '1.00', m.failed]);
    }
    // Routing overhead per stage: Tessera's latency less the direct calls' of the same round, over 4 stages.
    const overhead = (flow: string, q: (xs: number[]) => number): number =>
      median(tess[`${flow}-1`].map((run, i) => (q(run.lat) - q(floor[`${flow}-1`][i].lat)) / 4));
    const direct1 = pool([...floor['chain-1'], ...floor['direct-1'], ...floor['per-stage-1']]);
    console.log(`\nJobs through a 4-stage pipeline of trivial components (${os.cpus().length} cores, ${os.cpus()[0]?.model ?? ''}), ${ROUNDS} rounds of ${SECONDS} s per row, Tessera and the peer taking turns`);
    console.log('every Tessera job\'s start recorded in etcd (group commit, fsynced) before it is answered; its end recorded after the answer, with the next transaction');
    console.log('JOBS/S is the median over the rounds, RANGE the lowest and highest, RATE VS PEER the median of each round\'s ratio');
    console.log(table(['IN FLIGHT', 'SYSTEM', 'JOBS/S', 'RANGE', 'P50 MS', 'P99 MS', 'RATE VS PEER', 'FAILED'], rows));
    console.log(`\nRouting overhead per stage at 1 in flight, against the same 4 calls made directly in the same round (direct: p50 ${fmt(direct1.p50, 2)} ms, p99 ${fmt(direct1.p99, 2)} ms per chain)`);
    console.log(table(['FLOW', 'P50 MS/STAGE', 'P99 MS/STAGE'], [
      ['chain', fmt(overhead('chain', median), 3), fmt(overhead('chain', p99), 3)],
      ['direct', fmt(overhead('direct', median), 3), fmt(overhead('direct', p99), 3)],
      ['per-stage', fmt(overhead('per-stage', median), 3), fmt(overhead('per-stage', p99), 3)],
    ]));
    console.log(`\nBalancing: 4 instances per stage, one 10x slower (${BASE_MS * 10} ms vs ${BASE_MS} ms per step), ${BAL_N} in flight, ${ROUNDS} rounds of ${SECONDS} s taking turns, latencies pooled`);
    console.log(table(['ROUTING', 'P50 MS', 'P99 MS', 'P99 VS NO FAULT', 'JOBS/S'], bal));
    admin.close();
  } finally {
    await mol?.stop();
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
