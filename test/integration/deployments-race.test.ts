// App and node records have several writers on the leader (apps: reconcile, apply, rollback,
// delete; nodes: hello, drain, liveness ticks, status writes), each reading the record and
// writing it after an await. Against a real etcd and the real Deployments, NodeRegistry and
// Store: a delete racing a reconcile round that updates the app's status must not be undone by
// the round's stale copy (a CI run once kept a deleted app running this way), nor a drain by a
// status write (a CI run once answered a drain DRAINING and kept the node READY).
// The agent gateway is a stand-in: no agents are attached, so nothing is ever sent through it.
import { expect } from 'chai';
import { createEtcdClient } from '../../common/etcd';
import { createLogger } from '../../common/logger';
import type { AgentGateway } from '../../coordinator/agent-gateway';
import { Deployments } from '../../coordinator/deployments';
import { Keys } from '../../coordinator/keys';
import { FenceToken, Leadership } from '../../coordinator/leadership';
import { NodeRegistry } from '../../coordinator/node-registry';
import { Store } from '../../coordinator/store';
import { EtcdCluster } from '../helpers/etcd';

describe('app and node records under concurrent writers', function () {
  this.timeout(30_000);
  let etcd: EtcdCluster;
  const log = createLogger('test', 'silent');

  before(async () => { etcd = await EtcdCluster.start(1); });
  after(async () => etcd?.stop());

  it('keeps a drain that lands while the node status is written', async () => {
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    const keys = new Keys('/race-nodes/');
    const l = new Leadership(client, keys, { id: 'a', address: 'a:1' }, { ttlSeconds: 5, marginMs: 700 }, log);
    const elected = new Promise<FenceToken>((r) => l.once('elected', r));
    l.start();
    await elected;
    try {
      const registry = new NodeRegistry(new Store(client, keys, l, log), keys, { heartbeatTimeoutMs: 10_000, failoverGraceMs: 0, coordinatorId: 'a' }, log);
      await registry.load();
      await registry.hello({ nodeId: 'n1', hostname: 'h1', labels: {}, capacity: { cpuMillis: 1000, memoryMib: 1024, diskMib: 1024 }, agentVersion: '0', endpoint: '', instances: [], sessionId: 's' } as never, 'stream-1');
      for (let round = 0; round < 6; round++) {
        const drain = round % 2 === 0;
        // A report makes the node's status due for writing; the drain (called first) is being
        // written when the status write reads the node.
        registry.report('n1', { host: { cpuPercent: round }, instances: [] } as never);
        const drained = registry.drain('n1', !drain, 'kernel upgrade');
        const persisted = registry.persistStatus();
        await Promise.all([drained, persisted]);
        const want = drain ? 'DRAINING' : 'READY';
        expect(registry.get('n1').state, `round ${round}: the leader's copy`).to.equal(want);
        const stored = JSON.parse((await client.get(keys.node('n1')).string())!);
        expect([stored.state, stored.drain], `round ${round}: etcd`).to.deep.equal([want, drain]);
      }
    } finally {
      await l.stop();
      client.close();
    }
  });

  it('keeps a delete that lands while a reconcile round writes the app status', async () => {
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    const keys = new Keys('/race/');
    const l = new Leadership(client, keys, { id: 'a', address: 'a:1' }, { ttlSeconds: 5, marginMs: 700 }, log);
    const elected = new Promise<FenceToken>((r) => l.once('elected', r));
    l.start();
    await elected;
    try {
      const store = new Store(client, keys, l, log);
      const registry = new NodeRegistry(store, keys, { heartbeatTimeoutMs: 10_000, failoverGraceMs: 0, coordinatorId: 'a' }, log);
      const gateway = { connectedNodes: () => [], send: () => false } as unknown as AgentGateway;
      const dep = new Deployments(store, keys, registry, gateway, { sampleSize: 0, coordinatorId: 'a' }, log);
      await registry.load();
      await dep.load();
      for (let round = 0; round < 5; round++) {
        const name = `race${round}`;
        await dep.apply({ name, components: [{ name: 'web', image: 'tessera/busybox:local', instances: 0, resources: { cpuMillis: 10, memoryMib: 16 } }] } as never, false);
        expect(dep.getApp(name).status).to.equal('deploying');
        // With no instances to wait for, this round finds the rollout complete and writes the app
        // as running, while the delete (called first) is being written.
        const deleted = dep.delete(name);
        const ticked = dep.tick();
        await Promise.all([deleted, ticked]);
        // Being deleted, or gone already (the round ran after the delete): never back to running.
        const raw = await client.get(keys.app(name)).string();
        if (raw !== null) {
          expect(JSON.parse(raw).deleting, `round ${round}: etcd`).to.equal(true);
          expect(dep.getApp(name).status, `round ${round}: the leader's copy`).to.equal('deleting');
        }
        await dep.tick();
        expect(await client.get(keys.app(name)).string(), `round ${round}: removed`).to.equal(null);
        expect(dep.listApps().map((a) => a.name)).to.not.include(name);
      }
    } finally {
      await l.stop();
      client.close();
    }
  });
});
