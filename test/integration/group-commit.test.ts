// Group commit against a real etcd: concurrent callers share transactions, every record is
// durable when its promise resolves, and a lost leadership fails the whole batch with nothing
// written.
import { expect } from 'chai';
import { createEtcdClient } from '../../common/etcd';
import { FencedError, NotLeaderError } from '../../common/errors';
import { createLogger } from '../../common/logger';
import { GroupCommitter } from '../../coordinator/group-commit';
import { Keys } from '../../coordinator/keys';
import { FenceToken, Leadership } from '../../coordinator/leadership';
import { Store } from '../../coordinator/store';
import { EtcdCluster } from '../helpers/etcd';

describe('group commit of leader records', function () {
  this.timeout(30_000);
  let etcd: EtcdCluster;
  const log = createLogger('test', 'silent');

  before(async () => { etcd = await EtcdCluster.start(1); });
  after(async () => etcd?.stop());

  it('shares transactions among concurrent callers, and each record is durable when acknowledged', async () => {
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    const keys = new Keys('/gc/');
    const l = new Leadership(client, keys, { id: 'a', address: 'a:1' }, { ttlSeconds: 2, marginMs: 700 }, log);
    const elected = new Promise<FenceToken>((r) => l.once('elected', r));
    l.start();
    const token = await elected;
    const gc = new GroupCommitter(new Store(client, keys, l, log));
    try {
      const n = 1_000;
      await Promise.all(Array.from({ length: n }, (_, i) => gc.commit([{ type: 'put', key: `/gc/jobs/${String(i).padStart(5, '0')}`, value: `job ${i}` }]).then(async () => {
        if (i % 250 === 0) expect(await client.get(`/gc/jobs/${String(i).padStart(5, '0')}`).string()).to.equal(`job ${i}`);
      })));
      expect(await client.getAll().prefix('/gc/jobs/').count()).to.equal(n);
      expect(gc.transactions, `${gc.transactions} transactions for ${n} records`).to.be.lessThan(n / 5);

      // Ops queued in the same event-loop turn (a relay batch's jobs ending together) share one
      // transaction: the first does not go alone with the rest a whole round trip behind it.
      const before = gc.transactions;
      await Promise.all(Array.from({ length: 40 }, (_, i) => gc.commit([{ type: 'put', key: `/gc/turn/${i}`, value: 'x' }])));
      expect(gc.transactions - before, 'transactions for 40 ops queued in one turn').to.equal(1);

      // A record's end queued right behind its start (a fast job) names the same key: it goes
      // in the next transaction, in order, instead of failing the batch (etcd refuses a key twice).
      const same = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => [
        gc.commit([{ type: 'put', key: `/gc/active/${i}`, value: 'start' }]),
        gc.commit([{ type: 'delete', key: `/gc/active/${i}` }, { type: 'put', key: `/gc/done/${i}`, value: 'end' }]),
      ]).flat());
      expect(same.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).to.deep.equal([]);
      expect(await client.getAll().prefix('/gc/active/').count()).to.equal(0);
      expect(await client.getAll().prefix('/gc/done/').count()).to.equal(50);

      // Lazy ops wait for a transaction someone else needs, and ride along with it: a job's end
      // record goes with the next starts instead of a transaction of its own.
      const patient = new GroupCommitter(new Store(client, keys, l, log), 100, 1024 * 1024, 600_000); // lazy ops wait 10 min
      const lazy = Promise.all(Array.from({ length: 10 }, (_, i) => patient.commit([{ type: 'put', key: `/gc/lazy/${i}`, value: 'end' }], { lazy: true })));
      await new Promise((r) => setTimeout(r, 50));
      expect(patient.transactions, 'lazy ops alone start no transaction at once').to.equal(0);
      await patient.commit([{ type: 'put', key: '/gc/eager', value: 'start' }]);
      await lazy;
      expect(patient.transactions, 'lazy ops ride with the eager one').to.equal(1);
      expect(await client.getAll().prefix('/gc/lazy/').count()).to.equal(10);
      // A graceful step-down drains them: written at once, not after their wait.
      void patient.commit([{ type: 'put', key: '/gc/drained', value: 'end' }], { lazy: true });
      await patient.drain();
      expect(await client.get('/gc/drained').string()).to.equal('end');
      // Alone, they go after a short while.
      await gc.commit([{ type: 'put', key: '/gc/lazy-alone', value: 'x' }], { lazy: true });
      expect(await client.get('/gc/lazy-alone').string()).to.equal('x');
      // An eager op goes first, but never ahead of a lazy op on the same key queued before it.
      await Promise.all([
        gc.commit([{ type: 'put', key: '/gc/order', value: 'first' }], { lazy: true }),
        gc.commit([{ type: 'put', key: '/gc/order', value: 'second' }]),
      ]);
      expect(await client.get('/gc/order').string()).to.equal('second');

      // Leadership gone: the batch is refused and nothing of it is written.
      await client.delete().key(token.key);
      const results = await Promise.allSettled([0, 1, 2].map((i) => gc.commit([{ type: 'put', key: `/gc/late/${i}`, value: 'x' }])));
      for (const r of results) {
        expect(r.status).to.equal('rejected');
        const reason = (r as PromiseRejectedResult).reason;
        expect(reason instanceof FencedError || reason instanceof NotLeaderError, String(reason)).to.equal(true);
      }
      expect(await client.getAll().prefix('/gc/late/').count()).to.equal(0);
      await gc.commit(Array.from({ length: 101 }, (_, i) => ({ type: 'put' as const, key: `/gc/x/${i}`, value: '' }))).then(() => expect.fail('expected RangeError'), (e) => expect(e).to.be.instanceOf(RangeError));
    } finally {
      await l.stop();
      client.close();
    }
  });
});
