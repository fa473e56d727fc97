// Removing nodes: an operator forgets a DOWN node (`tessera node remove`, as nomad node purge or
// kubectl delete node), and the leader forgets nodes DOWN past --node-gc-threshold-ms by itself
// (Nomad's node_gc_threshold). Real etcd, coordinator and agent processes, real containers.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';

const run = promisify(execFile);

describe('removing nodes', function () {
  this.timeout(120_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let address: string;
  const state = async (id: string) => (await admin.listNodes()).nodes.find((n) => n.id === id)?.state;
  const app = {
    name: 'pinned', components: [{
      name: 'web', image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
      constraints: [{ label: 'role', op: '=', value: 'kept' }],
    }],
  };

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    // GC after 4 s DOWN; an agent silent for 2 s is DOWN (and no node is DOWN in the 2 s grace after the election).
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: 2_000, failoverGraceMs: 2_000, extra: ['--node-gc-threshold-ms', '4000'] });
    address = c1.address;
    await waitForLeader([c1.address]);
    admin = new AdminClient([c1.address]);
  });

  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers('tessera.app=pinned');
  });

  it('refuses to remove a node that is not DOWN, or one it does not know', async () => {
    fleet.agent({ coordinators: [address], nodeId: 'rm-ready', extra: ['--port-range', laneRange('30450-30469')] });
    await waitFor('rm-ready READY', async () => (await state('rm-ready')) === 'NODE_STATE_READY', 20_000, 100);
    const err = await admin.removeNode('rm-ready').catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(err.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(err.details).to.match(/node rm-ready is READY: only a DOWN node can be removed/);
    expect((await admin.removeNode('no-such-node').catch((e: grpc.ServiceError) => e) as grpc.ServiceError).code).to.equal(grpc.status.NOT_FOUND);
    expect((await admin.removeNode('-bad id').catch((e: grpc.ServiceError) => e) as grpc.ServiceError).code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(await state('rm-ready')).to.equal('NODE_STATE_READY');
  });

  it('forgets a DOWN node on request (CLI), and an agent that comes back with its id registers again and gets its work back', async () => {
    const agent = fleet.agent({ coordinators: [address], nodeId: 'rm-kept', extra: ['--port-range', laneRange('30470-30489'), '--labels', 'role=kept'] });
    await waitFor('rm-kept READY', async () => (await state('rm-kept')) === 'NODE_STATE_READY', 20_000, 100);
    await admin.applyApp(app);
    const running = async () => (await admin.listInstances('pinned')).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.nodeId === 'rm-kept');
    await waitFor('the pinned instance RUNNING', async () => (await running()).length === 1, 60_000, 200);
    const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
    // What runs on the node (as nomad node status ID): the instance, with its app and component.
    const shown = (await run(process.execPath, [cli, '-c', address, 'node', 'get', 'rm-kept'])).stdout;
    expect(shown).to.match(new RegExp(`${(await running())[0].id}\\s+pinned\\s+web\\s+\\d+\\s+RUNNING`));
    await agent.kill('SIGKILL'); // the agent goes; its container stays (static stability)
    // Its stream closed: the node says at once that no coordinator holds it (READY until the
    // heartbeat timeout). It kept naming the leader: the stream was matched by the agent's session id.
    await waitFor('rm-kept connected to no coordinator', async () => { const n = await admin.getNode('rm-kept'); return n.connectedTo === '' && n.state === 'NODE_STATE_READY'; }, 1_500, 50);
    await waitFor('rm-kept DOWN', async () => (await state('rm-kept')) === 'NODE_STATE_DOWN', 20_000, 50);
    const out = await run(process.execPath, [cli, '-c', address, 'node', 'remove', 'rm-kept', '--reason', 'host decommissioned']);
    expect(out.stdout.trim()).to.equal('node rm-kept removed');
    expect(await state('rm-kept')).to.equal(undefined);
    const removed = (await pastEvents(admin, ['node.removed'])).filter((e) => e.subject === 'rm-kept');
    expect(removed).to.have.length(1);
    expect(removed[0].message).to.match(/^node rm-kept \(.+\) removed: host decommissioned$/);
    expect((await run(process.execPath, [cli, '-c', address, 'node', 'remove', 'rm-kept']).catch((e: { stderr: string }) => e)).stderr).to.match(/NOT_FOUND/);

    // The agent comes back under the same id: a new registration; the pinned instance (lost with
    // its node) runs there again, one of it: the old container is not kept beside a new one.
    fleet.agent({ coordinators: [address], nodeId: 'rm-kept', extra: ['--port-range', laneRange('30470-30489'), '--labels', 'role=kept'] });
    await waitFor('rm-kept READY again', async () => (await state('rm-kept')) === 'NODE_STATE_READY', 20_000, 100);
    expect((await pastEvents(admin, ['node.registered'])).filter((e) => e.subject === 'rm-kept')).to.have.length(2);
    await waitFor('the pinned instance RUNNING again', async () => (await running()).length === 1, 60_000, 200);
    await waitFor('one container for it', async () => {
      const { stdout } = await run('docker', ['ps', '-q', '--filter', 'label=tessera.app=pinned', '--filter', 'label=tessera.node=rm-kept']);
      return stdout.trim().split('\n').filter(Boolean).length === 1;
    }, 30_000, 300);
  });

  it('forgets a node DOWN past the node GC threshold by itself', async () => {
    const agent = fleet.agent({ coordinators: [address], nodeId: 'rm-gc', extra: ['--port-range', laneRange('30490-30499')] });
    await waitFor('rm-gc READY', async () => (await state('rm-gc')) === 'NODE_STATE_READY', 20_000, 100);
    await agent.kill('SIGKILL');
    await waitFor('rm-gc DOWN', async () => (await state('rm-gc')) === 'NODE_STATE_DOWN', 20_000, 100);
    const downAt = Date.now();
    await waitFor('rm-gc forgotten', async () => (await state('rm-gc')) === undefined, 20_000, 200);
    expect(Date.now() - downAt, 'not before the threshold').to.be.at.least(3_000);
    const [e] = (await pastEvents(admin, ['node.removed'])).filter((x) => x.subject === 'rm-gc');
    expect(e.message).to.match(/removed: DOWN for more than 4 s \(node garbage collection\)/);
    // A READY node is never collected.
    expect(await state('rm-ready')).to.equal('NODE_STATE_READY');
  });

  it('an agent frozen while its node was collected registers again when it thaws (its old stream is closed)', async () => {
    const agent = fleet.agent({ coordinators: [address], nodeId: 'rm-frozen', extra: ['--port-range', laneRange('30500-30519')] });
    await waitFor('rm-frozen READY', async () => (await state('rm-frozen')) === 'NODE_STATE_READY', 20_000, 100);
    agent.pause(); // SIGSTOP: its stream stays open, it says nothing
    try {
      await waitFor('rm-frozen forgotten', async () => (await state('rm-frozen')) === undefined, 30_000, 200);
    } finally {
      agent.resume();
    }
    await waitFor('rm-frozen READY again', async () => (await state('rm-frozen')) === 'NODE_STATE_READY', 30_000, 200);
    expect((await pastEvents(admin, ['node.registered'])).filter((e) => e.subject === 'rm-frozen')).to.have.length(2);
  });
});
