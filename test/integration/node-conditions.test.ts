// Node conditions, as Kubernetes' (a node whose container runtime is down turns NotReady;
// DiskPressure): a host whose Docker Engine stops answering (dockerd stopped, crashed or hung),
// and one whose image filesystem is fuller than its agent's --disk-pressure-percent. The agent
// says so in its reports, the leader records it with an event and places nothing new there, and
// all of it is undone when the condition is over. The agent reaches the real Engine through a
// unix-socket proxy the test cuts. Real etcd, coordinator and agent processes, real containers.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdminClient } from '../../common/admin-client';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { etcdAndFleet } from '../helpers/suite';
import { TcpProxy } from '../helpers/tcp-proxy';
import { scrapeText } from '../helpers/scrape';
import { repoRoot } from '../../common/version';

describe('nodes that take no new instances: conditions, and a cordon', function () {
  this.timeout(120_000);
  // The agents first: one still running would start again the containers removed under it.
  const s = etcdAndFleet({ cleanup: async () => {
    for (const p of s.fleet.procs) await p.kill('SIGTERM');
    removeContainers('tessera.app=rtdown');
    removeContainers('tessera.app=dp');
    removeContainers('tessera.app=evict');
    removeContainers('tessera.app=cordon');
  } });
  const comp = (instances: number) => ({ name: 'w', image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 100, memoryMib: 16 }, instances, stopGraceMs: 100 });
  const conditions = async (admin: AdminClient, id: string) => (await admin.getNode(id)).conditions.map((c) => c.type);
  const after: (() => unknown)[] = [];
  afterEach(async () => {
    while (after.length) await after.pop()!();
  });

  /**
   * A coordinator leading a cluster of its own on the suite's etcd (an etcd prefix: the clusters
   * of earlier tests are still up), its Admin client and CLI, and agents [node id, flags], READY.
   */
  async function cluster(prefix: string, coordinatorFlags: string[], agents: [string, string[]][]) {
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, extra: ['--reconcile-interval-ms', '200', '--etcd-prefix', prefix, ...coordinatorFlags] });
    await waitForLeader([c.address]);
    const admin = new AdminClient([c.address]);
    after.push(() => admin.close());
    const cli = (...args: string[]) => execFileSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', c.address, ...args], { encoding: 'utf8' });
    const procs = agents.map(([nodeId, extra]) => s.fleet.agent({ coordinators: [c.address], nodeId, reportIntervalMs: 500, extra }));
    await waitFor(`${agents.length} node(s) READY`, async () => (await admin.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === agents.length, 20_000, 100);
    return { admin, cli, agents: procs };
  }

  /** The real Engine behind a unix-socket proxy the test cuts (an agent's --docker-socket). */
  async function engineProxy(name: string): Promise<{ engine: TcpProxy; socket: string }> {
    const engine = new TcpProxy('/var/run/docker.sock');
    const socket = path.join(s.fleet.dir, `${name}.sock`);
    await engine.start(socket);
    after.push(() => engine.stop());
    return { engine, socket };
  }

  it('a node whose Docker Engine does not answer is RUNTIME-DOWN with an event, takes no new instances, and takes them again once the Engine answers', async () => {
    const { engine, socket } = await engineProxy('engine-rt');
    const metricsPort = await freePort();
    const runtimeDownGauge = async () => /^tessera_node_conditions\{type="runtime-down"\} (\d+)$/m.exec(await scrapeText(metricsPort))?.[1];
    const { admin, cli } = await cluster('/tessera-rt/', ['--metrics-listen', `127.0.0.1:${metricsPort}`], [['rt-a', ['--docker-socket', socket, '--cpu-millis', '1000']], ['rt-b', ['--cpu-millis', '1000']]]);
    expect(await conditions(admin, 'rt-a')).to.deep.equal([]);

    engine.breakLink();
    await waitFor('rt-a reported with its runtime down', async () => (await conditions(admin, 'rt-a')).includes('runtime-down'), 10_000, 100);
    const down = await admin.getNode('rt-a');
    expect(down.state, 'the node itself stays READY: its agent reports').to.equal('NODE_STATE_READY');
    expect(down.conditions[0].message).to.match(/^Docker Engine: ./);
    expect((await pastEvents(admin, ['node.runtime_'])).map((e) => `${e.kind} ${e.subject}`)).to.deep.equal(['node.runtime_down rt-a']);
    // The CLI shows it as kubectl shows Ready,SchedulingDisabled.
    const nodes = cli('nodes');
    expect(nodes).to.match(/rt-a\s+\S+\s+READY,RUNTIME-DOWN/);
    expect(nodes).to.match(/rt-b\s+\S+\s+READY\s/);
    expect(await runtimeDownGauge()).to.equal('1');

    // Spread would put one of two instances on each node: both go to rt-b.
    await admin.applyApp({ name: 'rtdown', components: [comp(2)] });
    const running = async () => (await admin.listInstances('rtdown')).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING');
    await waitFor('2 instances running', async () => (await running()).length === 2, 30_000, 200);
    expect((await running()).map((i) => i.nodeId)).to.deep.equal(['rt-b', 'rt-b']);
    // More than rt-b can take alone (10 of 100 millicores): the rest cannot be placed, and say why.
    const res = await admin.applyApp({ name: 'rtdown', components: [comp(12)] });
    expect(JSON.stringify(res)).to.contain('runtime-down: Docker Engine: ');

    engine.restore();
    await waitFor('rt-a reported with its runtime reachable', async () => (await conditions(admin, 'rt-a')).length === 0, 10_000, 100);
    expect((await pastEvents(admin, ['node.runtime_'])).map((e) => `${e.kind} ${e.subject}`)).to.deep.equal(['node.runtime_down rt-a', 'node.runtime_up rt-a']);
    expect(await runtimeDownGauge()).to.equal('0');
    // What could not be placed goes to rt-a now.
    await waitFor('12 instances running', async () => (await running()).length === 12, 60_000, 200);
    expect((await running()).filter((i) => i.nodeId === 'rt-a').length).to.equal(2);
  });

  it('a node over its --disk-pressure-percent is DISK-PRESSURE with an event and takes no new instances; SIGHUP with the threshold off ends it', async () => {
    const file = path.join(s.fleet.dir, 'agent-dp.yaml');
    // Any disk in use is over 1%.
    fs.writeFileSync(file, 'diskPressurePercent: 1\n');
    const { admin, cli, agents: [agent] } = await cluster('/tessera-dp/', [], [['dp', ['--config', file]]]);
    await waitFor('dp reported under disk pressure', async () => (await conditions(admin, 'dp').catch((): string[] => [])).includes('disk-pressure'), 20_000, 100);
    const n = await admin.getNode('dp');
    expect(n.conditions[0].message).to.match(/^image filesystem \d+\.\d% full \(over --disk-pressure-percent 1\)$/);
    const res = await admin.applyApp({ name: 'dp', components: [comp(1)] });
    expect(res.unplaced, 'the only node is under pressure').to.have.length(1);
    expect(JSON.stringify(res.unplaced)).to.contain('disk-pressure: image filesystem');
    expect(cli('nodes')).to.match(/dp\s+\S+\s+READY,DISK-PRESSURE/);

    fs.writeFileSync(file, 'diskPressurePercent: 100\n');
    process.kill(agent.pid, 'SIGHUP');
    await waitFor('the pressure over', async () => (await conditions(admin, 'dp')).length === 0, 10_000, 100);
    expect((await pastEvents(admin, ['node.disk_pressure'])).map((e) => `${e.kind} ${e.subject}`)).to.deep.equal(['node.disk_pressure dp', 'node.disk_pressure_over dp']);
    await waitFor('the instance placed and running on dp', async () => (await admin.listInstances('dp')).instances.some((i) => i.nodeId === 'dp' && i.state === 'INSTANCE_STATE_RUNNING'), 30_000, 200);
  });

  it('a node RUNTIME-DOWN past --runtime-down-grace-ms has its instances replaced elsewhere, and their containers stopped once the Engine answers', async () => {
    const { engine, socket } = await engineProxy('engine-ev');
    const { admin } = await cluster('/tessera-evict/', ['--runtime-down-grace-ms', '1500'], [['ev-a', ['--docker-socket', socket]], ['ev-b', []]]);
    await admin.applyApp({ name: 'evict', components: [{ ...comp(2), name: 'e' }] });
    const running = async () => (await admin.listInstances('evict')).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.desired === 'run');
    await waitFor('one instance on each node', async () => (await running()).map((i) => i.nodeId).sort().join() === 'ev-a,ev-b', 30_000, 200);
    const onA = (await running()).find((i) => i.nodeId === 'ev-a')!;

    engine.breakLink();
    // Past the grace, the instance on ev-a is lost (its container may have died with the Engine) and replaced on ev-b.
    await waitFor('the instance replaced on ev-b', async () => (await running()).map((i) => i.nodeId).join() === 'ev-b,ev-b', 20_000, 200);
    const lost = (await pastEvents(admin, ['instance.lost'])).filter((e) => e.subject === onA.id);
    expect(lost.map((e) => e.message)).to.deep.equal([`evict/e instance ${onA.id} on ev-a: node ev-a is RUNTIME-DOWN`]);
    // Its container still runs on the host (the Engine is up; the agent cannot reach it).
    const containerOf = (id: string) => execFileSync('docker', ['ps', '-aq', '--filter', `label=tessera.instance=${id}`]).toString().trim();
    expect(containerOf(onA.id)).to.not.equal('');

    engine.restore();
    await waitFor('the lost instance\'s container stopped and removed once the Engine answers', async () => containerOf(onA.id) === '', 20_000, 200);
    expect((await running()).map((i) => i.nodeId)).to.deep.equal(['ev-b', 'ev-b']);
  });

  it('a cordoned node (tessera node cordon, as kubectl cordon) takes no new instances and keeps those it runs; uncordoned, it takes them again', async () => {
    const { admin, cli } = await cluster('/tessera-cordon/', [], [['co-a', []], ['co-b', []]]);
    const app = (n: number) => admin.applyApp({ name: 'cordon', components: [comp(n)] });
    const running = async () => (await admin.listInstances('cordon')).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.desired === 'run').map((i) => i.nodeId).sort();
    await app(2);
    await waitFor('one instance on each node', async () => (await running()).join() === 'co-a,co-b', 30_000, 200);

    expect(cli('node', 'cordon', 'co-a', '--reason', 'kernel upgrade').trim()).to.equal('node co-a is cordoned: kernel upgrade');
    expect(cli('nodes')).to.match(/co-a\s+\S+\s+READY,CORDONED/);
    expect(cli('node', 'get', 'co-a')).to.contain('cordoned:     kernel upgrade');
    const n = await admin.getNode('co-a');
    expect([n.state, n.cordoned, n.cordonReason]).to.deep.equal(['NODE_STATE_READY', true, 'kernel upgrade']);
    // Two more: both on co-b; the one on co-a stays.
    await app(4);
    await waitFor('4 instances running', async () => (await running()).length === 4, 30_000, 200);
    expect(await running()).to.deep.equal(['co-a', 'co-b', 'co-b', 'co-b']);

    expect(cli('node', 'uncordon', 'co-a').trim()).to.equal('node co-a is uncordoned');
    await app(5);
    await waitFor('5 instances running', async () => (await running()).length === 5, 30_000, 200);
    expect(await running()).to.deep.equal(['co-a', 'co-a', 'co-b', 'co-b', 'co-b']);
    expect((await pastEvents(admin, ['node.cordoned', 'node.uncordoned'])).map((e) => `${e.kind} ${e.subject}`)).to.deep.equal(['node.cordoned co-a', 'node.uncordoned co-a']);
    // Bad input: the status and the field.
    const err = await admin.cordonNode({ nodeId: 'no-such-node' }).catch((e: { code: number; details: string }) => e);
    expect([(err as { code: number }).code, (err as { details: string }).details]).to.deep.equal([5, 'node "no-such-node" not found']);
    const bad = await admin.cordonNode({ nodeId: 'bad id!' }).catch((e: { code: number; details: string }) => e);
    expect((bad as { code: number }).code).to.equal(3);
    expect((bad as { details: string }).details).to.match(/^nodeId: /);
  });
});
