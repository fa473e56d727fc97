// The first moments of a term: a coordinator that has just won the election still loads the
// cluster state (nodes, apps, components, pipelines, job records) before it can serve. A request
// that reaches it then waits for the load and is served; it is not refused with "no leader". A
// failpoint (common/failpoints.ts) stretches the load to 2 s so the window can be hit on purpose.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { etcdAndFleet } from '../helpers/suite';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';
import { healthClient, statusOf, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';

describe('a leader that is still loading its state', function () {
  this.timeout(60_000);

  const suite = etcdAndFleet();
  const leaderHealthOf = (address: string) => {
    const health = healthClient(address);
    return { check: () => health.check('tessera.v1.Leader'), close: health.close };
  };

  it('serves requests that arrive between its election and the end of its load, instead of refusing them', async () => {
    const a = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 's1' });
    await waitForLeader([a.address]);
    const slow = { TESSERA_FAILPOINTS: 'leaderStart=sleep(2000)' };
    const b = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 's2', env: slow });
    const admin = new AdminClient([a.address, b.address], { timeoutMs: 10_000 });
    const direct = new AdminClient([b.address], { timeoutMs: 10_000 });
    await admin.applyPipeline({ name: 'kept', stages: [{ name: 'one', kind: 'any-kind' }] });
    const health = leaderHealthOf(b.address);
    const leaderHealth = health.check;
    try {
      await a.kill('SIGKILL');
      // b is elected (etcd names it) but has not loaded yet: its leader health says so.
      await waitFor('b elected', async () => (await statusOf(b.address))?.leader?.id === 's2', 20_000, 20);
      expect(await leaderHealth(), 'the request must arrive while b still loads').to.equal('NOT_SERVING');
      const [pipeline, jobs, stream] = await Promise.all([
        admin.getPipeline('kept'),
        admin.listJobs(),
        // A SubmitJobs stream opened now is served too: a job to a kind with no instance is
        // refused for that reason, not for want of a leader.
        direct.jobStream().submit({ pipeline: 'kept', payload: Buffer.from('x') }).then((j) => `accepted ${j.state}`, (e: grpc.ServiceError) => `${e.code} ${e.details}`),
      ]);
      expect(pipeline.name).to.equal('kept');
      expect(jobs.jobs).to.be.an('array');
      expect(stream).to.not.match(/no leader|not the leader/);
      expect(stream).to.match(/pipeline kept, stage "one": no instance/);
      expect(await leaderHealth()).to.equal('SERVING');
      expect(b.tail(400)).to.match(/TESSERA_FAILPOINTS is set/);
    } finally {
      health.close();
      admin.close();
      direct.close();
    }
  });

  it('answers UNAVAILABLE saying it is still loading when the load outlasts the wait (5 s), and serves once loaded', async () => {
    // The leader now is s2 (the test before). s3 takes 8 s to load.
    const b = suite.fleet.procs.find((p) => p.name === 's2')!;
    const c = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 's3', env: { TESSERA_FAILPOINTS: 'leaderStart=sleep(8000)' } });
    const direct = new AdminClient([c.address], { timeoutMs: 15_000 });
    const health = leaderHealthOf(c.address);
    try {
      await b.kill('SIGKILL');
      await waitFor('c elected', async () => (await statusOf(c.address))?.leader?.id === 's3', 20_000, 20);
      const t0 = Date.now();
      // (ListJobs is the leader's: the jobs live in its memory.)
      const err = await direct.listJobs().then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code, `${String(err?.details)} after ${Date.now() - t0} ms`).to.equal(grpc.status.UNAVAILABLE);
      expect(err?.details).to.match(/elected leader and is still loading the cluster state/);
      expect(Date.now() - t0, 'it waited for the load first').to.be.greaterThan(4_000);
      await waitFor('c loaded', async () => (await health.check()) === 'SERVING', 10_000, 100);
      expect((await direct.listJobs()).jobs).to.be.an('array');
    } finally {
      health.close();
      direct.close();
    }
  });

  it('refuses to start (exit 2, saying why) when TESSERA_FAILPOINTS cannot be read', () => {
    for (const bin of ['dist/coordinator/main.js', 'dist/agent/main.js']) {
      const r = spawnSync(process.execPath, [path.join(repoRoot(), bin), '--insecure-dev'], { encoding: 'utf8', env: { ...process.env, TESSERA_FAILPOINTS: 'leaderStart=panic' }, timeout: 20_000 });
      expect(r.status, `${bin}: ${r.stderr}`).to.equal(2);
      expect(r.stderr).to.contain('invalid environment:\n  TESSERA_FAILPOINTS: cannot read "leaderStart=panic" (expected name=sleep(ms), name=error(n), or name@subject=...)');
    }
  });
});
