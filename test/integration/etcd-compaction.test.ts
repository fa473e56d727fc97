// The leader compacts etcd's history (kube-apiserver's way): without it etcd's database grows
// with every status write and job record until its quota turns the cluster read-only.
import { expect } from 'chai';
import { createEtcdClient } from '../../common/etcd';
import { etcdAndFleet } from '../helpers/suite';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';

describe('etcd history compaction by the leader', function () {
  this.timeout(60_000);

  const suite = etcdAndFleet();

  it('compacts to the revision it noted an interval earlier, keeping at least one interval of history', async () => {
    const c = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 'k1', extra: ['--etcd-compaction-interval-ms', '1000'] });
    await waitForLeader([c.address]);
    const client = createEtcdClient({ endpoints: suite.etcd.endpoints });
    try {
      await client.put('/probe').value('old');
      const old = Number((await client.get('/probe').exec()).header.revision);
      await client.put('/probe').value('new');
      // The old revision reads until the leader compacts past it (noted at one tick, compacted at the next).
      expect(await client.get('/probe').revision(String(old)).string()).to.equal('old');
      await waitFor('the old revision compacted', async () => {
        try {
          await client.get('/probe').revision(String(old)).string();
          return false;
        } catch (err) {
          return /compacted/.test((err as Error).message);
        }
      }, 20_000, 200);
      expect(await client.get('/probe').string()).to.equal('new');
      expect(suite.fleet.dump()).to.match(/etcd history compacted/);
    } finally {
      client.close();
    }
  });
});
