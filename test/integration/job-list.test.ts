// ListJobs after a leader change: the new leader holds none of the jobs that ended before it
// led, yet lists them from their end records in etcd (as GetJob finds them), newest first, more
// of them than one read of keys (64), with the pipeline and state filters applied.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';
import type { ChildProcess } from 'node:child_process';
import { AdminClient } from '../../common/admin-client';
import { waitForLeader } from '../helpers/cluster';
import { startEcho } from '../helpers/echo';
import { etcdAndFleet } from '../helpers/suite';
import { createEtcdClient } from '../../common/etcd';
import { waitFor } from '../helpers/ports';

/**
 * Two echo components registered as external instances, PREFIX-slow (each step takes delayMs)
 * and PREFIX-fast, and the one-stage pipelines slowp and fastp through them; their processes.
 */
async function slowAndFast(admin: AdminClient, prefix: string, delayMs: number): Promise<ChildProcess[]> {
  const slow = await startEcho(`${prefix}-slow`, { DELAY_MS: String(delayMs) });
  const fast = await startEcho(`${prefix}-fast`);
  for (const [kind, port] of [[`${prefix}-slow`, slow.port], [`${prefix}-fast`, fast.port]] as const) {
    await admin.registerComponent({ instanceId: `${kind}-1`, kind, endpoint: `127.0.0.1:${port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: kind.endsWith('slow') ? 'slowp' : 'fastp', stages: [{ name: 'echo', kind }] });
  }
  return [slow.proc, fast.proc];
}

describe('listing jobs that ended under an earlier leader', function () {
  this.timeout(90_000);
  let echo: ChildProcess | undefined;
  const s = etcdAndFleet({ cleanup: () => { echo?.kill('SIGKILL'); } });
  let leaderAddress = '';

  it('lists them from their end records, past one read of keys, filtered and newest first', async () => {
    const first = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'list-1' });
    await waitForLeader([first.address]);
    const started = await startEcho('list-echo');
    echo = started.proc;
    let admin = new AdminClient([first.address], { timeoutMs: 20_000 });
    await admin.registerComponent({ instanceId: 'list-echo-1', kind: 'list-echo', endpoint: `127.0.0.1:${started.port}`, ttlMs: 120_000 });
    await admin.applyPipeline({ name: 'a', stages: [{ name: 'echo', kind: 'list-echo' }] });
    await admin.applyPipeline({ name: 'b', stages: [{ name: 'echo', kind: 'list-echo' }] });
    // One at a time: each job's end is a record (an etcd key) of its own, 300 keys in all (read
    // 64 at a time).
    const ids: string[] = [];
    for (let i = 0; i < 300; i++) {
      const j = await admin.submitJob({ pipeline: i % 3 ? 'a' : 'b', payload: Buffer.from(`job ${i}`), wait: true });
      expect(j.state).to.equal('JOB_STATE_SUCCEEDED');
      ids.push(j.id);
    }
    // The first leader stops (gracefully: its end records are written) and a second one leads.
    const second = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'list-2' });
    await first.kill('SIGTERM');
    await waitForLeader([second.address], 20_000, 'list-1');
    leaderAddress = second.address;
    admin.close();
    admin = new AdminClient([second.address], { timeoutMs: 20_000 });
    try {
      const all = (await admin.listJobs({ limit: 1000 })).jobs;
      expect(all.map((j) => j.id)).to.have.members(ids);
      const times = all.map((j) => Number(j.submittedAtMs));
      expect(times).to.deep.equal([...times].sort((x, y) => y - x));
      expect(all[0].id).to.equal(ids[299]);
      // The default limit, 50: the newest.
      expect((await admin.listJobs({})).jobs.map((j) => j.id)).to.deep.equal(all.slice(0, 50).map((j) => j.id));
      // Filters: pipeline b (every third job), and a state none of them is in.
      expect((await admin.listJobs({ pipeline: 'b', limit: 1000 })).jobs.map((j) => j.id)).to.have.members(ids.filter((_, i) => i % 3 === 0));
      expect((await admin.listJobs({ state: 'JOB_STATE_FAILED', limit: 1000 })).jobs).to.deep.equal([]);
      // And a listed job reads back whole.
      expect((await admin.getJob(ids[0])).state).to.equal('JOB_STATE_SUCCEEDED');
    } finally {
      admin.close();
    }
  });

  it('pages through them with page tokens: newest first, every job once, from memory and from etcd; a token for another filter, or a made-up one, refused', async () => {
    const admin = new AdminClient([leaderAddress], { timeoutMs: 20_000 });
    try {
      // Five more under this leader: in its memory, the 300 of the test before in etcd only.
      for (let i = 0; i < 5; i++) await admin.submitJob({ pipeline: 'b', payload: Buffer.from(`new ${i}`), wait: true });
      const whole = (await admin.listJobs({ limit: 1000 })).jobs.map((j) => j.id);
      expect(whole).to.have.length(305);
      const pages: string[][] = [];
      let token = '';
      for (;;) {
        const r = await admin.listJobs({ limit: 70, pageToken: token });
        pages.push(r.jobs.map((j) => j.id));
        if (!r.nextPageToken) break;
        token = r.nextPageToken;
        expect(pages.length, 'pages end').to.be.lessThan(10);
      }
      // 70, 70, 70, 70, 25: the same jobs in the same order as one long page.
      expect(pages.map((p) => p.length)).to.deep.equal([70, 70, 70, 70, 25]);
      expect(pages.flat()).to.deep.equal(whole);
      // Filtered: the 100 + 5 jobs of pipeline b, in pages of 40.
      const b: string[] = [];
      token = '';
      do {
        const r = await admin.listJobs({ pipeline: 'b', limit: 40, pageToken: token });
        b.push(...r.jobs.map((j) => j.id));
        token = r.nextPageToken;
      } while (token);
      expect(b).to.deep.equal((await admin.listJobs({ pipeline: 'b', limit: 1000 })).jobs.map((j) => j.id));
      expect(b).to.have.length(105);
      // A page goes on with the filters of the first.
      const first = await admin.listJobs({ pipeline: 'b', limit: 10 });
      const other = await admin.listJobs({ pipeline: 'a', limit: 10, pageToken: first.nextPageToken }).catch((e: Error & { code?: number }) => e) as Error & { code?: number };
      expect(other.code).to.equal(3);
      expect(other.message).to.match(/pageToken: was given for pipeline "b" and state JOB_STATE_UNSPECIFIED, not "a"/);
      const made = await admin.listJobs({ pageToken: 'not-a-token' }).catch((e: Error & { code?: number }) => e) as Error & { code?: number };
      expect(made.code).to.equal(3);
      expect(made.message).to.match(/pageToken: is not a token ListJobs gave/);
      // The CLI prints the token after the table, and takes it back.
      const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', leaderAddress, 'job', 'list', ...args], { encoding: 'utf8', timeout: 20_000 }).stdout;
      const one = cli('-n', '2');
      const more = /^more: --page-token (\S+)$/m.exec(one)?.[1];
      expect(more, one).to.be.a('string');
      const two = cli('-n', '2', '--page-token', more!);
      expect(two).to.contain(whole[2]).and.contain(whole[3]).and.not.contain(whole[1]);
    } finally {
      admin.close();
    }
  });

  it('pages past a job the new leader resumed to the newer ones that ended under the old leader (only in etcd)', async () => {
    // A cluster of its own on the same etcd: r1 accepts a slow job A, then five quick ones (B)
    // end; r1 is SIGKILLed; r2 resumes A (submitted before the Bs) and runs three more (C).
    const extra = ['--etcd-prefix', '/tessera-resume/'];
    const r1 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'resume-1', extra });
    await waitForLeader([r1.address]);
    let a1 = new AdminClient([r1.address], { timeoutMs: 20_000 });
    const procs = await slowAndFast(a1, 'res', 4_000);
    try {
      const a = await a1.submitJob({ pipeline: 'slowp', payload: Buffer.from('A') });
      const bs: string[] = [];
      for (let i = 0; i < 5; i++) bs.push((await a1.submitJob({ pipeline: 'fastp', payload: Buffer.from(`B${i}`), wait: true })).id);
      await new Promise((r) => setTimeout(r, 500)); // the Bs' end records written (lazily)
      const r2 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'resume-2', extra });
      await r1.kill('SIGKILL');
      await waitForLeader([r2.address], 20_000, 'resume-1');
      a1.close();
      a1 = new AdminClient([r2.address], { timeoutMs: 20_000 });
      const cs: string[] = [];
      for (let i = 0; i < 3; i++) cs.push((await a1.submitJob({ pipeline: 'fastp', payload: Buffer.from(`C${i}`), wait: true })).id);
      const whole = (await a1.listJobs({ limit: 1000 })).jobs.map((j) => j.id);
      expect(whole).to.deep.equal([...cs.reverse(), ...bs.reverse(), a.id]);
      const paged: string[] = [];
      let token = '';
      do {
        const r = await a1.listJobs({ limit: 4, pageToken: token });
        paged.push(...r.jobs.map((j) => j.id));
        token = r.nextPageToken;
      } while (token);
      // The first page is C, C, C and the newest B, not the resumed A: every B is listed.
      expect(paged).to.deep.equal(whole);
    } finally {
      a1.close();
      for (const p of procs) p.kill('SIGKILL');
    }
  });

  it('lists a job that ended in an older record window before a longer one submitted earlier that ended in a newer window', async () => {
    // Windows of 2 s (a tenth of a 20 s retention): A, slow, is submitted first and ends 3 s
    // later in a newer window than B, submitted after A and ended at once. Newest first by
    // submission, B comes before A, though A's window is read first.
    const extra = ['--etcd-prefix', '/tessera-windows/', '--job-retention-ms', '20000'];
    const w1 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'win-1', extra });
    await waitForLeader([w1.address]);
    let admin = new AdminClient([w1.address], { timeoutMs: 20_000 });
    const procs = await slowAndFast(admin, 'win', 3_000);
    try {
      const a = admin.submitJob({ pipeline: 'slowp', payload: Buffer.from('A'), wait: true });
      await new Promise((r) => setTimeout(r, 100));
      const b = await admin.submitJob({ pipeline: 'fastp', payload: Buffer.from('B'), wait: true });
      const aDone = await a;
      expect(aDone.state).to.equal('JOB_STATE_SUCCEEDED');
      expect(Number(aDone.submittedAtMs)).to.be.below(Number(b.submittedAtMs));
      // Graceful: the end records are written; the next leader has them only in etcd.
      const w2 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'win-2', extra });
      await w1.kill('SIGTERM');
      await waitForLeader([w2.address], 20_000, 'win-1');
      admin.close();
      admin = new AdminClient([w2.address], { timeoutMs: 20_000 });
      const pages: string[][] = [];
      let token = '';
      do {
        const r = await admin.listJobs({ limit: 1, pageToken: token });
        pages.push(r.jobs.map((j) => j.id));
        token = r.nextPageToken;
      } while (token && pages.length < 5);
      expect(pages.flat()).to.deep.equal([b.id, aDone.id]);
    } finally {
      admin.close();
      for (const p of procs) p.kill('SIGKILL');
    }
  });

  it('lists quick jobs the leader let go from memory before a longer one submitted earlier that it still holds', async () => {
    // Two finished jobs kept in memory: A (slow, submitted first) ends last, after B, C and D,
    // so B and C leave memory while A stays. Newest first by submission: D, C, B, A.
    const m1 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'mem-1', extra: ['--etcd-prefix', '/tessera-memory/', '--job-memory-jobs', '2'] });
    await waitForLeader([m1.address]);
    const admin = new AdminClient([m1.address], { timeoutMs: 20_000 });
    const procs = await slowAndFast(admin, 'mem', 2_000);
    try {
      const a = admin.submitJob({ pipeline: 'slowp', payload: Buffer.from('A'), wait: true });
      await new Promise((r) => setTimeout(r, 100));
      const quick: string[] = [];
      for (const x of ['B', 'C', 'D']) quick.push(String((await admin.submitJob({ pipeline: 'fastp', payload: Buffer.from(x), wait: true })).id));
      const aDone = await a;
      expect(aDone.state).to.equal('JOB_STATE_SUCCEEDED');
      for (const limit of [1, 2, 3]) {
        const pages: string[][] = [];
        let token = '';
        do {
          const r = await admin.listJobs({ limit, pageToken: token });
          pages.push(r.jobs.map((j) => String(j.id)));
          token = r.nextPageToken;
        } while (token && pages.length < 6);
        expect(pages.flat(), `pages of ${limit}`).to.deep.equal([...quick].reverse().concat(String(aDone.id)));
      }
    } finally {
      admin.close();
      for (const p of procs) p.kill('SIGKILL');
    }
  });

  it('saves a record window before any record goes under its lease, so a next leader knows every window', async () => {
    // The second coordinator of the test before leads; its first record opened a window.
    const admin = new AdminClient([leaderAddress], { timeoutMs: 20_000 });
    const client = createEtcdClient({ endpoints: s.etcd.endpoints });
    try {
      const j = await admin.submitJob({ pipeline: 'a', payload: Buffer.from('windowed'), wait: true });
      // Its end record, with its lease and the revision that created it.
      const kv = await waitFor('its end record', async () => {
        for (const prefix of ['/tessera/jobs/ended/', '/tessera/jobs/done/']) {
          const res = await client.getAll().prefix(prefix).exec();
          const hit = res.kvs.find((x) => x.value.toString().includes(j.id));
          if (hit) return hit;
        }
        return undefined;
      }, 10_000, 50);
      expect(kv.lease).to.not.equal('0');
      // The windows as etcd held them when that record was written: its lease among them.
      const saved = await client.get('/tessera/jobs/windows').revision(kv.create_revision).string();
      expect((JSON.parse(saved ?? '[]') as { id: string }[]).map((w) => String(w.id))).to.include(String(kv.lease));
    } finally {
      client.close();
      admin.close();
    }
  });
});
