// etcd out of reach for a moment while jobs end: their answers go out (their starts are durable)
// and the leader writes their end records again once etcd takes them, so that a next leader does
// not run them a second time. The coordinator reaches etcd through a proxy the test cuts.
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import { AdminClient } from '../../common/admin-client';
import { createEtcdClient } from '../../common/etcd';
import { waitForLeader } from '../helpers/cluster';
import { startEcho } from '../helpers/echo';
import { endRecordOf } from '../helpers/job-records';
import { freePort, waitFor } from '../helpers/ports';
import { etcdAndFleet } from '../helpers/suite';
import { TcpProxy } from '../helpers/tcp-proxy';
import { scrape } from '../helpers/scrape';

/**
 * A suite's etcd, and a coordinator reaching it through a TcpProxy the test cuts (a lease TTL
 * well over the cuts: it stays leader through them), with an echo instance of `kind` registered
 * and a one-stage pipeline of it, warmed up.
 */
function proxiedSuite() {
  const state: { echo?: ChildProcess; proxy?: TcpProxy } = {};
  const s = etcdAndFleet({
    cleanup: async () => {
      state.echo?.kill('SIGKILL');
      await state.proxy?.stop();
    },
  });
  const start = async (o: { id: string; kind: string; pipeline: string; env?: Record<string, string>; extra?: string[] }) => {
    const proxy = (state.proxy = new TcpProxy(Number(s.etcd.endpoints[0].split(':')[1])));
    await proxy.start();
    const c = await s.fleet.coordinator({ etcd: [proxy.address], id: o.id, ttl: 8, extra: o.extra ?? [] });
    await waitForLeader([c.address]);
    const started = await startEcho(o.kind, o.env ?? {});
    state.echo = started.proc;
    const admin = new AdminClient([c.address], { timeoutMs: 30_000 });
    await admin.registerComponent({ instanceId: `${o.kind}-1`, kind: o.kind, endpoint: `127.0.0.1:${started.port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: o.pipeline, stages: [{ name: 'echo', kind: o.kind }] });
    expect((await admin.submitJob({ pipeline: o.pipeline, payload: Buffer.from('warm'), wait: true })).state).to.equal('JOB_STATE_SUCCEEDED');
    return { proxy, admin, client: createEtcdClient({ endpoints: s.etcd.endpoints }) };
  };
  return { start };
}

describe('job end records while etcd is out of reach', function () {
  this.timeout(90_000);
  const suite = proxiedSuite();

  it('writes the end records of jobs answered during the outage once etcd is back; their start records go', async () => {
    const metricsPort = await freePort();
    const { proxy, admin, client } = await suite.start({ id: 'er', kind: 'slow-echo', pipeline: 'slow', env: { DELAY_MS: '2000' }, extra: ['--metrics-listen', `127.0.0.1:${metricsPort}`] });
    const js = admin.jobStream();
    try {
      // Eight jobs in one message: one shared start record, durable before the cut.
      const answers = Array.from({ length: 8 }, (_, i) => js.submit({ pipeline: 'slow', payload: Buffer.from(`job ${i}`), wait: true }));
      await waitFor('their start record', async () => Object.values(await client.getAll().prefix('/tessera/jobs/started/').strings())
        .some((v) => (JSON.parse(v) as unknown[]).length === 8), 1_000, 20);
      // etcd took it; its answer reaches the coordinator through the proxy, in this process: give
      // it time to get there (cut before, the write's outcome is unknown to the coordinator and its
      // jobs are refused: the next test's case).
      await new Promise((r) => setTimeout(r, 300));
      proxy.cutLink();
      // The jobs end while etcd is out of reach: their callers still get their answers.
      const jobs = await Promise.all(answers);
      expect(jobs.map((j) => j.state)).to.deep.equal(Array(8).fill('JOB_STATE_SUCCEEDED'));
      // The end records' write is under way, stalled; the restore breaks its connection.
      await new Promise((r) => setTimeout(r, 1_000));
      proxy.restore();

      // Written after all, and the start record (that a next leader would run again) is gone.
      for (const j of jobs) {
        const end = await waitFor(`the end record of ${j.id}`, () => endRecordOf(client, '/tessera/', j.id), 20_000, 100);
        expect(end.state).to.equal('JOB_STATE_SUCCEEDED');
      }
      await waitFor('no start record left', async () => Object.keys(await client.getAll().prefix('/tessera/jobs/started/').strings()).length === 0, 10_000, 100);
      const m = await scrape(metricsPort);
      expect(m.get('tessera_job_end_record_retries_total') ?? 0).to.be.greaterThan(0);
      // Still the leader: the outage was shorter than its lease.
      expect((await admin.getClusterStatus()).leader?.id).to.equal('er');
    } finally {
      js.close();
      client.close();
      admin.close();
    }
  });
});

describe('a start record etcd took but whose answer was lost', function () {
  this.timeout(90_000);
  const suite = proxiedSuite();

  it('is deleted once etcd is back: its jobs were refused and no next leader runs them', async () => {
    const { proxy, admin, client } = await suite.start({ id: 'lost', kind: 'echo', pipeline: 'p' });
    const js = admin.jobStream();
    try {
      // etcd takes the jobs' start record; its answer never reaches the coordinator.
      proxy.holdReplies();
      const answers = Array.from({ length: 3 }, (_, i) => js.submit({ pipeline: 'p', payload: Buffer.from(`job ${i}`) }).then(
        () => { throw new Error('acknowledged'); },
        (err: Error & { code?: number }) => err,
      ));
      // Theirs: the one with three jobs (the warm-up job's may still stand, its end record lazy).
      const theirs = async () => Object.entries(await client.getAll().prefix('/tessera/jobs/started/').strings())
        .filter(([, v]) => (JSON.parse(v) as unknown[]).length === 3).map(([k]) => k);
      await waitFor('their start record in etcd', async () => (await theirs()).length === 1, 10_000, 20);
      proxy.breakLink();
      // Refused: the coordinator cannot know the record was written.
      for (const err of await Promise.all(answers)) {
        expect(err.code, err.message).to.equal(14);
        expect(err.message).to.match(/etcd write failed/);
      }
      expect(await theirs()).to.have.length(1);
      proxy.restore();

      // Deleted once etcd answers again: a next leader would otherwise run jobs refused here.
      await waitFor('their start record deleted', async () => (await theirs()).length === 0, 30_000, 100);
      expect((await admin.getClusterStatus()).leader?.id).to.equal('lost');
      expect((await admin.submitJob({ pipeline: 'p', payload: Buffer.from('after'), wait: true })).state).to.equal('JOB_STATE_SUCCEEDED');
    } finally {
      js.close();
      client.close();
      admin.close();
    }
  });
});
