// App records have several writers on the leader (reconcile, apply, rollback, delete), each
// reading the record and writing it after an await. Against a real etcd and the real
// Deployments and Store: a delete racing a reconcile round that updates the app's status must
// not be undone by the round's stale copy (a CI run once kept a deleted app running this way).
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

describe('app records under concurrent writers', function () {
  this.timeout(30_000);
  let etcd: EtcdCluster;
  const log = createLogger('test', 'silent');

  before(async () => { etcd = await EtcdCluster.start(1); });
  after(async () => etcd?.stop());

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
