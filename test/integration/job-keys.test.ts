// Idempotency keys under concurrency: one job per key even when a key arrives twice at once, and
// the keys of a batch looked up in etcd together (a client that keys every job, as it should,
// costs etcd one request per batch, not one per job).
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { waitForLeader } from '../helpers/cluster';
import { startEcho } from '../helpers/echo';
import { TcpProxy } from '../helpers/tcp-proxy';
import { waitFor } from '../helpers/ports';
import { scrapeText } from '../helpers/scrape';
import { createEtcdClient } from '../../common/etcd';
import * as grpc from '@grpc/grpc-js';

/** etcd's count of Range requests served (its /metrics, on the client URL). */
async function ranges(endpoint: string): Promise<number> {
  const text = await scrapeText(endpoint);
  return text.split('\n').filter((l) => l.startsWith('grpc_server_handled_total') && l.includes('grpc_method="Range"'))
    .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

describe('idempotency keys under concurrency', function () {
  this.timeout(60_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let echo: ChildProcess | undefined;
  let admin: AdminClient;
  let echoEndpoint = '';

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const c = await fleet.coordinator({ etcd: etcd.endpoints, id: 'k1' });
    await waitForLeader([c.address]);
    const started = await startEcho('key-echo');
    echo = started.proc;
    const port = started.port;
    echoEndpoint = `127.0.0.1:${port}`;
    admin = new AdminClient([c.address], { timeoutMs: 20_000 });
    await admin.registerComponent({ instanceId: 'key-echo-1', kind: 'key-echo', endpoint: `127.0.0.1:${port}`, ttlMs: 60_000 });
    await admin.applyPipeline({ name: 'keyed', stages: [{ name: 'echo', kind: 'key-echo' }] });
  });
  after(async () => {
    admin?.close();
    echo?.kill('SIGKILL');
    await fleet?.stop();
    await etcd?.stop();
  });

  it('admits one job for a key sent twice in one message, and for a retry while the first is being admitted', async () => {
    const js = admin.jobStream();
    try {
      // Both in one SubmitJobs message: neither is in memory or in etcd when they arrive.
      const [a, b] = await Promise.all([1, 2].map((i) => js.submit({ pipeline: 'keyed', payload: Buffer.from(`try ${i}`), idempotencyKey: 'same-key', wait: true })));
      expect(b.id).to.equal(a.id);
      expect(b.result.toString()).to.equal(a.result.toString());
      // A unary retry racing a streamed first try.
      const [c, d] = await Promise.all([
        js.submit({ pipeline: 'keyed', payload: Buffer.from('first'), idempotencyKey: 'other-key', wait: true }),
        admin.submitJob({ pipeline: 'keyed', payload: Buffer.from('retry'), idempotencyKey: 'other-key', wait: true }),
      ]);
      expect(d.id).to.equal(c.id);
      const listed = (await admin.listJobs({ pipeline: 'keyed', limit: 100 })).jobs;
      expect(listed.map((j) => j.id).sort()).to.deep.equal([a.id, c.id].sort());
    } finally {
      js.close();
    }
  });

  it('looks up the new keys of one message in one etcd request', async () => {
    const js = admin.jobStream();
    try {
      await js.submit({ pipeline: 'keyed', payload: Buffer.from('warm'), idempotencyKey: 'warm-key', wait: true });
      const before = await ranges(etcd.endpoints[0]);
      const jobs = await Promise.all(Array.from({ length: 32 }, (_, i) => js.submit({ pipeline: 'keyed', payload: Buffer.from(`job ${i}`), idempotencyKey: `fresh-${i}`, wait: true })));
      const after = await ranges(etcd.endpoints[0]);
      expect(new Set(jobs.map((j) => j.id)).size).to.equal(32);
      expect(jobs.every((j) => j.state === 'JOB_STATE_SUCCEEDED')).to.equal(true);
      // One per key before (32); now the lookups are one transaction. A few other reads may fall in.
      expect(after - before).to.be.below(8);
      // A key seen before still finds its job.
      const again = await js.submit({ pipeline: 'keyed', payload: Buffer.from('again'), idempotencyKey: 'fresh-7', wait: true });
      expect(again.id).to.equal(jobs[7].id);
    } finally {
      js.close();
    }
  });

  it('refuses a keyed submission whose key lookup etcd cannot answer (UNAVAILABLE, nothing admitted); the key later runs one job', async () => {
    // A cluster of its own (its own prefix) whose only coordinator reaches etcd through a proxy.
    const proxy = new TcpProxy(Number(etcd.endpoints[0].split(':')[1]));
    await proxy.start();
    const c = await fleet.coordinator({ etcd: [proxy.address], id: 'kp', extra: ['--etcd-prefix', '/tessera-p/'] });
    await waitForLeader([c.address]);
    const own = new AdminClient([c.address], { timeoutMs: 20_000 });
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    try {
      await own.registerComponent({ instanceId: 'key-echo-p', kind: 'key-echo', endpoint: echoEndpoint, ttlMs: 60_000 });
      await own.applyPipeline({ name: 'keyed', stages: [{ name: 'echo', kind: 'key-echo' }] });
      expect((await own.submitJob({ pipeline: 'keyed', payload: Buffer.from('warm'), wait: true })).state).to.equal('JOB_STATE_SUCCEEDED');
      // etcd out of reach: the lookup of a key not in memory stalls, then fails.
      proxy.cutLink();
      const err = await own.submitJob({ pipeline: 'keyed', payload: Buffer.from('x'), idempotencyKey: 'lookup-key', wait: true }).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code, err?.details).to.equal(grpc.status.UNAVAILABLE);
      expect(err?.details).to.match(/idempotency key lookup in etcd failed/);
      proxy.restore();
      await waitForLeader([c.address], 20_000);
      // Sent again with its key: it runs, once.
      const j = await waitFor('the keyed job accepted after the outage', async () => {
        const r = await own.submitJob({ pipeline: 'keyed', payload: Buffer.from('x'), idempotencyKey: 'lookup-key', wait: true }).catch(() => undefined);
        return r?.state === 'JOB_STATE_SUCCEEDED' ? r : undefined;
      }, 20_000, 200);
      // The key's record goes with the job's end record, just after the answer.
      await waitFor('the key recorded', async () => (await client.get('/tessera-p/jobkeys/lookup-key').string()) === j.id, 5_000, 50);
      // Every record with the key in etcd (start and end, shared or not) is of that one job.
      const records = Object.values(await client.getAll().prefix('/tessera-p/jobs/').strings()).flatMap((v) => {
        const o = JSON.parse(v) as unknown;
        return (Array.isArray(o) ? o : [o]) as { id?: string; k?: string }[];
      });
      expect([...new Set(records.filter((r) => r?.k === 'lookup-key').map((r) => r.id))]).to.deep.equal([j.id]);
    } finally {
      client.close();
      own.close();
      await proxy.stop();
    }
  });
});
