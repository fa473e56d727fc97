// A step of the system clock (an NTP step, a VM resumed from a snapshot, `date -s`): the leader's
// leadership, node liveness and external leases, and an agent's health checks, are timed on a
// clock that does not step (common/clock.ts). The stepped processes run under libfaketime
// (test/helpers/faketime.ts): a real step of that process's clock, nothing else on the machine moved.
// Real etcd, coordinator and agent processes, real containers.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { execOutput, pastEvents, waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { fakedClock, stepClock } from '../helpers/faketime';
import { laneRange } from '../helpers/lane';
import { scrape } from '../helpers/scrape';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a step of the system clock', function () {
  this.timeout(120_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let metricsPort: number;
  let leaderClock: string;
  let agentClock: string;
  let leaderLog: string;
  let leaderAddress: string;
  let killable: { kill: (s?: NodeJS.Signals) => Promise<void> };
  const app = {
    name: 'clk', components: [{
      name: 'checked', image: 'tessera/busybox:local', command: ['sh', '-c', 'touch /tmp/ok; exec sleep 3600'],
      resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
      // A check through the Engine's exec takes more than 250 ms on a busy host (another test file
      // running beside this one): two such in a row restarted the instance in the middle of the
      // first test (a CI run failed so). A second's timeout, checked every second.
      health: { type: 'exec', command: ['test', '-f', '/tmp/ok'], intervalMs: 1000, timeoutMs: 900, graceMs: 0, failureThreshold: 2 },
      constraints: [{ label: 'clock', op: '=', value: 'stepped' }],
    }],
  };
  const nodes = async () => Object.fromEntries((await admin.listNodes()).nodes.map((n) => [n.id, n.state.replace('NODE_STATE_', '')]));
  const running = async () => (await admin.listInstances('clk')).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING');

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    leaderClock = path.join(fleet.dir, 'clock-c1');
    agentClock = path.join(fleet.dir, 'clock-agent');
    metricsPort = await freePort();
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints, env: fakedClock(leaderClock), extra: ['--metrics-listen', `127.0.0.1:${metricsPort}`] });
    leaderLog = path.join(fleet.dir, 'c1.log');
    leaderAddress = c1.address;
    await waitForLeader([c1.address]);
    const c2 = await fleet.coordinator({ etcd: etcd.endpoints });
    const cs = [c1.address, c2.address];
    fleet.agent({ coordinators: cs, nodeId: 'clk-stepped', env: fakedClock(agentClock), extra: ['--port-range', laneRange('30800-30809'), '--labels', 'clock=stepped'] });
    killable = fleet.agent({ coordinators: cs, nodeId: 'clk-other', extra: ['--port-range', laneRange('30810-30819')] });
    admin = new AdminClient(cs);
    await waitFor('both nodes READY', async () => { const n = await nodes(); return n['clk-stepped'] === 'READY' && n['clk-other'] === 'READY'; }, 20_000, 100);
    await admin.applyApp(app);
    await waitFor('the checked instance RUNNING and healthy', async () => (await running()).some((i) => i.health === 'healthy'), 60_000, 200);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers('tessera.app=clk');
    removeContainers('tessera.app=clkjobs');
  });

  it('a leader whose clock steps 60 s forward keeps its leadership, its nodes, its instances and the external leases', async () => {
    // Clocks that agree read as about 0 (the reports' transit time).
    const offsets = async () => [...(await scrape(metricsPort))].filter(([k]) => k.startsWith('tessera_node_clock_offset_seconds'));
    await waitFor('both nodes\' clock offsets known', async () => (await offsets()).length === 2, 5_000, 100);
    for (const [k, v] of await offsets()) expect(Math.abs(v), k).to.be.below(1);
    await admin.registerComponent({ instanceId: 'ext-clk', kind: 'outside', endpoint: '127.0.0.1:1', ttlMs: 20_000 });
    const before = (await running()).map((i) => i.id);
    const elected = (await pastEvents(admin, ['leader.elected'])).length;
    stepClock(leaderClock, '+60s');
    // Three lease TTLs (2 s) and two heartbeat timeouts (3 s): before, the leader stepped down at
    // once (its keepalive "quiet" for 60 s); with that fixed alone, it would have marked both
    // nodes DOWN (silent for 60 s) and the external instance's 20 s lease would have run out.
    await sleep(6_000);
    expect((await admin.getClusterStatus()).leader?.id).to.equal('c1');
    expect(await pastEvents(admin, ['leader.elected'])).to.have.length(elected);
    expect(await nodes()).to.deep.equal({ 'clk-stepped': 'READY', 'clk-other': 'READY' });
    expect(await pastEvents(admin, ['node.down'])).to.have.length(0);
    // The same instance, not replaced (its agent's clock did not move: whether its check passed
    // at this moment is not the leader's doing).
    expect((await admin.listInstances('clk')).instances.map((i) => i.id)).to.deep.equal(before);
    expect((await admin.listComponents('outside')).instances.map((i) => i.instanceId)).to.deep.equal(['ext-clk']);
    // The step is logged, and how far behind the system clock the timers are is exported.
    expect(fs.readFileSync(leaderLog, 'utf8')).to.match(/the system clock stepped by 60\.\d s/);
    const offset = (await scrape(metricsPort)).get('tessera_clock_offset_seconds')!;
    expect(offset).to.be.within(55, 60.5);
    await admin.deregisterComponent('ext-clk');
  });

  it('a node whose agent dies as the leader\'s clock steps back still goes DOWN within the heartbeat timeout', async () => {
    const t0 = Date.now();
    await killable.kill('SIGKILL');
    stepClock(leaderClock, '+0'); // 60 s back, before the leader heard from the agent again
    // The heartbeat timeout is 3 s (ticks every 250 ms): before, the agent's last report read
    // as 60 s in the future, and the node stayed READY for a minute more.
    await waitFor('clk-other DOWN', async () => (await nodes())['clk-other'] === 'DOWN', 10_000, 100);
    expect(Date.now() - t0).to.be.below(10_000);
    expect((await admin.getClusterStatus()).leader?.id).to.equal('c1');
    expect(fs.readFileSync(leaderLog, 'utf8')).to.match(/the system clock stepped by -60\.\d s/);
  });

  it('an agent whose clock steps 60 s back keeps running its health checks', async () => {
    const [inst] = await running();
    expect(inst.nodeId).to.equal('clk-stepped');
    const restarts = inst.restarts;
    stepClock(agentClock, '-60s');
    await sleep(1_500);
    await execOutput(admin, inst.id, ['rm', '-f', '/tmp/ok']);
    // Checked every second, restarted after two failures: before, no check ran for the minute
    // (the last one read as 60 s in the future).
    await waitFor('the unhealthy instance restarted', async () => ((await admin.listInstances('clk')).instances.find((i) => i.id === inst.id)?.restarts ?? 0) > restarts, 10_000, 100);
    expect(fs.readFileSync(path.join(fleet.dir, 'agent-clk-stepped.log'), 'utf8')).to.match(/the system clock stepped by -60\.\d s/);
  });

  it('jobs run through an agent whose clock is 30 s ahead of the leader\'s', async () => {
    stepClock(agentClock, '+30s');
    await admin.applyApp({
      name: 'clkjobs', components: [{
        name: 'splitter', image: 'tessera/components:local', command: ['node', '/app/splitter.js'], ports: [{ name: 'grpc' }], instances: 1,
        health: { type: 'tcp', port: 'grpc', intervalMs: 300, timeoutMs: 250, graceMs: 5000 }, resources: { cpuMillis: 50, memoryMib: 64 }, stopGraceMs: 500,
        constraints: [{ label: 'clock', op: '=', value: 'stepped' }],
      }],
    });
    await admin.applyPipeline({ name: 'clkjobs', defaultTimeoutMs: 10_000, stages: [{ name: 'split', kind: 'splitter', operation: 'split' }] });
    await waitFor('the splitter healthy', async () => (await admin.listInstances('clkjobs')).instances.some((i) => i.health === 'healthy'), 60_000, 200);
    await waitFor('the splitter routable', async () => (await admin.listComponents('splitter')).instances.length === 1, 10_000, 100);
    // The relay request carries the time left (10 s), not the leader's deadline: read on the
    // agent's clock, that deadline had passed 20 s before, and every step failed with
    // DEADLINE_EXCEEDED "deadline already passed" (the instance then suspect: the stage unavailable).
    for (let i = 0; i < 3; i++) {
      const job = await admin.submitJob({ pipeline: 'clkjobs', payload: Buffer.from('a b a'), wait: true });
      expect(job.state, `${job.reason} ${job.steps.map((x) => x.error).join(' ')}`).to.equal('JOB_STATE_SUCCEEDED');
    }
    // The leader tells the operator how far off the host's clock is (from the agent's reports).
    await waitFor('the node\'s clock offset known', async () => Math.abs(Number((await admin.getNode('clk-stepped')).clockOffsetMs) - 30_000) < 1_500, 10_000, 200);
    const cli = execFileSync(process.execPath, [path.join(__dirname, '../../coordinator/cli/main.js'), '-c', leaderAddress, 'node', 'get', 'clk-stepped']).toString();
    expect(cli).to.match(/clock: +(29|30)\.\d s ahead of the leader's \(is NTP running there\?/);
    const m = await scrape(metricsPort);
    expect(m.get('tessera_node_clock_offset_seconds{node="clk-stepped"}')).to.be.within(28.5, 31.5);
    expect((await pastEvents(admin, ['node.clock_skew'])).some((e) => e.subject === 'clk-stepped')).to.equal(true);
  });
});
