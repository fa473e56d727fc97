// Backup and restore: `tessera operator snapshot save` streams etcd's snapshot through a
// coordinator; etcdctl checks and restores it; a coordinator on the restored etcd leads the
// cluster back to the state of the snapshot, and the agent's containers follow (what was
// started after the snapshot is stopped, what it holds runs). Real etcd, coordinator, agent and
// containers; etcdctl is the restore tool an operator would use.
import { expect } from 'chai';
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { containers, removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';

const run = promisify(execFile);

describe('backup and restore (etcd snapshots)', function () {
  this.timeout(180_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  const app = (name: string, instances: number) => ({
    name, components: [{ name: 'sleeper', image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances, stopGraceMs: 100 }],
  });
  const running = (name: string) => containers(`tessera.app=${name}`).filter((c) => c.state === 'running');

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
  });
  after(async () => {
    await fleet?.stop();
    await etcd?.stop();
    removeContainers('tessera.app=snap-kept');
    removeContainers('tessera.app=snap-later');
  });

  it('saves a snapshot through a coordinator that etcdctl restores; the cluster converges on the restored state', async () => {
    const port = await freePort();
    let c = await fleet.coordinator({ etcd: etcd.endpoints, id: 'snap', port, ttl: 3 });
    await waitForLeader([c.address]);
    fleet.agent({ coordinators: [c.address], nodeId: 'snap-node', extra: ['--port-range', laneRange('30550-30569')] });
    let admin = new AdminClient([c.address], { timeoutMs: 10_000 });
    const file = path.join(fleet.dir, 'tessera.snapshot');
    try {
      await waitFor('snap-node READY', async () => (await admin.listNodes()).nodes.some((n) => n.id === 'snap-node' && n.state === 'NODE_STATE_READY'), 20_000, 100);
      await admin.applyApp(app('snap-kept', 2));
      await waitFor('2 snap-kept containers running', () => running('snap-kept').length === 2, 60_000, 200);

      // Saved through the CLI, as an operator would, given a list whose first coordinator is down
      // (the stream goes to the first that answers); etcdctl reads it back (its hash checks out).
      const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
      const saved = await run(process.execPath, [cli, '-c', `127.0.0.1:${await freePort()},${c.address}`, 'operator', 'snapshot', 'save', file]);
      expect(saved.stdout).to.match(/^saved .*tessera\.snapshot: [\d.]+ MiB, sha256 [0-9a-f]{64}/);
      expect(fs.statSync(file).mode & 0o777).to.equal(0o600);
      expect(fs.existsSync(`${file}.part`)).to.equal(false);
      const status = JSON.parse(execFileSync('etcdctl', ['snapshot', 'status', file, '-w', 'json']).toString()) as { totalKey: number; revision: number };
      expect(status.totalKey).to.be.greaterThan(5);
      const keptIds = running('snap-kept').map((x) => x.instance).sort();

      // Changes after the snapshot: a third instance, and another app.
      await admin.scaleApp('snap-kept', 'sleeper', 3);
      await admin.applyApp(app('snap-later', 1));
      await waitFor('3 + 1 containers running', () => running('snap-kept').length === 3 && running('snap-later').length === 1, 60_000, 200);

      // Restore: the coordinator and etcd stop, etcd's data dir is restored from the snapshot,
      // and both start again (the agent keeps running and its containers with it).
      admin.close();
      await c.kill('SIGKILL');
      await etcd.kill(0);
      const m = etcd.members[0];
      fs.rmSync(m.dataDir, { recursive: true, force: true });
      execFileSync('etcdctl', ['snapshot', 'restore', file, '--name', m.name, '--data-dir', m.dataDir,
        '--initial-cluster', `${m.name}=http://127.0.0.1:${m.peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peerPort}`], { stdio: 'ignore' });
      etcd.spawn(0);
      await waitFor('the restored etcd answering', () => etcd.healthy(), 30_000, 200);
      // The default failover grace (the tests' is 4 s): the agent, backing off up to 5 s between
      // tries while no coordinator answered, has time to attach before its node would go DOWN.
      c = await fleet.coordinator({ etcd: etcd.endpoints, id: 'snap', port, ttl: 3, failoverGraceMs: 15_000 });
      admin = new AdminClient([c.address], { timeoutMs: 10_000 });
      // The snapshot holds the old term's election key (the same id): it expires with its lease
      // before this process leads.
      const kept = await waitFor('the new process leading', () => admin.getApp('snap-kept').catch(() => undefined), 40_000, 200);

      // The state of the snapshot: two instances of snap-kept, no snap-later...
      expect(kept.version).to.equal(1);
      const err = await admin.getApp('snap-later').then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code).to.equal(grpc.status.NOT_FOUND);
      // ...and Docker follows: the containers started after the snapshot are stopped, the two it
      // holds keep running (adopted, not restarted).
      await waitFor('the containers of the snapshot only', () => running('snap-later').length === 0 && running('snap-kept').length === 2, 60_000, 200);
      expect(running('snap-kept').map((x) => x.instance).sort()).to.deep.equal(keptIds);
    } finally {
      admin.close();
    }
  });

  it('refuses a read-only token: a snapshot holds every spec and payload', async () => {
    const file = path.join(fleet.dir, 'tokens.yaml');
    fs.writeFileSync(file, 'tokens:\n  - { name: viewer, role: read-only, token: view-secret }\n  - { name: ops, role: operator, token: op-secret }\n');
    const c = await fleet.coordinator({ etcd: etcd.endpoints, id: 'snap-auth', extra: ['--tokens-file', file] });
    const viewer = new AdminClient([c.address], { metadata: { authorization: 'Bearer view-secret' } });
    const ops = new AdminClient([c.address], { metadata: { authorization: 'Bearer op-secret' } });
    const drain = (a: AdminClient) => new Promise<number>((resolve, reject) => {
      let n = 0;
      const s = a.saveSnapshot();
      s.on('data', (ch: { data: Buffer }) => { n += ch.data.length; });
      s.on('end', () => resolve(n));
      s.on('error', reject);
    });
    try {
      await waitFor('the coordinator answering', () => viewer.getClusterStatus().then(() => true, () => false), 20_000, 200);
      const denied = await drain(viewer).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(denied?.code).to.equal(grpc.status.PERMISSION_DENIED);
      // A follower serves it too (it reads etcd itself).
      expect(await drain(ops)).to.be.greaterThan(0);
    } finally {
      viewer.close();
      ops.close();
    }
  });
});
