// Backup and restore: `tessera operator snapshot save` streams etcd's snapshot through a
// coordinator; etcdctl checks and restores it; a coordinator on the restored etcd leads the
// cluster back to the state of the snapshot, and the agent's containers follow (what was
// started after the snapshot is stopped, what it holds runs), and a job in flight at the
// snapshot whose deadline passed by the restore fails with the reason. Real etcd, coordinator, agent and
// containers; etcdctl is the restore tool an operator would use.
import { expect } from 'chai';
import { execFile, execFileSync, fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
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
    let slow: ChildProcess | undefined;
    const file = path.join(fleet.dir, 'tessera.snapshot');
    try {
      await waitFor('snap-node READY', async () => (await admin.listNodes()).nodes.some((n) => n.id === 'snap-node' && n.state === 'NODE_STATE_READY'), 20_000, 100);
      await admin.applyApp(app('snap-kept', 2));
      await waitFor('2 snap-kept containers running', () => running('snap-kept').length === 2, 60_000, 200);
      // A job in flight when the snapshot is taken (an 8 s step of an external instance, a 10 s
      // deadline: room for a slow CLI start): its start is in the snapshot, its end is not.
      const slowPort = await freePort();
      slow = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(slowPort), KIND: 'snap-slow', DELAY_MS: '8000' }, stdio: 'ignore' });
      await waitFor('snap-slow listening', () => new Promise<boolean>((resolve) => {
        const sock = net.connect(slowPort, '127.0.0.1', () => { sock.destroy(); resolve(true); }).on('error', () => resolve(false));
      }), 10_000, 100);
      await admin.registerComponent({ instanceId: 'snap-slow-1', kind: 'snap-slow', endpoint: `127.0.0.1:${slowPort}`, ttlMs: 120_000 });
      await admin.applyPipeline({ name: 'snap-slow', stages: [{ name: 'slow', kind: 'snap-slow' }] });
      const inFlight = await waitFor('a job accepted', () => admin.submitJob({ pipeline: 'snap-slow', payload: Buffer.from('x'), timeoutMs: 10_000 }).catch(() => undefined), 10_000, 200);
      const submittedAt = Date.now();

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
      const ended = await waitFor('the job ended', async () => { const j = await admin.getJob(inFlight.id); return j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED' ? j : undefined; }, 20_000, 200);
      expect(ended.state, ended.reason).to.equal('JOB_STATE_SUCCEEDED');

      // Changes after the snapshot: a third instance, and another app.
      await admin.scaleApp('snap-kept', 'sleeper', 3);
      await admin.applyApp(app('snap-later', 1));
      await waitFor('3 + 1 containers running', () => running('snap-kept').length === 3 && running('snap-later').length === 1, 60_000, 200);

      await new Promise((r) => setTimeout(r, Math.max(0, submittedAt + 10_500 - Date.now())));
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
      // The job in flight at the snapshot, its deadline past by the restore: failed with the
      // reason, not run again (its end, after the snapshot, is not in it).
      const restoredJob = await admin.getJob(inFlight.id);
      expect(restoredJob.state).to.equal('JOB_STATE_FAILED');
      expect(restoredJob.reason).to.match(/^its leader stopped and the deadline passed before a new leader \(snap\) could resume it/);
    } finally {
      admin.close();
      slow?.kill('SIGKILL');
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
