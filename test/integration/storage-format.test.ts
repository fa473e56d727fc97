// The downgrade guard: a leader records the storage format it writes; a coordinator that reads
// only older formats does not lead that cluster (before a candidacy, and again once elected),
// says why, and keeps running as a follower. A "newer Tessera" is played by writing a higher
// format into etcd by hand.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { createEtcdClient } from '../../common/etcd';
import { repoRoot, STORAGE_FORMAT } from '../../common/version';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { etcdAndFleet } from '../helpers/suite';

describe('storage format (downgrade guard)', function () {
  this.timeout(60_000);
  const s = etcdAndFleet();

  it('is recorded by a leader whose format is newer than the recorded one', async () => {
    const client = createEtcdClient({ endpoints: s.etcd.endpoints });
    try {
      // A cluster an older Tessera wrote (format 1).
      await client.put('/tessera-r/cluster/storage-format').value('1');
      const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'r1', extra: ['--etcd-prefix', '/tessera-r/'] });
      await waitForLeader([c.address]);
      await waitFor('the format recorded', async () => (await client.get('/tessera-r/cluster/storage-format').string()) === String(STORAGE_FORMAT), 5_000, 50);
      const st = await statusOf(c.address);
      expect([st?.storageFormat, st?.refusal]).to.deep.equal([STORAGE_FORMAT, '']);
      await c.kill('SIGTERM');
    } finally {
      client.close();
    }
  });

  it('does not campaign for a cluster a newer Tessera wrote, says why, and keeps running', async () => {
    const client = createEtcdClient({ endpoints: s.etcd.endpoints });
    try {
      await client.put('/tessera-n/cluster/storage-format').value(String(STORAGE_FORMAT + 1));
      const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'n1', extra: ['--etcd-prefix', '/tessera-n/'] });
      await waitFor('the refusal in its log', async () => /not leading this cluster/.test(c.tail(200)), 10_000, 100);
      expect(c.tail(200)).to.include(`storage format ${STORAGE_FORMAT + 1}`).and.include('upgrade it');
      // No leader; it answers as a follower; no candidacy in etcd; the format is as it was.
      await new Promise((r) => setTimeout(r, 2_000));
      expect(c.running).to.equal(true);
      const st = await statusOf(c.address);
      expect(st?.leader?.id ?? '').to.equal('');
      // `tessera status` asked of it says so.
      expect(st?.storageFormat).to.equal(STORAGE_FORMAT + 1);
      expect(st?.refusal).to.match(/newer Tessera .*upgrade it/);
      const out = execFileSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', c.address, 'status']).toString();
      expect(out).to.match(/answered by: n1 \(NOT A CANDIDATE: .*storage format \d+.*upgrade it\)/);
      expect(out).to.include(`storage:     format ${STORAGE_FORMAT + 1}`);
      expect(Object.keys(await client.getAll().prefix('/tessera-n/election/').strings())).to.deep.equal([]);
      expect(await client.get('/tessera-n/cluster/storage-format').string()).to.equal(String(STORAGE_FORMAT + 1));
    } finally {
      client.close();
    }
  });

  it('steps down when, elected, it finds a newer format recorded since its candidacy began', async () => {
    const client = createEtcdClient({ endpoints: s.etcd.endpoints });
    try {
      const a = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'e1', extra: ['--etcd-prefix', '/tessera-e/'] });
      await waitForLeader([a.address]);
      const b = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'e2', extra: ['--etcd-prefix', '/tessera-e/'] });
      await waitFor('e2 a candidate', async () => Object.keys(await client.getAll().prefix('/tessera-e/election/').strings()).length === 2, 10_000, 100);
      // A newer leader came and went meanwhile (played by hand); then the leader stops.
      await client.put('/tessera-e/cluster/storage-format').value(String(STORAGE_FORMAT + 1));
      await a.kill('SIGTERM');
      await waitFor('e2 refuses once elected', async () => /not leading this cluster/.test(b.tail(200)), 10_000, 100);
      await new Promise((r) => setTimeout(r, 2_000));
      expect((await statusOf(b.address))?.leader?.id ?? '').to.equal('');
      expect(Object.keys(await client.getAll().prefix('/tessera-e/election/').strings())).to.deep.equal([]);
      // It wrote nothing as leader: no leader.elected event of its term.
      const events = Object.values(await client.getAll().prefix('/tessera-e/events/').strings()).map((v) => JSON.parse(v) as { kind: string; subject: string });
      expect(events.filter((e) => e.kind === 'leader.elected').map((e) => e.subject)).to.deep.equal(['e1']);
    } finally {
      client.close();
    }
  });
});
