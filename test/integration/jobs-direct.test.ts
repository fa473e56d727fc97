// Direct jobs (Admin.DirectJobs, common/direct-jobs.ts) end to end: real etcd, two coordinators,
// two agents, the example components in real containers. The client runs each job straight to
// the first hop's agent along a route the leader leased it; the leader records every start
// before the answer, the end after, and takes over what the client cannot finish.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { fork, ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { Etcd3 } from 'etcd3';
import { AdminClient } from '../../common/admin-client';
import { tesseraProto } from '../../common/proto';
import { NO_FORWARD_KEY } from '../../common/errors';
import { repoRoot } from '../../common/version';
import type { Job__Output } from '../../common/generated/tessera/v1/Job';
import type { DirectAnswer__Output } from '../../common/generated/tessera/v1/DirectAnswer';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { containerPid, containers, removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';
import { scrapeText } from '../helpers/scrape';

const RUN = randomBytes(3).toString('hex');
const IMAGE = 'tessera/components:local';
const TEXT = 'the cat and the dog and the bird saw the cat';
const EXPECTED = '11 words; top 5: the=4 and=2 cat=2 bird=1 dog=1';

const comp = (name: string, script: string, instances: number) => ({
  name, image: IMAGE, command: ['node', `/app/${script}.js`], env: {}, ports: [{ name: 'grpc' }], instances,
  health: { type: 'tcp', port: 'grpc', intervalMs: 500, timeoutMs: 400, graceMs: 5000 },
  resources: { cpuMillis: 50, memoryMib: 64 }, stopGraceMs: 3000,
});
const PIPELINE = {
  name: 'dwords', defaultTimeoutMs: 20_000,
  stages: [
    { name: 'split', kind: 'splitter', operation: 'split' },
    { name: 'count', kind: 'counter', operation: 'count' },
    { name: 'format', kind: 'formatter', operation: 'top' },
  ],
};

function code(err: unknown): string {
  return grpc.status[(err as grpc.ServiceError).code];
}

async function expectCode(p: Promise<unknown>, c: keyof typeof grpc.status, text?: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    expect(code(err), (err as Error).message).to.equal(c);
    if (text) expect((err as grpc.ServiceError).details).to.match(text);
    return;
  }
  throw new Error(`expected ${c}, the call succeeded`);
}

/** One DirectJobs stream spoken by hand (as grpcurl would): each call answered by call_id. */
function rawDirect(address: string): { call: (c: Record<string, unknown>) => Promise<DirectAnswer__Output>; stream: grpc.ClientDuplexStream<unknown, unknown>; close: () => void } {
  const client = new (tesseraProto().Admin)(address, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set(NO_FORWARD_KEY, '1');
  const stream = client.DirectJobs(md) as grpc.ClientDuplexStream<unknown, unknown>;
  const waiting = new Map<number, (a: DirectAnswer__Output) => void>();
  let next = 1;
  stream.on('data', (b: { answers: DirectAnswer__Output[] }) => {
    for (const a of b.answers) waiting.get(Number(a.callId))?.(a);
  });
  stream.on('error', () => {});
  return {
    stream,
    call: (c) => new Promise((resolve) => {
      const id = next++;
      waiting.set(id, resolve);
      stream.write({ calls: [{ ...c, callId: id }] });
    }),
    close: () => {
      stream.cancel();
      client.close();
    },
  };
}

describe('direct jobs: the client runs them along leased routes, the leader records them', function () {
  this.timeout(240_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let coords: Awaited<ReturnType<Fleet['coordinator']>>[];
  const nodes = [`d${RUN}a`, `d${RUN}b`];
  let slow: ChildProcess | undefined;
  let four: ChildProcess | undefined;
  let child: ChildProcess | undefined;
  const spare: ChildProcess[] = [];
  const metricsPorts: Record<string, number> = {};

  /** tessera_jobs_refused_total of a coordinator, by code. */
  const refusals = async (id: string): Promise<Record<string, number>> => {
    const text = await scrapeText(metricsPorts[id]);
    return Object.fromEntries([...text.matchAll(/^tessera_jobs_refused_total\{code="(\w+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
  };
  const leaderOf = async () => {
    const id = (await statusOf(coords[0].address))?.leader?.id ?? (await statusOf(coords[1].address))?.leader?.id;
    return coords.find((c) => c.id === id)!;
  };

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    coords = [];
    // directStartAck@dackp: a leader records the starts of pipeline dackp's direct jobs and never answers them.
    for (const id of ['d1', 'd2', 'd3']) {
      metricsPorts[id] = await freePort();
      coords.push(await fleet.coordinator({
        etcd: etcd.endpoints, id, extra: ['--reconcile-interval-ms', '200', '--metrics-listen', `127.0.0.1:${metricsPorts[id]}`], env: { TESSERA_FAILPOINTS: 'directStartAck@dackp=sleep(600000)' },
      }));
    }
    await waitForLeader(coords.map((c) => c.address), 30_000);
    const base = 25_000 + Math.floor(Math.random() * 40) * 100;
    nodes.forEach((n, i) => fleet.agent({ coordinators: coords.map((c) => c.address), nodeId: n, extra: ['--port-range', laneRange(`${base + i * 50}-${base + i * 50 + 49}`), '--cpu-millis', '8000'] }));
    admin = new AdminClient(coords.map((c) => c.address), { timeoutMs: 20_000 });
    await waitFor('two nodes', async () => (await admin.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 2, 20_000);
    await admin.applyApp({ name: 'dwords', components: [comp('splitter', 'splitter', 2), comp('counter', 'counter', 2), comp('formatter', 'formatter', 1)] });
    await admin.applyPipeline(PIPELINE);
    await waitFor('5 instances registered', async () => (await admin.listComponents()).instances.length === 5, 90_000, 300);
  });
  after(async () => {
    slow?.kill('SIGKILL');
    four?.kill('SIGKILL');
    child?.kill('SIGKILL');
    for (const p of spare) p.kill('SIGKILL');
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    for (const n of nodes) removeContainers(`tessera.node=${n}`);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  it('runs jobs straight to the agents and records each one: GetJob shows it with its path and steps', async () => {
    const direct = admin.directJobs();
    try {
      const jobs = await Promise.all(Array.from({ length: 24 }, () => direct.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true, view: 'JOB_VIEW_BASIC' })));
      expect(direct.counts).to.deep.include({ direct: 24, viaLeader: 0, takenOver: 0 });
      for (const j of jobs) {
        expect(j.state).to.equal('JOB_STATE_SUCCEEDED');
        expect(j.result.toString()).to.equal(EXPECTED);
        expect(j.flow).to.equal('direct');
      }
      // The leader has it (its end reported after the answer): flow direct, the leased path, a step per stage.
      const rec = await waitFor('the end recorded', async () => {
        const g = await admin.getJob(jobs[0].id);
        return g.state === 'JOB_STATE_SUCCEEDED' ? g : undefined;
      }, 10_000, 100);
      expect(rec.flow).to.equal('direct');
      expect(rec.path.map((h) => h.stage)).to.deep.equal(['split', 'count', 'format']);
      expect(rec.steps.map((s) => [s.stage, s.ok])).to.deep.equal([['split', true], ['count', true], ['format', true]]);
      expect(rec.steps.every((s) => nodes.includes(s.nodeId!))).to.equal(true);
      expect(rec.result.toString()).to.equal(EXPECTED);
      // ListJobs has them all.
      const listed = (await admin.listJobs({ pipeline: 'dwords', limit: 100 })).jobs.map((j) => j.id);
      for (const j of jobs) expect(listed).to.include(j.id);
    } finally {
      direct.close();
    }
  });

  it('close() sends the ends of answered jobs before the stream ends: the leader does not run them again', async () => {
    const direct = admin.directJobs();
    const jobs = await Promise.all(Array.from({ length: 8 }, () => direct.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true })));
    // At once, as a short-lived client does after its last answer.
    await direct.close();
    const recs = await waitFor('their ends recorded', async () => {
      const js = await Promise.all(jobs.map((j) => admin.getJob(j.id)));
      return js.every((j) => j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED') ? js : undefined;
    }, 15_000, 100);
    expect(recs.map((j) => [j.state, j.reason, j.plans])).to.deep.equal(jobs.map(() => ['JOB_STATE_SUCCEEDED', '', 1]));
  });

  it('refuses what a lease does not allow, with the field and the right status, and sends the rest through SubmitJobs', async () => {
    const direct = admin.directJobs();
    const leader = await leaderOf();
    const raw = rawDirect(leader.address);
    const refusedBefore = await refusals(leader.id!);
    try {
      await expectCode(direct.submit({ pipeline: 'nope', payload: Buffer.from('x'), wait: true }), 'NOT_FOUND', /nope/);
      await admin.applyPipeline({ name: 'dtiny', maxPayloadBytes: 16, stages: PIPELINE.stages });
      // Over the payload limit: the leader refuses it (through SubmitJobs), naming the field.
      await expectCode(direct.submit({ pipeline: 'dtiny', payload: Buffer.alloc(100), wait: true }), 'INVALID_ARGUMENT', /payload/);
      // A bad header name: refused (through SubmitJobs) before anything runs, naming it.
      const ranBefore = direct.counts.direct;
      await expectCode(direct.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true, headers: { 'bad name': 'x' } }), 'INVALID_ARGUMENT', /headers\.bad name/);
      expect(direct.counts.direct, 'not run directly').to.equal(ranBefore);
      // Jobs with an idempotency key go through SubmitJobs (the leader answers a resubmission with the same job).
      const keyed = await direct.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true, idempotencyKey: `k-${RUN}` });
      expect(keyed.flow).to.equal('chain');
      expect(direct.counts.viaLeader).to.be.greaterThan(0);
      // A pipeline whose stage has no healthy instance: no lease.
      await admin.applyPipeline({ name: 'dghost', stages: [{ name: 'x', kind: 'no-such-kind' }] });
      await expectCode(direct.submit({ pipeline: 'dghost', payload: Buffer.from('x'), wait: true }), 'UNAVAILABLE', /no-such-kind/);

      // By hand: a start needs this stream's lease, a route of it and a deadline to come.
      const none = await raw.call({ start: { jobId: 'j-1-abcdef1.0', pipeline: 'dwords', route: 0, deadlineMs: Date.now() + 10_000 } });
      expect([grpc.status[none.errorCode], none.error]).to.satisfy(([c, e]: [string, string]) => c === 'FAILED_PRECONDITION' && /no lease of this stream/.test(e));
      const granted = await raw.call({ lease: { pipeline: 'dwords' } });
      expect(granted.errorCode).to.equal(0);
      const l = granted.lease!;
      expect(l.routes.length).to.be.greaterThan(0);
      expect(l.routes[0].hops.map((h) => h.stage)).to.deep.equal(['split', 'count', 'format']);
      const badRoute = await raw.call({ start: { jobId: `${l.idPrefix}.0`, pipeline: 'dwords', route: 99, deadlineMs: Date.now() + 10_000 } });
      expect([grpc.status[badRoute.errorCode], badRoute.error]).to.satisfy(([c, e]: [string, string]) => c === 'INVALID_ARGUMENT' && /start\.route/.test(e));
      const past = await raw.call({ start: { jobId: `${l.idPrefix}.1`, pipeline: 'dwords', route: 0, deadlineMs: Date.now() - 1_000 } });
      expect([grpc.status[past.errorCode], past.error]).to.satisfy(([c, e]: [string, string]) => c === 'INVALID_ARGUMENT' && /start\.deadline_ms.*already past/.test(e));
      // The time left counts on the leader's clock: a client whose clock runs a minute behind is not refused.
      const skewed = await raw.call({ start: { jobId: `${l.idPrefix}.2`, pipeline: 'dwords', route: 0, payload: Buffer.from(TEXT), deadlineMs: Date.now() - 60_000, budgetMs: 8_000 } });
      expect(skewed.errorCode, skewed.error).to.equal(0);
      const sk = await admin.getJob(`${l.idPrefix}.2`);
      expect(Number(sk.deadlineMs) - Number(sk.submittedAtMs)).to.be.within(7_000, 8_000);
      const badBudget = await raw.call({ start: { jobId: `${l.idPrefix}.3`, pipeline: 'dwords', route: 0, deadlineMs: Date.now() + 10_000, budgetMs: -5 } });
      expect([grpc.status[badBudget.errorCode], badBudget.error]).to.satisfy(([c, e]: [string, string]) => c === 'INVALID_ARGUMENT' && /start\.budget_ms/.test(e));
      const badId = await raw.call({ start: { jobId: `${l.idPrefix}.NOT-B36`, pipeline: 'dwords', route: 0, deadlineMs: Date.now() + 10_000 } });
      expect([grpc.status[badId.errorCode], badId.error]).to.satisfy(([c, e]: [string, string]) => c === 'INVALID_ARGUMENT' && /start\.job_id/.test(e));
      // None of the refused starts became a job.
      for (const id of [`${l.idPrefix}.0`, `${l.idPrefix}.1`, `${l.idPrefix}.3`]) await expectCode(admin.getJob(id), 'NOT_FOUND');
      // Counted by code, as SubmitJobs' refusals are: the leases refused (NOT_FOUND, UNAVAILABLE),
      // the starts refused by hand (FAILED_PRECONDITION, INVALID_ARGUMENT x4) and those sent
      // through SubmitJobs (INVALID_ARGUMENT x2).
      const refused = await refusals(leader.id!);
      const delta = (code: string) => (refused[code] ?? 0) - (refusedBefore[code] ?? 0);
      expect(['NOT_FOUND', 'UNAVAILABLE', 'FAILED_PRECONDITION', 'INVALID_ARGUMENT'].map(delta)).to.deep.equal([1, 1, 1, 6]);
      // Broken bytes end the stream with INVALID_ARGUMENT.
      const Raw = grpc.makeGenericClientConstructor({
        DirectJobs: { path: '/tessera.v1.Admin/DirectJobs', requestStream: true, responseStream: true, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b },
      }, 'RawDirect');
      const bytes = new Raw(leader.address, grpc.credentials.createInsecure()) as unknown as { DirectJobs: (md: grpc.Metadata) => grpc.ClientDuplexStream<Buffer, Buffer>; close: () => void };
      const md = new grpc.Metadata();
      md.set(NO_FORWARD_KEY, '1');
      const garbage: grpc.ServiceError = await new Promise((resolve) => {
        const call = bytes.DirectJobs(md);
        call.on('error', resolve);
        call.on('data', () => {});
        call.write(Buffer.from([0xff, 0xff, 0xff])); // wire type 7 does not exist
      });
      bytes.close();
      expect(grpc.status[garbage.code]).to.equal('INVALID_ARGUMENT');
      expect(garbage.details).to.match(/malformed protobuf/);
    } finally {
      raw.close();
      direct.close();
    }
  });

  it('fails a direct job whose client reports no end, 5 s after its deadline, saying so', async () => {
    const leader = await leaderOf();
    const raw = rawDirect(leader.address);
    try {
      const l = (await raw.call({ lease: { pipeline: 'dwords' } })).lease!;
      const id = `${l.idPrefix}.7`;
      const started = await raw.call({ start: { jobId: id, pipeline: 'dwords', route: 0, payload: Buffer.from(TEXT), deadlineMs: Date.now() + 500 } });
      expect(started.errorCode, started.error).to.equal(0);
      // Recorded and running (this client runs it: the leader only waits for its end).
      expect((await admin.getJob(id)).state).to.equal('JOB_STATE_RUNNING');
      const j = await waitFor('failed for want of an end', async () => {
        const g = await admin.getJob(id);
        return g.state === 'JOB_STATE_FAILED' ? g : undefined;
      }, 15_000, 200);
      expect(j.reason).to.match(/deadline passed and its client reported no end/);
      // An end that comes after that changes nothing.
      const late = await raw.call({ end: { jobId: id, result: { ok: true, payload: Buffer.from('late'), hops: [] } } });
      // (or, its lease gone with its last job, refused as outside the stream's leases)
      expect([grpc.status.OK, grpc.status.FAILED_PRECONDITION], late.error).to.include(late.errorCode);
      expect((await admin.getJob(id)).state).to.equal('JOB_STATE_FAILED');
    } finally {
      raw.close();
    }
  });

  it('retries around an instance SIGKILLed under direct load: no job lost, the leader takes over the failed relays', async () => {
    const direct = admin.directJobs();
    try {
      const jobs: Job__Output[] = [];
      const errors: string[] = [];
      // The counters' processes, looked up before the load (a synchronous docker call stalls this process's submitters).
      const pids = new Map((await admin.listComponents('counter')).instances.map((i) => [i.instanceId, containerPid(containers(`tessera.instance=${i.instanceId}`).find((c) => c.state === 'running')!.id)]));
      let stop = false;
      const load = Promise.all(Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; !stop; i++) {
          try {
            jobs.push(await direct.submit({ pipeline: 'dwords', payload: Buffer.from(`${TEXT} ${w}-${i}`), wait: true, timeoutMs: 20_000 }));
          } catch (err) {
            errors.push((err as Error).message);
          }
        }
      }));
      await waitFor('jobs running', () => jobs.length >= 40, 30_000, 50);
      // The victim: the counter the leased routes use (the last job's path says which). The first
      // counter listed once met none: the path cost had put every route of the lease through the
      // other one (CI), so no relay failed and nothing was taken over.
      const used = (await admin.getJob(jobs[jobs.length - 1].id)).path.find((h) => h.stage === 'count')!.instanceId;
      process.kill(pids.get(used)!, 'SIGKILL');
      const at = jobs.length;
      await waitFor('jobs after the kill', () => jobs.length >= at + 80, 60_000, 50);
      stop = true;
      await load;
      expect(errors, errors.join('\n')).to.deep.equal([]);
      const failed = jobs.filter((j) => j.state !== 'JOB_STATE_SUCCEEDED');
      expect(failed.map((j) => `${j.id} ${j.state} ${j.reason}`)).to.deep.equal([]);
      // The relays that met the dead instance were taken over and re-planned by the leader.
      expect(direct.counts.takenOver).to.be.greaterThan(0);
      const retried = jobs.filter((j) => j.plans > 1);
      expect(retried.length).to.be.greaterThan(0);
      const shown = await admin.getJob(retried[0].id);
      expect(shown.steps.some((s) => !s.ok && s.stage === 'count')).to.equal(true);
      expect(shown.steps[shown.steps.length - 1].ok).to.equal(true);
      await waitFor('the counter replaced', async () => (await admin.listComponents()).instances.filter((i) => i.kind === 'counter' && i.state === 'routable').length === 2, 60_000, 300);
    } finally {
      direct.close();
    }
  });

  it('a client that goes away mid-job leaves its jobs to the leader, which runs them again', async () => {
    // A slow last stage (an external instance, 2 s a step) keeps the jobs in flight at the kill.
    const port = await freePort();
    slow = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(port), KIND: 'dslow', DELAY_MS: '2000' }, stdio: 'ignore' });
    await admin.registerComponent({ instanceId: `dslow-${RUN}`, kind: 'dslow', endpoint: `127.0.0.1:${port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: 'dslowp', stages: [{ name: 'split', kind: 'splitter' }, { name: 'slow', kind: 'dslow' }] });
    await waitFor('the slow stage answers', async () => (await admin.submitJob({ pipeline: 'dslowp', payload: Buffer.from('x'), wait: true }).catch(() => undefined))?.state === 'JOB_STATE_SUCCEEDED', 20_000, 200);
    child = fork(path.join(repoRoot(), 'dist/test/helpers/direct-client.js'), [], { env: { ...process.env, ADDRESSES: coords.map((c) => c.address).join(','), PIPELINE: 'dslowp', JOBS: '4' }, stdio: 'pipe' });
    const running = await waitFor('4 direct jobs running', async () => {
      const js = (await admin.listJobs({ pipeline: 'dslowp', state: 'JOB_STATE_RUNNING' })).jobs.filter((j) => j.flow === 'direct');
      return js.length === 4 ? js : undefined;
    }, 20_000, 100);
    child.kill('SIGKILL');
    const ended = await waitFor('the leader ran them again', async () => {
      const js = await Promise.all(running.map((j) => admin.getJob(j.id)));
      return js.every((j) => j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED') ? js : undefined;
    }, 30_000, 200);
    for (const j of ended) {
      expect(j.state, j.reason).to.equal('JOB_STATE_SUCCEEDED');
      expect(j.reason).to.match(/its client went away/);
      expect(j.result.toString()).to.match(/"job","\d"/);
    }
  });

  it('answers lost with the leader are asked for again: a recorded start and a taken-over job end as the next leader runs them; a start no leader recorded is not accepted', async () => {
    const echo = path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js');
    const leader = await leaderOf();
    const client = new AdminClient([leader.address, ...coords.filter((c) => c !== leader).map((c) => c.address)]);
    const direct = client.directJobs();
    const other = client.directJobs();
    try {
      // Pipeline dtkp's one stage: instance x (quick), and y (3 s a step), registered later.
      const [xPort, yPort] = [await freePort(), await freePort()];
      const x = fork(echo, [], { env: { ...process.env, PORT_GRPC: String(xPort), KIND: 'dtk' }, stdio: 'ignore' });
      const y = fork(echo, [], { env: { ...process.env, PORT_GRPC: String(yPort), KIND: 'dtk', DELAY_MS: '3000' }, stdio: 'ignore' });
      spare.push(x, y);
      await admin.registerComponent({ instanceId: `dtkx-${RUN}`, kind: 'dtk', endpoint: `127.0.0.1:${xPort}`, ttlMs: 120_000 });
      await admin.applyPipeline({ name: 'dtkp', defaultTimeoutMs: 30_000, stages: [{ name: 'one', kind: 'dtk' }] });
      await admin.applyPipeline({ ...PIPELINE, name: 'dackp', defaultTimeoutMs: 30_000 });
      await waitFor('x answers', async () => (await admin.submitJob({ pipeline: 'dtkp', payload: Buffer.from('x'), wait: true }).catch(() => undefined))?.state === 'JOB_STATE_SUCCEEDED', 20_000, 200);
      await waitFor('y listening', () => new Promise<boolean>((resolve) => {
        const sock = net.connect(yPort, '127.0.0.1', () => { sock.destroy(); resolve(true); }).on('error', () => resolve(false));
      }), 20_000, 100);
      // A lease for dtkp (its routes through x).
      expect((await direct.submit({ pipeline: 'dtkp', payload: Buffer.from('x'), wait: true })).flow).to.equal('direct');
      // x goes away while the lease still names it, and y comes: job C's relay fails at x, and the
      // leader takes it over (on y, 3 s).
      await admin.registerComponent({ instanceId: `dtky-${RUN}`, kind: 'dtk', endpoint: `127.0.0.1:${yPort}`, ttlMs: 120_000 });
      x.kill('SIGKILL');
      await admin.deregisterComponent(`dtkx-${RUN}`);
      const c = direct.submit({ pipeline: 'dtkp', payload: Buffer.from('c'), wait: true, timeoutMs: 30_000 });
      await waitFor('job C taken over by the leader', () => direct.counts.takenOver === 1, 5_000, 20);
      // Job A: the leader records its start and never answers it (the failpoint).
      const a = direct.submit({ pipeline: 'dackp', payload: Buffer.from(TEXT), wait: true, timeoutMs: 30_000 });
      const aId = await waitFor('job A running', async () => (await admin.listJobs({ pipeline: 'dackp', state: 'JOB_STATE_RUNNING' })).jobs[0]?.id, 10_000, 50);
      const e = new Etcd3({ hosts: etcd.endpoints });
      try {
        await waitFor('job A\'s start durable', async () => Object.values(await e.getAll().strings()).some((v) => v.includes(aId)), 10_000, 50);
      } finally {
        e.close();
      }
      // Job B (another client, its lease fresh): its start goes to a frozen leader, which never reads it.
      expect((await other.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true })).flow).to.equal('direct');
      leader.pause();
      const b = other.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true, timeoutMs: 30_000 }).then(() => undefined, (err: grpc.ServiceError) => err);
      await new Promise((r) => setTimeout(r, 300));
      await leader.kill('SIGKILL');
      const [aj, cj, bErr] = await Promise.all([a, c, b]);
      // A and C were recorded: the next leader ran them again from their start records, and the
      // client answered with how they ended there.
      expect([aj.id, aj.state], aj.reason).to.deep.equal([aId, 'JOB_STATE_SUCCEEDED']);
      expect(aj.reason).to.match(/resumed/);
      expect(aj.result.toString()).to.equal(EXPECTED);
      expect([cj.state, cj.result.toString()], cj.reason).to.deep.equal(['JOB_STATE_SUCCEEDED', 'c']);
      // B's start reached no leader: not accepted, and no coordinator knows it.
      expect(bErr, 'job B answered').to.not.equal(undefined);
      expect([grpc.status[bErr!.code]]).to.deep.equal(['UNAVAILABLE']);
      const bId = /^job (\S+) not accepted/.exec(bErr!.details)?.[1];
      expect(bId, bErr!.details).to.be.a('string');
      await expectCode(admin.getJob(bId!), 'NOT_FOUND');
    } finally {
      direct.close();
      other.close();
      client.close();
      // Back to three coordinators for the next test.
      if (!leader.running) leader.start();
    }
    await waitFor('the restarted coordinator follows', async () => (await statusOf(leader.address))?.leader?.id !== undefined, 30_000, 200);
  });

  it('a leader SIGKILLed while direct jobs run: every accepted job ends SUCCEEDED or FAILED, and the client goes on with the next leader', async () => {
    const leader = await leaderOf();
    const client = new AdminClient([leader.address, ...coords.filter((c) => c !== leader).map((c) => c.address)]);
    const direct = client.directJobs();
    const answered: Job__Output[] = [];
    let refused = 0;
    let stop = false;
    try {
      const load = Promise.all(Array.from({ length: 4 }, async (_, w) => {
        for (let i = 0; !stop; i++) {
          try {
            answered.push(await direct.submit({ pipeline: 'dslowp', payload: Buffer.from(`f ${w}-${i}`), wait: true, timeoutMs: 30_000 }));
          } catch {
            refused++; // not accepted (the leader went away before its start was recorded)
            await new Promise((r) => setTimeout(r, 200));
          }
        }
      }));
      await waitFor('some answered', () => answered.length >= 4, 30_000, 50);
      // A quick job and a 4 s one started in one turn share a start record: at the kill the quick
      // one has ended (the next leader must leave it be: its end is with its lease's) and the slow
      // one runs (the next leader must run it again).
      const fourPort = await freePort();
      four = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(fourPort), KIND: 'dfour', DELAY_MS: '4000' }, stdio: 'ignore' });
      await admin.registerComponent({ instanceId: `dfour-${RUN}`, kind: 'dfour', endpoint: `127.0.0.1:${fourPort}`, ttlMs: 120_000 });
      await admin.applyPipeline({ name: 'dfourp', stages: [{ name: 'slow', kind: 'dfour' }] });
      await waitFor('dfour listening', async () => (await admin.submitJob({ pipeline: 'dfourp', payload: Buffer.from('x'), wait: true }).catch(() => undefined))?.state === 'JOB_STATE_SUCCEEDED', 20_000, 200);
      // Fresh leases for both pipelines, so that the pair's starts go out in one turn.
      await direct.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true });
      void direct.submit({ pipeline: 'dfourp', payload: Buffer.from('lease'), wait: true, timeoutMs: 60_000 }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200));
      const quickOne = direct.submit({ pipeline: 'dwords', payload: Buffer.from(TEXT), wait: true });
      void direct.submit({ pipeline: 'dfourp', payload: Buffer.from('four'), wait: true, timeoutMs: 60_000 }).catch(() => undefined); // its answer is lost with the leader
      const quickJob = await quickOne;
      expect([quickJob.state, quickJob.flow]).to.deep.equal(['JOB_STATE_SUCCEEDED', 'direct']);
      // Direct jobs in flight now (2 s and 4 s each): accepted, their ends not reported yet.
      await new Promise((r) => setTimeout(r, 700));
      const inFlight = (await admin.listJobs({ pipeline: 'dslowp', state: 'JOB_STATE_RUNNING' })).jobs.filter((j) => j.flow === 'direct').map((j) => j.id);
      expect(inFlight.length).to.be.greaterThan(0);
      await leader.kill('SIGKILL');
      const other = coords.find((c) => c !== leader)!;
      await waitForLeader([other.address], 20_000);
      const before = direct.counts.direct;
      await waitFor('direct jobs answered under the new leader', () => direct.counts.direct >= before + 4 && answered.length >= 12, 60_000, 100);
      stop = true;
      await load;
      const all = await waitFor('every accepted job ended', async () => {
        const js = await Promise.all([...inFlight, ...answered.map((j) => j.id)].map((id) => admin.getJob(id).catch(() => undefined)));
        return js.every((j) => j && (j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED')) ? js as Job__Output[] : undefined;
      }, 60_000, 500);
      for (const j of all) expect(j.state, `${j.id}: ${j.reason}`).to.equal('JOB_STATE_SUCCEEDED');
      expect(answered.every((j) => j.state === 'JOB_STATE_SUCCEEDED')).to.equal(true);
      const quickAfter = await admin.getJob(quickJob.id);
      expect([quickAfter.state, quickAfter.reason], 'the quick job of the same start record').to.deep.equal(['JOB_STATE_SUCCEEDED', '']);
      const fours = await waitFor('the 4 s job, run again by the new leader', async () => {
        const js = (await admin.listJobs({ pipeline: 'dfourp' })).jobs.filter((j) => j.flow === 'direct' && /resumed/.test(j.reason));
        return js.length && js.every((j) => j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED') ? js : undefined;
      }, 60_000, 500);
      for (const j of fours) expect(j.state, j.reason).to.equal('JOB_STATE_SUCCEEDED');
    } finally {
      stop = true;
      direct.close();
      client.close();
    }
  });

  it('keyed SubmitJobs submissions whose stream broke with the leader are sent again with their key: each ends SUCCEEDED, one job per key', async () => {
    // After the test before, two coordinators are left: this kills the leader of the two.
    const port = await freePort();
    const keyed = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(port), KIND: 'dkeyed', DELAY_MS: '1500' }, stdio: 'ignore' });
    spare.push(keyed);
    await admin.registerComponent({ instanceId: `dkeyed-${RUN}`, kind: 'dkeyed', endpoint: `127.0.0.1:${port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: 'dkeyp', stages: [{ name: 'slow', kind: 'dkeyed' }] });
    await waitFor('dkeyed listening', async () => (await admin.submitJob({ pipeline: 'dkeyp', payload: Buffer.from('x'), wait: true }).catch(() => undefined))?.state === 'JOB_STATE_SUCCEEDED', 20_000, 200);
    const leader = await leaderOf();
    const alive = coords.filter((c) => c !== leader && c.running);
    expect(alive.length, 'a coordinator to take over').to.be.greaterThan(0);
    const client = new AdminClient([leader.address, ...alive.map((c) => c.address)]);
    const js = client.jobStream();
    try {
      const keys = Array.from({ length: 6 }, (_, i) => `k-${RUN}-${i}`);
      const outcomes = keys.map((k) => js.submit({ pipeline: 'dkeyp', payload: Buffer.from(k), idempotencyKey: k, wait: true, timeoutMs: 40_000 }).then((j) => j, (e: grpc.ServiceError) => e));
      // In flight (each step takes 1.5 s): accepted, recorded, not answered.
      await waitFor('the keyed jobs running', async () => (await admin.listJobs({ pipeline: 'dkeyp', state: 'JOB_STATE_RUNNING' })).jobs.length === keys.length, 5_000, 50);
      await leader.kill('SIGKILL');
      const done = await Promise.all(outcomes);
      for (const [i, d] of done.entries()) {
        expect(d instanceof Error ? `${code(d)}: ${d.message}` : [d.state, d.result.toString()], keys[i]).to.deep.equal(['JOB_STATE_SUCCEEDED', keys[i]]);
      }
      // One job per key: the one the first leader took (the next resumed it), the answer its end.
      const listed = (await admin.listJobs({ pipeline: 'dkeyp', limit: 100 })).jobs.filter((j) => keys.includes(j.idempotencyKey));
      expect(listed.map((j) => j.idempotencyKey).sort()).to.deep.equal([...keys].sort());
      expect(done.map((d) => (d as Job__Output).id).sort()).to.deep.equal(listed.map((j) => j.id).sort());
      for (const j of listed) expect(j.reason, j.id).to.match(/resumed/);
    } finally {
      js.close();
      client.close();
    }
  });
});
