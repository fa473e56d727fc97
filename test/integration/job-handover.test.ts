// A graceful leader stop under load: the end records of the jobs it answered are written before
// it resigns, so the next leader runs none of them again (a SIGKILL may: see jobs.test.ts).
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import { AdminClient } from '../../common/admin-client';
import { etcdAndFleet } from '../helpers/suite';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { startEcho } from '../helpers/echo';

describe('a graceful leader stop with jobs in flight', function () {
  this.timeout(90_000);
  let echo: ChildProcess | undefined;
  const suite = etcdAndFleet({ cleanup: () => void echo?.kill('SIGKILL') });

  it('writes the end of every job it answered before it resigns: the next leader resumes none of them', async () => {
    const a = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 'h1' });
    await waitForLeader([a.address]);
    const b = await suite.fleet.coordinator({ etcd: suite.etcd.endpoints, id: 'h2' });
    const started = await startEcho('hand-echo', { DELAY_MS: '2' });
    echo = started.proc;
    const port = started.port;
    const admin = new AdminClient([a.address, b.address], { timeoutMs: 20_000 });
    await admin.registerComponent({ instanceId: 'hand-echo-1', kind: 'hand-echo', endpoint: `127.0.0.1:${port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: 'hand', stages: [{ name: 'one', kind: 'hand-echo' }, { name: 'two', kind: 'hand-echo' }] });
    const js = new AdminClient([a.address]).jobStream();
    const answered: string[] = [];
    let stop = false;
    // 16 loops on one stream to the leader, until its stream ends.
    const loops = Promise.all(Array.from({ length: 16 }, async () => {
      while (!stop) {
        const j = await js.submit({ pipeline: 'hand', payload: Buffer.from('x'), wait: true }).catch(() => undefined);
        if (!j) return;
        if (j.state === 'JOB_STATE_SUCCEEDED') answered.push(j.id);
      }
    }));
    try {
      await waitFor('jobs flowing', () => answered.length > 500, 20_000, 20);
      await a.kill('SIGTERM');
      stop = true;
      await loops;
      await waitForLeader([b.address], 20_000, 'h1');
      const n = answered.length;
      // Every job the old leader answered SUCCEEDED is on record as it ended, not run again.
      const resumed: string[] = [];
      for (let i = 0; i < n; i += 100) {
        const jobs = await Promise.all(answered.slice(i, i + 100).map((id) => admin.getJob(id)));
        for (const j of jobs) {
          expect(j.state, j.id).to.equal('JOB_STATE_SUCCEEDED');
          if (/resumed/.test(j.reason)) resumed.push(j.id);
        }
      }
      expect(resumed, `${resumed.length} of ${n} answered jobs were run again by the next leader`).to.deep.equal([]);
    } finally {
      js.close();
      admin.close();
    }
  });
});
