// Finished-job records are bounded in bytes (--job-record-budget-mb), not only in time: at high
// rates an hour of records would outgrow etcd's quota, and a full etcd turns the cluster read-only.
// Over the budget the leader revokes the oldest window's lease and etcd deletes those records.
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { AdminClient } from '../../common/admin-client';
import { createEtcdClient } from '../../common/etcd';
import { etcdAndFleet } from '../helpers/suite';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { startEcho } from '../helpers/echo';
import { endRecordOf } from '../helpers/job-records';

describe('finished-job records within a byte budget', function () {
  this.timeout(90_000);
  let echo: ChildProcess | undefined;
  const suite = etcdAndFleet({ cleanup: () => void echo?.kill('SIGKILL') });

  /** An external echo instance and a one-stage pipeline on it; each job's record keeps its 200 KB result (~270 KB). */
  async function bigPipeline(admin: AdminClient, id: string): Promise<(n: number) => Promise<string[]>> {
    echo?.kill('SIGKILL');
    const started = await startEcho('big-echo');
    echo = started.proc;
    const port = started.port;
    await admin.registerComponent({ instanceId: id, kind: 'big-echo', endpoint: `127.0.0.1:${port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: 'big', stages: [{ name: 'echo', kind: 'big-echo' }] });
    return async (n: number) => {
      const ids: string[] = [];
      for (let i = 0; i < n; i++) {
        const j = await admin.submitJob({ pipeline: 'big', payload: Buffer.alloc(200_000, 65 + i), wait: true });
        expect(j.state, j.reason).to.equal('JOB_STATE_SUCCEEDED');
        ids.push(j.id);
      }
      return ids;
    };
  }

  it('deletes the oldest window of records before its retention once the records exceed the budget', async () => {
    // 1 MiB of records at most; a retention of 20 s makes a window (one lease) 2 s.
    const c = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 'b1', extra: ['--job-record-budget-mb', '1', '--job-retention-ms', '20000'] });
    await waitForLeader([c.address]);
    const admin = new AdminClient([c.address], { timeoutMs: 20_000 });
    const client = createEtcdClient({ endpoints: suite.etcd.endpoints });
    try {
      const run = await bigPipeline(admin, 'big-echo-1');
      const has = async (id: string) => (await endRecordOf(client, '/tessera/', id)) !== undefined;
      const first = await run(3); // ~0.8 MB: within the budget
      await waitFor('first records written', async () => (await Promise.all(first.map(has))).every(Boolean), 5_000, 100);
      // An end this large (over 64 KiB) has a key of its own, not a place in its batch's shared record.
      for (const id of first) expect(await client.get(`/tessera/jobs/done/${id}`).string(), id).to.not.equal(null);
      await new Promise((r) => setTimeout(r, 2_500)); // the next records go under a new lease
      const second = await run(2); // ~1.35 MB in all: over it, but the first window closed just now
      await waitFor('the second records written', async () => (await Promise.all(second.map(has))).every(Boolean), 5_000, 100);
      // A window is revoked only once it has been closed a while (its last end records may
      // still be queued, and etcd refuses a transaction naming a revoked lease).
      expect(await Promise.all(first.map(has))).to.deep.equal([true, true, true]);
      await new Promise((r) => setTimeout(r, 5_500));
      const third = await run(1); // a third window: the first has been closed over 5 s
      await waitFor('the oldest window deleted', async () => (await Promise.all(first.map(has))).every((x) => !x), 10_000, 200);
      await waitFor('the newer records kept', async () => (await Promise.all([...second, ...third].map(has))).every(Boolean), 5_000, 100);
      expect(suite.fleet.dump()).to.match(/over --job-record-budget-mb/);
    } finally {
      client.close();
      admin.close();
    }
  });

  it('a new leader counts the records of the leader before it, and deletes those first once over the budget', async () => {
    // Under a prefix of its own (the test before left its records under /tessera/). The same
    // budget on both; a retention of 40 s makes a window 4 s, and records expire on their own
    // only after 44 s: their deletion within this test is the budget's doing.
    const flags = ['--etcd-prefix', '/tessera-w/', '--job-record-budget-mb', '1', '--job-retention-ms', '40000'];
    const a = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 'w1', extra: flags });
    await waitForLeader([a.address]);
    const b = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 'w2', extra: flags });
    const admin = new AdminClient([a.address, b.address], { timeoutMs: 20_000 });
    const client = createEtcdClient({ endpoints: suite.etcd.endpoints });
    const has = async (id: string) => (await endRecordOf(client, '/tessera-w/', id)) !== undefined;
    const savedBytes = async () => ((JSON.parse((await client.get('/tessera-w/jobs/windows').string()) ?? '[]') as { bytes: number }[])).reduce((n, w) => n + w.bytes, 0);
    try {
      const run = await bigPipeline(admin, 'big-echo-w');
      const first = await run(3); // ~0.8 MB under the first leader: within the budget
      await waitFor('first records and the budget windows written', async () => (await Promise.all(first.map(has))).every(Boolean) && (await savedBytes()) > 700_000, 5_000, 100);
      await a.kill('SIGKILL');
      await waitForLeader([b.address], 20_000, 'w1');
      await waitFor('the new leader counts them', () => /the previous leaders' records counted/.test(fs.readFileSync(b.logFile, 'utf8')), 10_000, 100);
      const second = await run(2); // ~1.35 MB with the first leader's: over the budget
      expect(await Promise.all(first.map(has)), 'not before the new window has been closed a while').to.deep.equal([true, true, true]);
      await new Promise((r) => setTimeout(r, 5_500));
      const third = await run(1);
      await waitFor("the first leader's records deleted", async () => (await Promise.all(first.map(has))).every((x) => !x), 10_000, 200);
      await waitFor("the new leader's records kept", async () => (await Promise.all([...second, ...third].map(has))).every(Boolean), 5_000, 100);
    } finally {
      client.close();
      admin.close();
    }
  });
});
