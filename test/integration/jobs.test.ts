// The component manager and the job scheduler end to end: real etcd, two coordinators, two
// agents, the example components in real containers (tessera/components:local), jobs over real
// gRPC through the agents' step relays. Docker is the witness where instances die.
import { endRecordOf } from '../helpers/job-records';
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { execFileSync, fork, ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { AdminClient } from '../../common/admin-client';
import { tesseraProto } from '../../common/proto';
import { LEADER_ADDRESS_KEY, NO_FORWARD_KEY } from '../../common/errors';
import { repoRoot } from '../../common/version';
import type { Job__Output } from '../../common/generated/tessera/v1/Job';
import { Etcd3 } from 'etcd3';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { pastEvents, statusOf, waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { containerPid, containers, removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';
import { scrapeText } from '../helpers/scrape';

const RUN = randomBytes(3).toString('hex');
const IMAGE = 'tessera/components:local';
const TEXT = 'the cat and the dog and the bird saw the cat';

const comp = (name: string, script: string, instances: number, env: Record<string, string> = {}, kind?: string) => ({
  name, kind, image: IMAGE, command: ['node', `/app/${script}.js`], env, ports: [{ name: 'grpc' }], instances,
  health: { type: 'tcp', port: 'grpc', intervalMs: 500, timeoutMs: 400, graceMs: 5000 },
  resources: { cpuMillis: 50, memoryMib: 64 }, stopGraceMs: 3000,
  update: { maxParallel: 1, minHealthyMs: 1000, healthyDeadlineMs: 30_000 },
});
const words = (counterVersion = '1.0.0', splitterDelay = '0') => ({
  name: 'words',
  components: [
    comp('splitter', 'splitter', 2, { DELAY_MS: splitterDelay }),
    comp('counter', 'counter', 2, { COMPONENT_VERSION: counterVersion }),
    comp('formatter', 'formatter', 1),
  ],
});
const PIPELINE = {
  name: 'words', defaultTimeoutMs: 20_000,
  stages: [
    { name: 'split', kind: 'splitter', operation: 'split' },
    { name: 'count', kind: 'counter', operation: 'count', version: '>=1.0.0 <3' },
    { name: 'format', kind: 'formatter', operation: 'top' },
  ],
};

function code(err: unknown): string {
  return grpc.status[(err as grpc.ServiceError).code];
}

async function expectCode(p: Promise<unknown>, c: keyof typeof grpc.status, text?: RegExp): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    expect(code(err), (err as Error).message).to.equal(c);
    if (text) expect((err as grpc.ServiceError).details).to.match(text);
    return err as grpc.ServiceError;
  }
  throw new Error(`expected ${c}, the call succeeded`);
}

/**
 * Runs jobs `conc` at a time: at least `n`, and while `during` (started after n/4 jobs) has not
 * finished.
 */
async function loadJobs(admin: AdminClient, n: number, conc: number, during?: () => Promise<void>): Promise<Job__Output[]> {
  const out: Job__Output[] = [];
  let next = 0;
  let duringDone = !during;
  let duringP: Promise<void> | undefined;
  await Promise.all(Array.from({ length: conc }, async () => {
    while (next < n || !duringDone) {
      const i = next++;
      if (during && i === Math.floor(n / 4)) duringP = during().finally(() => (duringDone = true));
      out.push(await admin.submitJob({ pipeline: 'words', payload: Buffer.from(`${TEXT} ${i}`), wait: true, timeoutMs: 20_000 }));
    }
  }));
  await duringP;
  return out;
}

describe('jobs through pipelines of registered components', function () {
  this.timeout(240_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let coords: Awaited<ReturnType<Fleet['coordinator']>>[];
  const nodes = [`j${RUN}a`, `j${RUN}b`];
  let external: ChildProcess | undefined;
  let four: ChildProcess | undefined;
  const metricsPorts: Record<string, number> = {};

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const extra = ['--reconcile-interval-ms', '200', '--job-max-in-flight-per-instance', '6', '--job-queue-limit', '3'];
    for (const id of ['j1', 'j2']) metricsPorts[id] = await freePort();
    coords = [];
    for (const id of ['j1', 'j2']) coords.push(await fleet.coordinator({ etcd: etcd.endpoints, id, extra: [...extra, '--metrics-listen', `127.0.0.1:${metricsPorts[id]}`] }));
    await waitForLeader(coords.map((c) => c.address), 30_000).catch((e) => {
      console.log(fleet.dump());
      throw e;
    });
    const base = 24_000 + Math.floor(Math.random() * 40) * 100;
    nodes.forEach((n, i) => fleet.agent({ coordinators: coords.map((c) => c.address), nodeId: n, extra: ['--port-range', laneRange(`${base + i * 50}-${base + i * 50 + 49}`), '--cpu-millis', '8000'] }));
    admin = new AdminClient(coords.map((c) => c.address), { timeoutMs: 20_000 });
    await waitFor('two nodes', async () => (await admin.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 2, 20_000);
    await admin.applyApp(words());
    await admin.applyPipeline(PIPELINE);
    await waitFor('5 instances registered', async () => (await admin.listComponents()).instances.length === 5, 90_000, 300);
  });
  after(async () => {
    external?.kill('SIGKILL');
    four?.kill('SIGKILL');
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    for (const n of nodes) removeContainers(`tessera.node=${n}`);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  it('registers running healthy instances with kind, version, operations, node and endpoint', async () => {
    const list = (await admin.listComponents()).instances;
    expect(list.map((i) => i.kind).sort()).to.deep.equal(['counter', 'counter', 'formatter', 'splitter', 'splitter']);
    for (const i of list) {
      expect(i.source).to.equal('deployed');
      expect(i.version).to.equal('1.0.0');
      expect(nodes).to.include(i.nodeId);
      expect(i.endpoint).to.match(/^127\.0\.0\.1:\d+$/);
      expect(i.agentEndpoint).to.match(/^127\.0\.0\.1:\d+$/);
    }
    expect(list.find((i) => i.kind === 'counter')!.operations).to.deep.equal(['count']);
    // In pages (limit, next_page_token), by kind and instance id; a page keeps the kind filter of the first.
    const pages: string[][] = [];
    for (let pageToken = ''; ;) {
      const page = await admin.listComponents('', { limit: 2, pageToken });
      pages.push(page.instances.map((i) => i.instanceId));
      if (!(pageToken = page.nextPageToken)) break;
    }
    expect(pages.map((p) => p.length)).to.deep.equal([2, 2, 1]);
    expect(pages.flat()).to.deep.equal(list.map((i) => i.instanceId));
    const first = await admin.listComponents('', { limit: 2 });
    await expectCode(admin.listComponents('counter', { limit: 2, pageToken: first.nextPageToken }), 'INVALID_ARGUMENT', /pageToken: was given for kind "", not kind "counter"/);
    await expectCode(admin.listComponents('', { limit: -5 }), 'INVALID_ARGUMENT', /limit: must be 0\.\.10000/);
    const cli = JSON.parse(execFileSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', coords.map((c) => c.address).join(','), '--json', 'component', 'list', '--chunk-size', '2']).toString()) as { instanceId: string }[];
    expect(cli.map((i) => i.instanceId), 'tessera component list --chunk-size 2').to.deep.equal(list.map((i) => i.instanceId));
  });

  it('runs jobs through the three stages and shows the path and per-step timings', async () => {
    const jobs = await loadJobs(admin, 12, 4);
    for (const j of jobs) {
      expect(j.state, j.reason).to.equal('JOB_STATE_SUCCEEDED');
      expect(j.path.map((p) => p.stage)).to.deep.equal(['split', 'count', 'format']);
      expect(j.steps.filter((s) => s.ok).map((s) => s.stage)).to.deep.equal(['split', 'count', 'format']);
      expect(j.steps.every((s) => Number(s.durationMs) > 0 && s.instanceId && nodes.includes(s.nodeId))).to.equal(true);
    }
    expect(jobs[0].result.toString()).to.match(/^12 words; top 5: the=4 and=2 cat=2 /);
    // Both splitter instances took work: the load was balanced.
    expect(new Set(jobs.map((j) => j.path[0].instanceId)).size).to.equal(2);
    const got = await admin.getJob(jobs[0].id);
    expect(got.state).to.equal('JOB_STATE_SUCCEEDED');
    expect(got.result.toString()).to.equal(jobs[0].result.toString());
    // A finished job is kept as its end record: read back, it has the path and steps it was answered with.
    expect(got.path).to.deep.equal(jobs[0].path);
    expect(got.steps).to.deep.equal(jobs[0].steps);
    expect(got.durationMs).to.equal(jobs[0].durationMs);
    const listed = (await admin.listJobs({ pipeline: 'words', limit: 100 })).jobs.map((j) => j.id);
    for (const j of jobs) expect(listed).to.include(j.id);
    // The CLI prints the result and the path it took.
    const out = execFileSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', coords.map((c) => c.address).join(','), 'job', 'submit', 'words', '--data', TEXT, '-H', 'top=2']).toString();
    expect(out).to.match(/^11 words; top 2: the=4 and=2\n/);
    expect(out).to.match(/STAGE\s+KIND\s+INSTANCE\s+NODE/);
    expect(out).to.match(/\nformat\s+formatter\s+words-formatter-/);
    // `pipeline get`: a header with the version, then the definition as YAML that applies back
    // unchanged (the same version).
    const cliArgs = [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', coords.map((c) => c.address).join(',')];
    const version = Number((await admin.getPipeline('words')).version);
    const shown = execFileSync(process.execPath, [...cliArgs, 'pipeline', 'get', 'words']).toString();
    expect(shown).to.match(new RegExp(`^pipeline words: version ${version}, updated \\S+ ago \\(\\d{4}-\\d\\d-\\d\\dT[^)]+Z\\)\n\nname: words\n`));
    expect(shown).to.not.match(/^(version|updatedAtMs):/m);
    const again = execFileSync(process.execPath, [...cliArgs, 'pipeline', 'apply', '-f', '-'], { input: shown.slice(shown.indexOf('\n\n') + 2) }).toString();
    expect(again).to.equal(`pipeline words version ${version}: split(splitter) -> count(counter) -> format(formatter)\n`);
    expect(Number((await admin.getPipeline('words')).version)).to.equal(version);
  });

  it('answers a submission in the view it asks for: BASIC without path and steps, over SubmitJobs too', async () => {
    // SubmitJobs streams go to the leader itself.
    const leader = (await statusOf(coords[0].address))?.leader?.address ?? coords[0].address;
    const stream = new AdminClient([leader]).jobStream();
    try {
      const [basic, full] = await Promise.all([
        stream.submit({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true, view: 'JOB_VIEW_BASIC' }),
        stream.submit({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true }),
      ]);
      for (const j of [basic, full]) {
        expect(j.state, j.reason).to.equal('JOB_STATE_SUCCEEDED');
        expect(j.result.toString()).to.match(/^11 words; top 5: the=4 /);
      }
      expect(basic.path).to.deep.equal([]);
      expect(basic.steps).to.deep.equal([]);
      expect(full.path.map((p) => p.stage)).to.deep.equal(['split', 'count', 'format']);
      expect(full.steps.map((p) => p.stage)).to.deep.equal(['split', 'count', 'format']);
      // GetJob still has all of it.
      expect((await admin.getJob(basic.id)).path.map((p) => p.stage)).to.deep.equal(['split', 'count', 'format']);
    } finally {
      stream.close();
    }
    const unary = await admin.submitJob({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true, view: 'JOB_VIEW_BASIC' });
    expect(unary.state).to.equal('JOB_STATE_SUCCEEDED');
    expect(unary.steps).to.deep.equal([]);
  });

  it('streams a job with WatchJob until it ends, and answers an idempotent resubmission with the same job', async () => {
    const key = `k-${RUN}`;
    const j = await admin.submitJob({ pipeline: 'words', payload: Buffer.from(TEXT), idempotencyKey: key });
    expect(['JOB_STATE_RUNNING', 'JOB_STATE_SUCCEEDED']).to.include(j.state);
    const seen: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = admin.watchJob(j.id);
      s.on('data', (x: Job__Output) => seen.push(x.state));
      s.on('end', resolve);
      s.on('error', reject);
    });
    expect(seen[seen.length - 1]).to.equal('JOB_STATE_SUCCEEDED');
    const again = await admin.submitJob({ pipeline: 'words', payload: Buffer.from('something else'), idempotencyKey: key, wait: true });
    expect(again.id).to.equal(j.id);
    expect(again.result.toString()).to.match(/^11 words/);
    // A submission sent again after its stream broke, with neither deadline nor timeout: the
    // pipeline's default timeout (20 s) counts from its first send, 15 s before.
    const resent = await admin.submitJob({ pipeline: 'words', payload: Buffer.from(TEXT), resentAfterMs: 15_000, wait: true });
    expect(resent.state).to.equal('JOB_STATE_SUCCEEDED');
    expect(Number(resent.deadlineMs) - Number(resent.submittedAtMs), 'the time it was given').to.be.within(4_900, 5_000);
  });

  it('refuses bad submissions with the right status and a clear reason, storing nothing', async () => {
    const before = (await admin.listJobs({ limit: 1000 })).jobs.length;
    await expectCode(admin.submitJob({ pipeline: 'nope', payload: Buffer.from('x') }), 'NOT_FOUND', /pipeline "nope"/);
    const big = await expectCode(admin.submitJob({ pipeline: 'words', payload: Buffer.alloc(300_000, 97) }), 'INVALID_ARGUMENT', /payload/);
    expect(String(big.metadata.get('tessera-field-violations')[0])).to.contain('"field":"payload"');
    await expectCode(admin.submitJob({ pipeline: 'words', payload: Buffer.from('x'), deadlineMs: Date.now() - 1000 }), 'INVALID_ARGUMENT', /deadlineMs.*already past/);
    await expectCode(admin.submitJob({ pipeline: 'words', payload: Buffer.from('x'), resentAfterMs: -1 }), 'INVALID_ARGUMENT', /resentAfterMs/);
    // Refused whatever else the submission names (with a deadline it is not used, but it is still wrong).
    await expectCode(admin.submitJob({ pipeline: 'words', payload: Buffer.from('x'), deadlineMs: Date.now() + 5_000, resentAfterMs: -1 }), 'INVALID_ARGUMENT', /resentAfterMs/);
    await admin.applyPipeline({ name: 'ghost', stages: [{ name: 'a', kind: 'splitter' }, { name: 'b', kind: 'nobody-runs-this' }] });
    await expectCode(admin.submitJob({ pipeline: 'ghost', payload: Buffer.from('x') }), 'UNAVAILABLE', /stage "b": no instance of nobody-runs-this is registered/);
    const bad = await expectCode(admin.applyPipeline({ name: 'Bad Name', stages: [{ name: 's', alternatives: [{ kind: 'a', version: 'not-a-range!' }] }] }), 'INVALID_ARGUMENT');
    const fields = JSON.parse(String(bad.metadata.get('tessera-field-violations')[0])).map((v: { field: string }) => v.field);
    expect(fields).to.include.members(['pipeline.name', 'pipeline.stages[0].alternatives[0].version']);
    await expectCode(admin.getPipeline('Bad Name'), 'NOT_FOUND');
    expect((await admin.listJobs({ limit: 1000 })).jobs.length).to.equal(before);
  });

  it('retries around an instance SIGKILLed under load: no job lost, the retries visible', async () => {
    // Slow splitters (150 ms a step, the rest of the path a few ms) keep steps in flight on both
    // when one is killed (with 40 ms a CI run once saw no failed step: likely an idle moment on the victim).
    await admin.applyApp(words('1.0.0', '150'));
    await waitFor('slow splitters registered', async () => {
      const s = (await admin.listInstances('words')).instances.filter((i) => i.component === 'splitter' && i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING' && i.version === 2);
      return s.length === 2 && (await admin.listComponents('splitter')).instances.length === 2;
    }, 90_000, 300);
    let victim = (await admin.listComponents('splitter')).instances[0];
    // The splitters' processes, looked up before the load: the kill itself must not block this
    // process (a synchronous `docker ps` and `docker kill` took most of a second on a slow day, the
    // submitters in this process stood still meanwhile, and the victim's steps had all ended).
    const pids = new Map((await admin.listComponents('splitter')).instances.map((i) => {
      const c = containers(`tessera.instance=${i.instanceId}`).find((x) => x.state === 'running');
      return [i.instanceId, c ? containerPid(c.id) : 0] as const;
    }));
    let killed = false;
    const jobs = await loadJobs(admin, 40, 6, async () => {
      // The victim: a splitter the leader has jobs in flight on right now.
      // (At least two: with one, a slow day's run killed it as its step ended, and no job failed a step.)
      await waitFor('a splitter with steps in flight', async () => {
        const busy = (await admin.listComponents('splitter')).instances.find((i) => i.inFlight > 1 && pids.get(i.instanceId));
        if (busy) victim = busy;
        return busy;
      }, 10_000, 10);
      // SIGKILL to the container's first process, as `docker kill` sends it.
      process.kill(pids.get(victim.instanceId)!, 'SIGKILL');
      killed = true;
      // Jobs keep coming while the instance is down and restarted.
      await new Promise((r) => setTimeout(r, 3_000));
    });
    expect(killed).to.equal(true);
    const failed = jobs.filter((j) => j.state !== 'JOB_STATE_SUCCEEDED');
    expect(failed.map((j) => `${j.id}: ${j.reason}`)).to.deep.equal([]);
    const retried = jobs.filter((j) => j.steps.some((s) => !s.ok));
    expect(retried.length, 'some job shows a failed step and its retry').to.be.greaterThan(0);
    for (const j of retried) {
      const bad = j.steps.find((s) => !s.ok)!;
      expect(bad.instanceId).to.equal(victim.instanceId);
      expect(j.plans).to.be.greaterThan(1);
      // The retry ran the stage on another instance.
      expect(j.steps.filter((s) => s.stage === bad.stage && s.ok)[0].instanceId).to.not.equal(victim.instanceId);
    }
    // The killed instance is restarted and registered again.
    await waitFor('victim back', async () => (await admin.listComponents('splitter')).instances.length === 2, 60_000, 300);
  });

  it('upgrades a kind while jobs run without a failed job; the new version registers', async () => {
    const jobs = await loadJobs(admin, 60, 3, async () => {
      await admin.applyApp(words('1.1.0', '150'));
      await waitFor('counters upgraded', async () => {
        const c = (await admin.listComponents('counter')).instances;
        return c.length === 2 && c.every((i) => i.version === '1.1.0');
      }, 90_000, 200);
      // Jobs go on a moment on the new ones alone (the old ones were on every path before).
      await new Promise((r) => setTimeout(r, 1_000));
    });
    expect(jobs.filter((j) => j.state !== 'JOB_STATE_SUCCEEDED').map((j) => j.reason)).to.deep.equal([]);
    // Old and new counters both served jobs (how many of each depends on where the paths went).
    const served = new Set((await Promise.all(jobs.map((j) => admin.getJob(j.id)))).map((j) => j.steps.find((s) => s.stage === 'count' && s.ok)!.instanceId));
    const upgraded = new Set((await admin.listComponents('counter')).instances.map((i) => i.instanceId));
    const why = `count steps on ${[...served].join(', ')}; the new counters: ${[...upgraded].join(', ')}`;
    expect([...served].filter((id) => upgraded.has(id)), `a new counter served jobs: ${why}`).to.not.deep.equal([]);
    expect([...served].filter((id) => !upgraded.has(id)), `an old counter served jobs: ${why}`).to.not.deep.equal([]);
  });

  it('queues jobs when every instance of a stage is saturated and refuses beyond the bound', async () => {
    // One formatter, 6 jobs in flight per instance at most, 3 queued: the 10th at once is refused.
    const applied = await admin.applyApp({ ...words('1.1.0', '150'), components: [...words('1.1.0', '150').components.slice(0, 2), comp('formatter', 'formatter', 1, { DELAY_MS: '1500' })] });
    await waitFor('slow formatter', async () => {
      const f = (await admin.listInstances('words')).instances.filter((i) => i.component === 'formatter' && i.desired === 'run');
      const reg = (await admin.listComponents('formatter')).instances;
      return f.length === 1 && f[0].version === applied.app!.version && f[0].state === 'INSTANCE_STATE_RUNNING' && reg.length === 1 && reg[0].instanceId === f[0].id;
    }, 60_000, 300);
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => admin.submitJob({ pipeline: 'words', payload: Buffer.from(TEXT) })));
    const refused = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    expect(refused.length).to.be.greaterThan(0);
    for (const r of refused) expect(code(r.reason)).to.equal('RESOURCE_EXHAUSTED');
    const accepted = results.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<Job__Output>).value);
    expect(accepted.length).to.equal(9);
    const queued = accepted.filter((j) => j.state === 'JOB_STATE_QUEUED');
    expect(queued.length).to.be.greaterThan(0);
    // A queued job cancelled never runs.
    const cancelled = await admin.cancelJob(queued[0].id);
    expect(cancelled.state).to.equal('JOB_STATE_CANCELLED');
    // Every other accepted job ends, queued ones too.
    const rest = accepted.filter((j) => j.id !== queued[0].id);
    await waitFor('accepted jobs end', async () => (await Promise.all(rest.map((j) => admin.getJob(j.id)))).every((j) => j.state === 'JOB_STATE_SUCCEEDED'), 60_000, 300);
    const after = await admin.getJob(queued[0].id);
    expect(after.state).to.equal('JOB_STATE_CANCELLED');
    expect(after.steps).to.deep.equal([]);
    await admin.applyApp(words('1.1.0', '0'));
  });

  it('registers an external instance with a lease, routes to it, and deregisters it (by call and by expiry)', async () => {
    const port = await freePort();
    external = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(port), KIND: 'ext-echo' }, stdio: 'ignore' });
    await admin.applyPipeline({ name: 'ext', stages: [{ name: 'only', kind: 'ext-echo' }] });
    const reg = await admin.registerComponent({ instanceId: `ext-${RUN}`, kind: 'ext-echo', version: '2.0.0', operations: ['echo'], endpoint: `127.0.0.1:${port}`, ttlMs: 30_000 });
    expect(reg.source).to.equal('external');
    const j = await waitFor('external answers', async () => {
      const x = await admin.submitJob({ pipeline: 'ext', payload: Buffer.from('hello'), wait: true }).catch(() => undefined);
      return x?.state === 'JOB_STATE_SUCCEEDED' ? x : undefined;
    }, 10_000, 200);
    expect(j.result.toString()).to.equal('hello');
    expect(j.path[0].instanceId).to.equal(`ext-${RUN}`);
    expect(j.path[0].nodeId).to.equal('');
    await admin.deregisterComponent(`ext-${RUN}`);
    await expectCode(admin.submitJob({ pipeline: 'ext', payload: Buffer.from('x') }), 'UNAVAILABLE', /no instance of ext-echo/);
    await expectCode(admin.deregisterComponent(`ext-${RUN}`), 'NOT_FOUND');
    // A lease that is not renewed runs out.
    await admin.registerComponent({ instanceId: `ext-${RUN}`, kind: 'ext-echo', endpoint: `127.0.0.1:${port}`, ttlMs: 2_000 });
    expect((await admin.listComponents('ext-echo')).instances).to.have.length(1);
    await waitFor('lease expired', async () => (await admin.listComponents('ext-echo')).instances.length === 0, 10_000, 200);
    const bad = await expectCode(admin.registerComponent({ instanceId: 'x', kind: 'Bad', endpoint: 'nowhere', ttlMs: 5 }), 'INVALID_ARGUMENT');
    const fields = JSON.parse(String(bad.metadata.get('tessera-field-violations')[0])).map((v: { field: string }) => v.field);
    expect(fields).to.include.members(['kind', 'endpoint', 'ttlMs']);
  });

  it('enforces per-kind quotas at placement', async () => {
    const q = await admin.setQuota({ kind: 'quota-kind', memoryMib: 100 });
    expect(q.memoryMib).to.equal(100);
    const spec = { name: 'quota-app', components: [{ ...comp('q', 'echo', 2, { KIND: 'quota-kind' }, 'quota-kind') }] };
    const dry = await admin.applyApp(spec, true);
    expect(dry.planned).to.equal(1);
    expect(dry.unplaced).to.have.length(1);
    expect(Object.values(dry.unplaced[0].reasons)[0]).to.match(/quota of kind quota-kind: memory 64\+64 > 100 MiB/);
    await expectCode(admin.setQuota({ kind: 'quota-kind', memoryMib: -1 }), 'INVALID_ARGUMENT');
    await admin.deleteQuota('quota-kind');
    expect((await admin.listQuotas()).quotas.map((x) => x.kind)).to.not.include('quota-kind');
  });

  it('records every start before the answer, the starts of one turn in one shared record, gone once their ends are recorded', async () => {
    const port = await freePort();
    const slow = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(port), KIND: 'slow-once', DELAY_MS: '1200' }, stdio: 'ignore' });
    const client = new Etcd3({ hosts: etcd.endpoints });
    const stream = admin.jobStream();
    try {
      await admin.registerComponent({ instanceId: `once-${RUN}`, kind: 'slow-once', endpoint: `127.0.0.1:${port}`, ttlMs: 60_000 });
      await admin.applyPipeline({ name: 'once', stages: [{ name: 'slow', kind: 'slow-once' }] });
      await waitFor('slow-once answers', async () => (await admin.submitJob({ pipeline: 'once', payload: Buffer.from('x'), wait: true }).catch(() => undefined))?.state === 'JOB_STATE_SUCCEEDED', 10_000, 200);
      await stream.submit({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true }); // the stream is on the leader
      // Every write under jobs/started/ while the jobs run, seen by a watch.
      const writes: { type: string; key: string; value: string }[] = [];
      const watcher = await client.watch().prefix('/tessera/jobs/started/').create();
      watcher.on('put', (kv) => writes.push({ type: 'put', key: kv.key.toString(), value: kv.value.toString() }));
      watcher.on('delete', (kv) => writes.push({ type: 'delete', key: kv.key.toString(), value: '' }));
      // Eight submissions in one stream message (one event-loop turn of the client) and a long job.
      const quick = Promise.all(Array.from({ length: 8 }, (_, i) => stream.submit({ pipeline: 'words', payload: Buffer.from(`${TEXT} ${i}`), wait: true, timeoutMs: 20_000 })));
      const long = stream.submit({ pipeline: 'once', payload: Buffer.from('a long-running job'), wait: true, timeoutMs: 10_000 });
      const jobs = await quick;
      expect(jobs.map((j) => j.state)).to.deep.equal(Array(8).fill('JOB_STATE_SUCCEEDED'));
      // The long job is still running: its start is in etcd (a new leader would resume it).
      const running = Object.values(await client.getAll().prefix('/tessera/jobs/started/').strings()).join('\n');
      // (its id is not known until it ends: its input is)
      expect(running).to.include(Buffer.from('a long-running job').toString('base64'));
      const longJob = await long;
      expect(longJob.state, longJob.reason).to.equal('JOB_STATE_SUCCEEDED');
      // Once every end is recorded, no start record is left, and every job has its end record.
      await waitFor('start records removed', async () => (await client.getAll().prefix('/tessera/jobs/started/').count()) === 0, 5_000, 50);
      for (const j of [...jobs, longJob]) {
        const done = await endRecordOf(client, '/tessera/', j.id);
        expect([done?.id, done?.state], j.id).to.deep.equal([j.id, 'JOB_STATE_SUCCEEDED']);
      }
      // The ends of jobs admitted together share a record (under jobs/ended/<batch>/, the batch
      // named in their ids), not a key each; the long job's end came later, in a write of its own.
      const ended = await client.getAll().prefix('/tessera/jobs/ended/').strings();
      const holding = (id: string) => Object.keys(ended).filter((k) => ended[k].includes(`"id":"${id}"`));
      for (const j of [...jobs, longJob]) expect(holding(j.id), j.id).to.have.length(1);
      expect(new Set([...jobs, longJob].map((j) => holding(j.id)[0])).size).to.be.lessThan(jobs.length);
      for (const j of [...jobs, longJob]) expect(await client.get(`/tessera/jobs/done/${j.id}`).string(), j.id).to.equal(null);
      await watcher.cancel();
      // Each job's start was written (before its answer: the answer waits for it) ...
      const puts = writes.filter((w) => w.type === 'put');
      for (const j of [...jobs, longJob]) expect(puts.some((w) => w.value.includes(`"id":"${j.id}"`)), `start of ${j.id}`).to.equal(true);
      // ... the eight of one message together, in fewer records than jobs, each record deleted once.
      expect(puts.length, puts.map((w) => w.value.length).join(' ')).to.be.lessThan(jobs.length);
      const deleted = writes.filter((w) => w.type === 'delete').map((w) => w.key);
      for (const k of new Set(puts.map((w) => w.key))) expect(deleted.filter((d) => d === k), k).to.have.length(1);
    } finally {
      stream.close();
      slow.kill('SIGKILL');
      client.close();
      await admin.deregisterComponent(`once-${RUN}`).catch(() => undefined);
    }
  });

  it('moves a SubmitJobs stream opened on a follower to the leader, resending what the follower refused', async () => {
    const leaderId = (await statusOf(coords[0].address))?.leader?.id;
    const leader = coords.find((c) => c.id === leaderId)!;
    const follower = coords.find((c) => c !== leader)!;
    const client = new AdminClient([follower.address, leader.address]);
    const stream = client.jobStream();
    try {
      const jobs = await Promise.all([0, 1, 2, 3].map((i) => stream.submit({ pipeline: 'words', payload: Buffer.from(`${TEXT} ${i}`), wait: true, view: 'JOB_VIEW_BASIC' })));
      expect(jobs.map((j) => j.state)).to.deep.equal(Array(4).fill('JOB_STATE_SUCCEEDED'));
      expect(new Set(jobs.map((j) => j.id)).size).to.equal(4);
      const more = await stream.submit({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true });
      expect(more.state).to.equal('JOB_STATE_SUCCEEDED');
    } finally {
      stream.close();
      client.close();
    }
  });

  it('serves a SubmitJobs stream opened on a follower (as grpcurl would open it) by forwarding each submission to the leader', async () => {
    const leaderId = (await statusOf(coords[0].address))?.leader?.id;
    const leader = coords.find((c) => c.id === leaderId)!;
    const follower = coords.find((c) => c !== leader)!;
    const raw = new (tesseraProto().Admin)(follower.address, grpc.credentials.createInsecure());
    try {
      // A plain client, as grpcurl: no header, one message of three submissions (one to an
      // unknown pipeline), then its half of the stream closed; the answers still come, and
      // then the stream's end.
      const stream = raw.submitJobs();
      const outcomes: Record<string, unknown>[] = [];
      const ended = new Promise<void>((resolve, reject) => {
        stream.on('data', (m: { outcomes: Record<string, unknown>[] }) => outcomes.push(...m.outcomes));
        stream.on('end', resolve);
        stream.on('error', reject);
      });
      stream.write({ submissions: [
        { callId: 1, request: { pipeline: 'words', payload: Buffer.from(TEXT), wait: true } },
        { callId: 2, request: { pipeline: 'words', payload: Buffer.from(`${TEXT} again`), wait: true, view: 'JOB_VIEW_BASIC' } },
        { callId: 3, request: { pipeline: 'no-such-pipeline', payload: Buffer.from('x') } },
      ] });
      stream.end();
      await ended;
      expect(outcomes.map((o) => Number(o.callId)).sort()).to.deep.equal([1, 2, 3]);
      const by = new Map(outcomes.map((o) => [Number(o.callId), o as { job?: Job__Output; errorCode?: number; error?: string; notLeader?: boolean }]));
      expect(by.get(1)!.job?.state, JSON.stringify(by.get(1))).to.equal('JOB_STATE_SUCCEEDED');
      expect(by.get(1)!.job?.path?.length, 'the full view: the path taken').to.equal(3);
      expect(by.get(2)!.job?.path, 'the basic view, as asked').to.deep.equal([]);
      expect(by.get(2)!.job?.state).to.equal('JOB_STATE_SUCCEEDED');
      expect(by.get(3)!.errorCode).to.equal(grpc.status.NOT_FOUND);
      expect(by.get(3)!.error).to.match(/no-such-pipeline/);
      // Run by the leader: it has the jobs.
      expect((await new AdminClient([leader.address]).getJob(by.get(1)!.job!.id)).state).to.equal('JOB_STATE_SUCCEEDED');
      // Over the follower's own SubmitJobs stream to the leader, one per client stream (not a
      // unary SubmitJob each): counted by the follower.
      const metrics = await scrapeText(metricsPorts[follower.id!]);
      expect(metrics).to.match(/^tessera_jobs_forwarded_total 3$/m);

      // A client that moves to the leader itself asks not to be forwarded: refused, naming the leader.
      const md = new grpc.Metadata();
      md.set(NO_FORWARD_KEY, '1');
      const refused = raw.submitJobs(md);
      const err = await new Promise<grpc.ServiceError>((resolve) => {
        refused.on('error', resolve);
        refused.on('data', () => undefined);
        refused.write({ submissions: [{ callId: 1, request: { pipeline: 'words', payload: Buffer.from(TEXT) } }] });
      });
      expect(err.code).to.equal(grpc.status.UNAVAILABLE);
      expect(String(err.metadata.get(LEADER_ADDRESS_KEY)[0])).to.equal(leader.address);
    } finally {
      raw.close();
    }
  });

  it('a leader SIGKILLed while jobs run: every accepted job ends SUCCEEDED or FAILED with a reason', async () => {
    // A slow last stage (an external instance, 300 ms a step) keeps jobs in flight at the kill.
    const port = await freePort();
    external?.kill('SIGKILL');
    external = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(port), KIND: 'slow-echo', DELAY_MS: '300' }, stdio: 'ignore' });
    await admin.registerComponent({ instanceId: `slow-${RUN}`, kind: 'slow-echo', endpoint: `127.0.0.1:${port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: 'slowp', stages: [{ name: 'split', kind: 'splitter' }, { name: 'slow', kind: 'slow-echo' }] });
    await waitFor('slow echo answers', async () => (await admin.submitJob({ pipeline: 'slowp', payload: Buffer.from('x'), wait: true }).catch(() => undefined))?.state === 'JOB_STATE_SUCCEEDED', 10_000, 200);
    const leaderId = (await statusOf(coords[0].address))?.leader?.id ?? (await statusOf(coords[1].address))?.leader?.id;
    const leader = coords.find((c) => c.id === leaderId)!;
    const accepted: string[] = [];
    let stop = false;
    const submitter = (async () => {
      for (let i = 0; !stop; i++) {
        try {
          const j = await admin.submitJob({ pipeline: 'slowp', payload: Buffer.from(`${TEXT} ${i}`), idempotencyKey: `f-${RUN}-${i}`, timeoutMs: 30_000 });
          accepted.push(j.id);
        } catch { /* refused while there is no leader: not accepted */ }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await waitFor('some accepted', () => accepted.length >= 10, 20_000, 50);
    // A SubmitJobs stream on the leader, given every address: after the kill it finds the next leader.
    const streamClient = new AdminClient([leader.address, ...coords.filter((c) => c !== leader).map((c) => c.address)]);
    const stream = streamClient.jobStream();
    expect((await stream.submit({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true })).state).to.equal('JOB_STATE_SUCCEEDED');
    // A quick job and a 4 s one in one stream message share a start record: at the kill the
    // quick one has ended (the next leader must leave it be) and the slow one runs (it must resume it).
    const fourPort = await freePort();
    four = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(fourPort), KIND: 'slow-four', DELAY_MS: '4000' }, stdio: 'ignore' });
    await waitFor('slow-four listening', () => new Promise<boolean>((resolve) => {
      const sock = net.connect(fourPort, '127.0.0.1', () => { sock.destroy(); resolve(true); }).on('error', () => resolve(false));
    }), 10_000, 100);
    await admin.registerComponent({ instanceId: `four-${RUN}`, kind: 'slow-four', endpoint: `127.0.0.1:${fourPort}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: 'fourp', stages: [{ name: 'slow', kind: 'slow-four' }] });
    // (no idempotency key: looking one up would admit it a turn later, in a record of its own)
    const fourReq = { pipeline: 'fourp', payload: Buffer.from('four'), wait: true, timeoutMs: 60_000 };
    const quickOne = stream.submit({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true });
    void stream.submit(fourReq).catch(() => undefined); // its answer is lost with the leader
    const quickJob = await quickOne;
    expect(quickJob.state).to.equal('JOB_STATE_SUCCEEDED');
    // Jobs that ended a while before the kill have their end recorded: the next leader leaves them be.
    const early = accepted.slice(0, 5);
    await waitFor('the first jobs ended', async () => (await Promise.all(early.map((id) => admin.getJob(id)))).every((j) => j.state === 'JOB_STATE_SUCCEEDED'), 20_000, 100);
    await new Promise((r) => setTimeout(r, 500));
    await leader.kill('SIGKILL');
    const other = coords.find((c) => c !== leader)!;
    await waitForLeader([other.address], 20_000);
    const viaStream = await waitFor('a stream submission accepted by the new leader', async () => {
      const j = await stream.submit({ pipeline: 'words', payload: Buffer.from(TEXT), wait: true, idempotencyKey: `s-${RUN}` }).catch(() => undefined);
      return j?.state === 'JOB_STATE_SUCCEEDED' ? j : undefined;
    }, 30_000, 300);
    expect((await admin.getJob(viaStream.id)).state).to.equal('JOB_STATE_SUCCEEDED');
    const fourJob = await waitFor('the slow job, resumed by the new leader', async () => {
      const [j] = (await admin.listJobs({ pipeline: 'fourp' }).catch(() => undefined))?.jobs ?? [];
      return j && (j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED') ? j : undefined;
    }, 60_000, 500);
    expect(fourJob.reason).to.match(/resumed from its first stage/);
    expect(fourJob.state).to.equal('JOB_STATE_SUCCEEDED');
    // The words instances ran before the kill: the new leader routes to them again without
    // announcing each as newly registered.
    const evs = (await pastEvents(admin, ['component.registered', 'leader.elected'])).map((e) => ({ kind: e.kind, subject: e.subject, leaderTerm: Number(e.leaderTerm) }));
    const term = Math.max(...evs.filter((e) => e.kind === 'leader.elected').map((e) => e.leaderTerm));
    expect(evs.filter((e) => e.kind === 'component.registered' && e.leaderTerm >= term && e.subject.startsWith('words-')).map((e) => e.subject)).to.deep.equal([]);
    const quickAfter = await admin.getJob(quickJob.id);
    expect([quickAfter.state, quickAfter.reason], 'the quick job of the same start record').to.deep.equal(['JOB_STATE_SUCCEEDED', '']);
    stream.close();
    streamClient.close();
    await waitFor('jobs accepted by the new leader', () => accepted.length >= 30, 30_000, 100);
    stop = true;
    await submitter;
    const final = await waitFor('every accepted job ended', async () => {
      const all = await Promise.all(accepted.map((id) => admin.getJob(id)));
      return all.every((j) => j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED') ? all : undefined;
    }, 90_000, 500);
    for (const j of final) if (j.state === 'JOB_STATE_FAILED') expect(j.reason, j.id).to.not.equal('');
    expect(final.filter((j) => j.state === 'JOB_STATE_SUCCEEDED').length).to.be.greaterThan(accepted.length / 2);
    // Jobs in flight at the kill were taken over by the next leader and say so.
    const resumed = final.filter((j) => /resumed from its first stage/.test(j.reason));
    expect(resumed.length, 'jobs resumed by the next leader').to.be.greaterThan(0);
    expect(resumed.every((j) => j.state === 'JOB_STATE_SUCCEEDED')).to.equal(true);
    for (const id of early) expect(final.find((j) => j.id === id)!.reason, `${id} ended before the kill`).to.equal('');
    // Listed by the new leader too, from their end records (as GetJob finds them), newest first.
    const listed = (await admin.listJobs({ limit: 1000 })).jobs;
    expect(listed.map((j) => j.id)).to.include.members([...early, quickJob.id, viaStream.id]);
    const times = listed.map((j) => Number(j.submittedAtMs));
    expect(times).to.deep.equal([...times].sort((a, b) => b - a));
    expect(new Set(listed.map((j) => j.id)).size).to.equal(listed.length);
    const words = (await admin.listJobs({ pipeline: 'words', state: 'JOB_STATE_SUCCEEDED', limit: 1000 })).jobs;
    expect(words.map((j) => j.id)).to.include.members([quickJob.id, viaStream.id]);
    expect(words.every((j) => j.pipeline === 'words' && j.state === 'JOB_STATE_SUCCEEDED')).to.equal(true);
  });
});
