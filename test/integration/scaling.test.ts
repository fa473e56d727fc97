// Scaling by policy, end to end: a real container reports its queue depth to the agent's
// task-state endpoint; the policy scales the workers up within the max while a backlog exists
// and back down when it is gone; every decision is in the history with its inputs and reason.
import { expect } from 'chai';
import * as http from 'node:http';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import YAML from 'yaml';
import * as fs from 'node:fs';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { pastEvents, waitForLeader, statusOf } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { fakedClock } from '../helpers/faketime';
import { laneRange } from '../helpers/lane';

const RUN = randomBytes(3).toString('hex');

/** A load generator: a total backlog, shared among the workers that asked in the last 3 s. */
function loadServer() {
  let total = 0;
  const seen = new Map<string, number>();
  const server = http.createServer((req, res) => {
    const id = new URL(req.url ?? '/', 'http://x').searchParams.get('id') ?? '?';
    seen.set(id, Date.now());
    for (const [k, t] of seen) if (Date.now() - t > 3_000) seen.delete(k);
    res.end(String(Math.round(total / Math.max(1, seen.size))));
  });
  return { server, set: (n: number) => (total = n) };
}

describe('scaling policies end to end', function () {
  this.timeout(150_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let address: string;
  const load = loadServer();
  const node = `s${RUN}`;

  before(async () => {
    const port = await freePort();
    await new Promise<void>((r) => load.server.listen(port, '127.0.0.1', r));
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const c = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--reconcile-interval-ms', '200'] });
    await waitForLeader([c.address]);
    // The agent's host clock runs 30 s behind the leader's (hosts' clocks need not agree): before
    // session 20 the leader read every task report as 30 s old, past its 15 s freshness, and the
    // policy saw no queue depth at all.
    fleet.agent({ coordinators: [c.address], nodeId: node, reportIntervalMs: 500, extra: ['--port-range', laneRange('29000-29999')], env: fakedClock(path.join(fleet.dir, 'agent-clock'), '-30s') });
    admin = new AdminClient([c.address], { timeoutMs: 8_000 });
    address = c.address;
    await waitFor('node READY', async () => (await statusOf(c.address))?.nodesByState.READY === 1, 20_000);
    const spec = YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/queue/app.yaml'), 'utf8'));
    spec.components[0].env.LOAD_PORT = String(port);
    await admin.applyApp(spec);
    await waitFor('one worker running', async () => (await admin.listInstances('queue')).instances.filter((i) => i.health === 'healthy').length === 1, 30_000, 200);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });
  after(async () => {
    admin?.close();
    load.server.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${node}`);
  });

  const policy = () => YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/queue/policy.yaml'), 'utf8'));
  const workers = async () => (await admin.listInstances('queue')).instances.filter((i) => i.desired === 'run');

  it('refuses bad policies with the field path and the right status', async () => {
    const cases: [Record<string, unknown>, grpc.status, RegExp][] = [
      [{ min: 6 }, grpc.status.INVALID_ARGUMENT, /^min: must not exceed max \(6 > 5\)/],
      [{ checks: [{ metric: 'vibes', target: 1 }] }, grpc.status.INVALID_ARGUMENT, /^checks\[0\]\.metric: unknown metric "vibes"/],
      [{ checks: [{ metric: 'queue_depth', target: 0 }] }, grpc.status.INVALID_ARGUMENT, /^checks\[0\]\.target: must be > 0/],
      [{ verticalMemory: { min: 10_000_000, max: 20_000_000 } }, grpc.status.INVALID_ARGUMENT, /^verticalMemory\.min: 10000000 MiB can never be satisfied: the largest node offers \d+ MiB/],
      [{ app: 'nope' }, grpc.status.NOT_FOUND, /app "nope" not found/],
      [{ component: 'nope' }, grpc.status.NOT_FOUND, /component "queue\/nope" not found/],
    ];
    for (const [patch, code, msg] of cases) {
      const err = await admin.setPolicy({ ...policy(), ...patch }).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
      expect(err.code, JSON.stringify(patch)).to.equal(code);
      expect(err.details).to.match(msg);
    }
    const none = await admin.getPolicy('queue', 'worker').catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(none.code).to.equal(grpc.status.NOT_FOUND);
    // `tessera policy get` prints YAML that `policy set -f` takes back as the same policy (app and
    // component first, no nulls: before session 32 the raw message, "verticalCpu: null" and all).
    const cli = (args: string[], input?: string) => execFileSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', address, ...args], { input }).toString();
    await admin.setPolicy(policy());
    const set = await admin.getPolicy('queue', 'worker');
    const shown = cli(['policy', 'get', 'queue', 'worker']);
    expect(shown).to.match(/^app: queue\ncomponent: worker\n/);
    expect(shown).to.not.match(/: null$/m);
    await admin.deletePolicy('queue', 'worker');
    expect(cli(['policy', 'set', '-f', '-'], shown)).to.match(/^policy for queue\/worker: 1\.\.\d+ instances on /);
    expect(await admin.getPolicy('queue', 'worker')).to.deep.equal(set);
    await admin.deletePolicy('queue', 'worker');
  });

  it('scales up within the max while a backlog exists, then back down when it drains', async () => {
    await admin.setPolicy(policy());
    const dry = await admin.evaluatePolicy('queue', 'worker');
    expect(dry.dryRun).to.equal(true);
    expect(dry.instruction!.attributes![0]).to.include({ name: 'replicas', min: 1, max: 5 });

    load.set(100); // 100 queued tasks, 20 per worker wanted: 5 workers
    let peak = 0;
    await waitFor('5 workers running', async () => {
      const w = await workers();
      peak = Math.max(peak, w.length);
      return w.filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length === 5;
    }, 60_000, 250);
    await new Promise((r) => setTimeout(r, 3_000));
    expect((await workers()).length, 'never above max').to.equal(5);
    expect(peak).to.be.at.most(5);

    load.set(0);
    await waitFor('back to 1 worker', async () => (await workers()).length === 1, 80_000, 250);

    const h = (await admin.scalingHistory('queue', 'worker', 200)).decisions;
    const ups = h.filter((d) => d.action === 'scale-up' && d.applied);
    const downs = h.filter((d) => d.action === 'scale-down' && d.applied);
    expect(ups.length).to.be.greaterThan(0);
    expect(downs.length).to.be.greaterThan(0);
    const up = ups[ups.length - 1];
    expect(up.reason).to.match(/queue_depth/);
    expect(up.instruction!.attributes![0]).to.include({ name: 'replicas', min: 1, max: 5 });
    expect(up.inputs).to.have.property('current');
    expect(up.checks[0]).to.include({ metric: 'queue_depth', target: 20 });
    expect(Number(up.instruction!.attributes![0].value)).to.be.greaterThan(Number(up.inputs.current));
    // Up steps respect the rate limit (2 per 5 s).
    for (const d of ups) expect(Number(d.instruction!.attributes![0].value) - Number(d.inputs.current)).to.be.at.most(2);
    expect(downs.every((d) => d.reason.startsWith('scale-down'))).to.equal(true);

    // The policy owns the count: a manual scale is refused, saying so.
    const err = await admin.scaleApp('queue', 'worker', 3).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(err.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(err.details).to.match(/^component worker of app queue is sized by its scaling policy \(1\.\.5 instances, now 1\): change the policy's range/);
  });

  it('keeps a deleted policy\'s count until a scale or a changed count in the spec takes over (as kubectl scale after an HPA is deleted); the apply plan says which count runs', async () => {
    const spec = YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/queue/app.yaml'), 'utf8'));
    spec.components[0].env.LOAD_PORT = String((load.server.address() as { port: number }).port);
    load.set(40); // 20 per worker wanted: 2 workers, the spec saying 1
    await waitFor('2 workers running', async () => (await workers()).filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length === 2, 60_000, 250);
    // While the policy sizes it, a changed count in the spec does not: so says the plan.
    expect((await admin.getApp('queue')).policyInstances).to.deep.equal({ worker: 2 });
    const sized = (await admin.applyApp({ ...spec, components: [{ ...spec.components[0], instances: 4 }] }, true)).plan[0];
    expect(sized).to.deep.include({ instancesFrom: 2, instancesTo: 2, note: 'its scaling policy sizes it: 2 instances run whatever instances says' });
    await admin.deletePolicy('queue', 'worker');
    load.set(0);
    await new Promise((r) => setTimeout(r, 2_000));
    expect((await workers()).length, 'the deleted policy\'s count stays').to.equal(2);
    const dry = (await admin.applyApp({ ...spec, components: [{ ...spec.components[0], instances: 3 }] }, true)).plan[0];
    expect(dry).to.deep.include({ action: 'PLAN_ACTION_IN_PLACE', instancesFrom: 2, instancesTo: 3, note: 'the count a deleted scaling policy set (2) gives way to this one (3)' });
    // The spec says 1 already: before session 30 this was "unchanged" and 2 kept running for good.
    // --wait follows it until the 1 worker asked for runs (before session 31 it returned at once:
    // the version it follows, unchanged, was stable already).
    const res = await promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', address, 'scale', 'queue', 'worker', '1', '--wait', '30']);
    expect(res.stdout).to.match(/^app queue version \d+ is running on every instance \(1 healthy\) after [0-9.]+ s\n$/);
    expect((await workers()).length).to.equal(1);
    expect((await admin.getApp('queue')).policyInstances).to.deep.equal({});
    const events = await pastEvents(admin, ['app.scaled']);
    expect(events.map((e) => e.message)).to.include('worker: 2 -> 1 instances (the spec\'s count; a deleted scaling policy had set 2)');
    // The other way: a policy sized it below the spec's 3, and was deleted; `scale 3` makes no
    // version, and --wait follows the two more until they run (before session 31 it returned at
    // once: the version it follows was stable already).
    await admin.applyApp({ ...spec, components: [{ ...spec.components[0], instances: 3 }] });
    await waitFor('3 workers running', async () => (await workers()).filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length === 3, 30_000, 250);
    await admin.setPolicy({ ...policy(), min: 1, max: 1, scaleDown: { stabilizationMs: 0, maxInstances: 5, maxPercent: 0, periodMs: 1000 } });
    await waitFor('1 worker by the policy', async () => (await admin.getApp('queue')).policyInstances?.worker === 1 && (await workers()).length === 1, 30_000, 250);
    await admin.deletePolicy('queue', 'worker');
    const up = await promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', address, 'scale', 'queue', 'worker', '3', '--wait', '30']);
    expect(up.stdout).to.match(/^app queue version \d+ is running on every instance \(3 healthy\) after [0-9.]+ s\n$/);
    expect((await workers()).filter((i) => i.state === 'INSTANCE_STATE_RUNNING')).to.have.length(3);
    await admin.setPolicy(policy());
  });

  it('resizes memory within its vertical range through a rolling update', async () => {
    await admin.applyApp({ name: 'sized', components: [{
      name: 'api', image: 'tessera/node:local', command: ['node', '-e'],
      args: ["require('http').createServer((q, r) => r.end('ok')).listen(+process.env.PORT_HTTP, '127.0.0.1')"],
      ports: [{ name: 'http' }], resources: { cpuMillis: 100, memoryMib: 256 }, instances: 1,
      health: { type: 'tcp', port: 'http', intervalMs: 500, timeoutMs: 300 },
    }] });
    await waitFor('sized running', async () => (await admin.listInstances('sized')).instances.some((i) => i.health === 'healthy' && Number(i.memoryUsedMib) > 0), 30_000, 200);
    // A node process uses 30-60 MiB: with 25% headroom the limit should come down from 256 into 64..128.
    await admin.setPolicy({ app: 'sized', component: 'api', min: 1, max: 1, verticalMemory: { min: 64, max: 128 }, intervalMs: 1000, windowMs: 2000, warmupMs: 500 });
    await waitFor('a resize decision applied', async () => (await admin.scalingHistory('sized', 'api')).decisions.some((d) => d.action === 'resize' && d.applied), 30_000, 250);
    const d = (await admin.scalingHistory('sized', 'api')).decisions.find((x) => x.action === 'resize')!;
    const attr = d.instruction!.attributes![0];
    expect(attr).to.include({ name: 'memory', min: 64, max: 128, unit: 'MiB' });
    expect(Number(attr.value)).to.be.within(64, 128);
    expect(d.reason).to.match(/^resize memory 256 -> \d+ MiB: peak use/);
    await waitFor('the new size rolled out', async () => {
      const a = await admin.getApp('sized');
      const inst = (await admin.listInstances('sized')).instances.filter((i) => i.desired === 'run');
      return Number(a.version) === 2 && Number(a.stableVersion) === 2 && a.spec!.components[0].resources!.memoryMib === Number(attr.value) && inst.length === 1 && inst[0].health === 'healthy';
    }, 40_000, 250);
    expect((await admin.appHistory('sized')).versions[0].reason).to.match(/^resize by policy: resize memory/);
  });

  it('tunes an env setting the spec allows, within its range, through a new version', async () => {
    await admin.deletePolicy('queue', 'worker');
    await admin.deleteApp('queue');
    await waitFor('queue gone', async () => !(await admin.listApps()).apps.some((x) => x.name === 'queue'), 30_000, 200);
    // Its replica counts went with it.
    const { createEtcdClient } = await import('../../common/etcd');
    const ec = createEtcdClient({ endpoints: etcd.endpoints });
    expect(await ec.getAll().prefix('/tessera/replicas/queue/').count()).to.equal(0);
    ec.close();
    await new Promise((r) => setTimeout(r, 3_500)); // its workers drop out of the load generator's share
    const spec = YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/queue/app.yaml'), 'utf8'));
    spec.name = 'tuned';
    spec.components[0].env = { ...spec.components[0].env, LOAD_PORT: String((load.server.address() as { port: number }).port), BATCH: '1' };
    spec.components[0].tunables = [{ env: 'BATCH', min: 1, max: 8 }];
    await admin.applyApp(spec);
    await waitFor('tuned running', async () => (await admin.listInstances('tuned')).instances.some((i) => i.health === 'healthy'), 30_000, 200);
    load.set(100); // one worker, 100 queued: 5x the target of 20
    await waitFor('the worker reporting the backlog', async () => (await admin.listInstances('tuned')).instances.length === 1, 10_000, 200);
    await new Promise((r) => setTimeout(r, 2_500));
    await admin.setPolicy({ app: 'tuned', component: 'worker', min: 1, max: 1, env: [{ env: 'BATCH', metric: 'queue_depth', target: 20 }], intervalMs: 1000, windowMs: 2000, warmupMs: 500 });
    await waitFor('a retune applied', async () => (await admin.scalingHistory('tuned', 'worker')).decisions.some((d) => d.action === 'retune' && d.applied), 30_000, 250);
    const d = (await admin.scalingHistory('tuned', 'worker')).decisions.find((x) => x.action === 'retune')!;
    expect(d.instruction!.attributes![0]).to.include({ name: 'env:BATCH', min: 1, max: 8, value: 5 });
    const a = await admin.getApp('tuned');
    expect(a.spec!.components[0].env.BATCH).to.equal('5');
    expect((await admin.appHistory('tuned')).versions[0].reason).to.match(/^retune by policy: retune BATCH/);
    load.set(0);
  });
});
