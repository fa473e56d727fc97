// Identities that must be unique. A node id belongs to one agent: the agent keeps a random uid in its state dir beside the node
// id, and a second agent that says hello under a node id another agent holds (a cloned config, two
// hosts given the same --node-id) is refused while the node is not DOWN, as Nomad refuses a node
// whose secret id does not match. Without it the two agents took turns on the node's stream, each
// hello replacing the other's, and the leader read each one's containers as the node's.
// A coordinator id belongs to one coordinator: a second one started under an id another
// coordinator campaigns with (from another address) does not campaign while that one does, and
// serves as a follower meanwhile (self known by its candidacy's nonce, not its id).
// Real etcd, real coordinators and agents, real containers.
import { expect } from 'chai';
import { Etcd3 } from 'etcd3';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { AdminClient } from '../../common/admin-client';
import { healthClient, pastEvents, statusOf, waitForLeader } from '../helpers/cluster';
import { removeContainers } from '../helpers/docker';
import { waitFor } from '../helpers/ports';
import { etcdAndFleet } from '../helpers/suite';
import { laneRange } from '../helpers/lane';

describe('node identity: one agent per node id', function () {
  this.timeout(120_000);
  const s = etcdAndFleet({ afterStop: () => removeContainers('tessera.app=twinapp') });
  let admin: AdminClient;
  let address: string;
  const node = async () => (await admin.listNodes()).nodes.find((n) => n.id === 'twin');
  const containers = () => execFileSync('docker', ['ps', '-q', '--filter', 'label=tessera.app=twinapp']).toString().trim().split('\n').filter(Boolean);

  before(async () => {
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, heartbeatTimeoutMs: 2_000, failoverGraceMs: 2_000 });
    address = c.address;
    await waitForLeader([address]);
    admin = new AdminClient([address]);
  });
  after(() => admin?.close());

  it('refuses a second agent under a node id another agent holds, until that node is DOWN', async () => {
    const a = s.fleet.agent({ coordinators: [address], nodeId: 'twin', name: 'twin-a', extra: ['--port-range', laneRange('30740-30749'), '--hostname', 'host-a'] });
    await waitFor('twin READY', async () => (await node())?.state === 'NODE_STATE_READY', 20_000, 100);
    await admin.applyApp({ name: 'twinapp', components: [{ name: 'web', image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100 }] });
    const running = async () => (await admin.listInstances('twinapp')).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING');
    await waitFor('the instance RUNNING', async () => (await running()).length === 1, 60_000, 200);
    const [first] = await running();

    const b = s.fleet.agent({ coordinators: [address], nodeId: 'twin', name: 'twin-b', extra: ['--port-range', laneRange('30750-30759'), '--hostname', 'host-b'] });
    await waitFor('the second agent told why', async () => /held by another agent/.test(fs.readFileSync(b.logFile, 'utf8')), 20_000, 200);
    // It keeps trying (with its backoff) and keeps being refused; the node stays the first one's.
    await new Promise((r) => setTimeout(r, 3_000));
    const refusedLines = fs.readFileSync(b.logFile, 'utf8').split('\n').filter((l) => /held by another agent/.test(l));
    expect(refusedLines[0], 'logged as an error').to.match(/"level":"error"/);
    const n = await node();
    expect(n?.hostname).to.equal('host-a');
    expect(n?.state).to.equal('NODE_STATE_READY');
    expect(n?.connectedTo, 'the first agent keeps its stream').to.not.equal('');
    expect(fs.readFileSync(a.logFile, 'utf8')).to.not.match(/held by another agent/);
    const agentLog = fs.readFileSync(a.logFile, 'utf8').split('\n').filter((l) => /attached to leader/.test(l));
    expect(agentLog, 'the first agent was never pushed off').to.have.length(1);
    // One event for the refused agent, not one per attempt.
    const refused = (await pastEvents(admin, ['node.agent_refused'])).filter((e) => e.subject === 'twin');
    expect(refused).to.have.length(1);
    expect(refused[0].message).to.match(/^a second agent \(host host-b, uid [0-9a-f]{8}\) said hello as node twin, held by the agent of host host-a \(uid [0-9a-f]{8}\): refused while the node is READY/);
    // The instance is untouched: the same one RUNNING, one container.
    expect((await running()).map((i) => i.id)).to.deep.equal([first.id]);
    expect(containers()).to.have.length(1);

    // The first agent goes for good: once the node is DOWN the second one may take it over.
    await a.kill('SIGKILL');
    await waitFor('twin READY with host-b', async () => { const x = await node(); return x?.hostname === 'host-b' && x.state === 'NODE_STATE_READY'; }, 30_000, 100);
    const [replaced] = (await pastEvents(admin, ['node.agent_replaced'])).filter((e) => e.subject === 'twin');
    expect(replaced?.message).to.match(/^node twin: its agent changed \(host host-a, uid [0-9a-f]{8} -> host host-b, uid [0-9a-f]{8}\) while it was DOWN$/);
    await waitFor('the instance RUNNING once more', async () => (await running()).length === 1 && containers().length === 1, 60_000, 200);
    // A restart of the agent that holds the node is the same agent (its uid is in its state dir).
    const attached = () => fs.readFileSync(b.logFile, 'utf8').split('\n').filter((l) => /attached to leader/.test(l)).length;
    const before = attached();
    await b.kill('SIGTERM');
    s.fleet.agent({ coordinators: [address], nodeId: 'twin', name: 'twin-b', extra: ['--port-range', laneRange('30750-30759'), '--hostname', 'host-b'] });
    await waitFor('twin reattached', async () => attached() === before + 1 && (await node())?.connectedTo !== '', 20_000, 100);
    expect((await pastEvents(admin, ['node.agent_refused'])).filter((e) => e.subject === 'twin')).to.have.length(1);
  });
});

describe('coordinator identity: one coordinator per id', function () {
  this.timeout(60_000);
  const s = etcdAndFleet();

  it('a second coordinator under a campaigning id does not campaign, says why, forwards writes and redirects agents; it leads once the first is gone', async () => {
    const first = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'cx' });
    await waitForLeader([first.address]);
    // Every election key put while the second runs beside the first: none may be the second's.
    const etcd = new Etcd3({ hosts: s.etcd.endpoints });
    const puts: string[] = [];
    const watcher = await etcd.watch().prefix('/tessera/election/').create();
    watcher.on('put', (kv) => puts.push(kv.value.toString()));
    const second = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'cx', extra: ['--data-dir', `${s.fleet.dir}/cx-second`] });
    const health = healthClient(second.address);
    const admin = new AdminClient([second.address]);
    try {
      await waitFor('the second says why', async () => /coordinator id cx is in use by the coordinator at/.test(fs.readFileSync(second.logFile, 'utf8')), 10_000, 100);
      const line = fs.readFileSync(second.logFile, 'utf8').split('\n').find((l) => /coordinator id cx is in use/.test(l))!;
      expect(line).to.match(/"level":"error"/);
      expect(line).to.contain(first.address);
      const st = await statusOf(second.address);
      expect(st?.leader?.address).to.equal(first.address);
      expect(st?.coordinators.filter((c) => c.id === 'cx'), 'one candidate named cx').to.have.length(1);
      expect(st?.refusal).to.match(/^coordinator id cx is in use by the coordinator at .+: give each coordinator its own --id/);
      await waitFor('the second NOT_SERVING', async () => (await health.check('')) === 'NOT_SERVING', 5_000, 100);
      // It is a follower all the same: an agent that knows only it is sent to the leader...
      s.fleet.agent({ coordinators: [second.address], nodeId: 'via-second', extra: ['--port-range', laneRange('30760-30769')] });
      await waitFor('the agent READY on the leader', async () => (await admin.listNodes()).nodes.some((n) => n.id === 'via-second' && n.state === 'NODE_STATE_READY' && n.connectedTo === 'cx'), 20_000, 100);
      // ...and a write through it is forwarded there.
      expect((await admin.cordonNode({ nodeId: 'via-second', reason: 'through the second' })).cordoned).to.equal(true);
      const direct = new AdminClient([first.address]);
      expect((await direct.getNode('via-second')).cordonReason).to.equal('through the second');
      direct.close();
      expect((await statusOf(first.address))?.refusal).to.equal('');
      await watcher.cancel();
      expect(puts.filter((v) => v.includes(second.address)), 'election keys the second put beside the first').to.deep.equal([]);
      etcd.close();

      // The first goes: the second campaigns and leads, and serves.
      await first.kill('SIGTERM');
      await waitFor('the second leads', async () => (await statusOf(second.address))?.leader?.address === second.address, 10_000, 100);
      expect((await statusOf(second.address))?.refusal).to.equal('');
      await waitFor('the second SERVING', async () => (await health.check('tessera.v1.Leader')) === 'SERVING', 10_000, 100);
      const agentLog = `${s.fleet.dir}/agent-via-second.log`;
      await waitFor('the agent attached to the second', async () => fs.readFileSync(agentLog, 'utf8').split('\n').some((l) => /attached to leader/.test(l) && l.includes(`"address":"${second.address}"`)), 20_000, 100);
      await waitFor('its node READY', async () => (await admin.listNodes()).nodes.some((n) => n.id === 'via-second' && n.state === 'NODE_STATE_READY'), 10_000, 100);
    } finally {
      health.close();
      admin.close();
    }
  });
});

describe('coordinator identity: a coordinator back at another address', function () {
  this.timeout(60_000);
  const s = etcdAndFleet();

  it('killed and started again under its id at another address, it waits for its old candidacy to expire, then leads', async () => {
    // TTL 6 s: the new process must start while the old candidacy stands (with 2 s, a busy
    // machine started it after the lease had run out, and there was nothing to wait for).
    const before = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'cy', ttl: 6 });
    await waitForLeader([before.address]);
    await before.kill('SIGKILL'); // its candidacy stays until its lease expires
    const after = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'cy', ttl: 6, extra: ['--data-dir', `${s.fleet.dir}/cy-after`] });
    await waitFor('it leads', async () => (await statusOf(after.address))?.leader?.address === after.address, 15_000, 100);
    expect(fs.readFileSync(after.logFile, 'utf8')).to.match(/the other coordinator with id cy is gone: campaigning again/);
  });
});
