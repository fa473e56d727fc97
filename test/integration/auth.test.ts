// Admin API tokens: no token is UNAUTHENTICATED, a read-only token cannot write
// (PERMISSION_DENIED), an operator can; every denial is logged; the CLI sends the token; each
// write's events name the token that made it, and a cancelled job's reason who cancelled it;
// SIGHUP reads the tokens file again.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { sha256 } from '../../coordinator/auth';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { waitFor } from '../helpers/ports';
import { pastEvents } from '../helpers/cluster';
import { startEcho } from '../helpers/echo';

const run = promisify(execFile);

describe('Admin API tokens', function () {
  this.timeout(60_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let address = '';
  let follower = '';
  const spec = { name: 'authz', components: [{ name: 'x', image: 'tessera/busybox:local', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 0 }] };

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const file = path.join(fleet.dir, 'tokens.yaml');
    fs.writeFileSync(file, `tokens:\n  - { name: ops, role: operator, sha256: ${sha256('op-secret').toString('hex')} }\n  - { name: viewer, role: read-only, token: view-secret }\n`);
    const c = await fleet.coordinator({ etcd: etcd.endpoints, id: 'auth', extra: ['--tokens-file', file] });
    address = c.address;
    const viewer = new AdminClient([address], { metadata: { authorization: 'Bearer view-secret' }, timeoutMs: 2_000 });
    await waitFor('a leader', async () => !!(await viewer.getClusterStatus()).leader?.id, 15_000, 200);
    viewer.close();
    // A second coordinator (a follower, the first leads): writes through it are forwarded.
    follower = (await fleet.coordinator({ etcd: etcd.endpoints, id: 'auth-2', extra: ['--tokens-file', file] })).address;
    const viaFollower = new AdminClient([follower], { metadata: { authorization: 'Bearer view-secret' }, timeoutMs: 2_000 });
    await waitFor('the follower answering', async () => !!(await viaFollower.getClusterStatus().catch(() => undefined))?.leader?.id, 15_000, 200);
    viaFollower.close();
  });
  after(async () => {
    await fleet?.stop();
    await etcd?.stop();
  });

  const client = (token?: string) => new AdminClient([address], { metadata: token ? { authorization: `Bearer ${token}` } : {} });
  const logs = (c: AdminClient, instanceId: string) => new Promise<void>((resolve, reject) => {
    const s = c.instanceLogs({ instanceId });
    s.on('data', () => {});
    s.on('end', resolve);
    s.on('error', reject);
  });
  const codeOf = async (p: Promise<unknown>) => (await p.then(() => grpc.status.OK, (e: grpc.ServiceError) => e.code));

  it('refuses a call without a token, or with an unknown one, as UNAUTHENTICATED', async () => {
    for (const c of [client(), client('wrong')]) {
      expect(await codeOf(c.listNodes())).to.equal(grpc.status.UNAUTHENTICATED);
      expect(await codeOf(c.applyApp(spec))).to.equal(grpc.status.UNAUTHENTICATED);
      expect(await codeOf(logs(c, 'any-instance')), 'instance logs (a stream)').to.equal(grpc.status.UNAUTHENTICATED);
      c.close();
    }
  });

  it('lets a read-only token read but not write (PERMISSION_DENIED)', async () => {
    const c = client('view-secret');
    expect(await codeOf(c.getClusterStatus())).to.equal(grpc.status.OK);
    expect(await codeOf(c.listApps())).to.equal(grpc.status.OK);
    // Logs are a read (as Kubernetes' view role reads pod logs): past the token check, the instance is unknown.
    expect(await codeOf(logs(c, 'no-such-instance'))).to.equal(grpc.status.NOT_FOUND);
    // So is a rollback's plan (PlanRollback), where the rollback itself is a write.
    expect(await codeOf(c.planRollback('no-such-app'))).to.equal(grpc.status.NOT_FOUND);
    expect(await codeOf(c.rollbackApp('no-such-app'))).to.equal(grpc.status.PERMISSION_DENIED);
    const err = await c.applyApp(spec).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(err.code).to.equal(grpc.status.PERMISSION_DENIED);
    expect(err.details).to.match(/token "viewer" is read-only; ApplyApp needs the operator role/);
    expect(await codeOf(c.drainNode({ nodeId: 'n1' }))).to.equal(grpc.status.PERMISSION_DENIED);
    expect(await codeOf(c.removeNode('n1'))).to.equal(grpc.status.PERMISSION_DENIED);
    expect(await codeOf(c.restartApp('x'))).to.equal(grpc.status.PERMISSION_DENIED);
    expect(await codeOf(c.promoteApp('x'))).to.equal(grpc.status.PERMISSION_DENIED);
    expect(await codeOf(c.scaleApp('x', 'y', 1))).to.equal(grpc.status.PERMISSION_DENIED);
    // Secrets: their keys are a read, setting and deleting them are not.
    expect(await codeOf(c.listSecrets())).to.equal(grpc.status.OK);
    expect(await codeOf(c.setSecret({ name: 'x', data: { k: 'v' } }))).to.equal(grpc.status.PERMISSION_DENIED);
    expect(await codeOf(c.deleteSecret('x'))).to.equal(grpc.status.PERMISSION_DENIED);
    // A command in an instance is not a read (a stream): refused before the instance is looked up.
    const exec = await new Promise<void>((resolve, reject) => {
      const s = c.execInstance({ instanceId: 'no-such-instance', command: ['true'] });
      s.on('data', () => {});
      s.on('end', resolve);
      s.on('error', reject);
    }).catch((e: grpc.ServiceError) => e);
    expect((exec as grpc.ServiceError).code).to.equal(grpc.status.PERMISSION_DENIED);
    expect((exec as grpc.ServiceError).details).to.match(/token "viewer" is read-only; ExecInstance needs the operator role/);
    const interactive = await new Promise<void>((resolve, reject) => {
      const s = c.execInteractive();
      s.on('data', () => {});
      s.on('end', resolve);
      s.on('error', reject);
      s.write({ start: { instanceId: 'no-such-instance', command: ['sh'] } });
    }).catch((e: grpc.ServiceError) => e);
    expect((interactive as grpc.ServiceError).details).to.match(/token "viewer" is read-only; ExecInteractive needs the operator role/);
    // Jobs are writes, one at a time or over a SubmitJobs stream.
    expect(await codeOf(c.submitJob({ pipeline: 'x', payload: Buffer.from('x') }))).to.equal(grpc.status.PERMISSION_DENIED);
    const js = c.jobStream();
    expect(await codeOf(js.submit({ pipeline: 'x', payload: Buffer.from('x') }))).to.equal(grpc.status.PERMISSION_DENIED);
    js.close();
    c.close();
  });

  it('lets an operator token write, through the CLI too', async () => {
    const c = client('op-secret');
    const res = await c.applyApp(spec);
    expect(res.app!.name).to.equal('authz');
    c.close();
    const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
    const out = await run(process.execPath, [cli, '-c', address, '--token', 'op-secret', 'apps']);
    expect(out.stdout).to.contain('authz');
    const denied = await run(process.execPath, [cli, '-c', address, 'apps']).then(() => '', (e: { stderr: string }) => e.stderr);
    expect(denied).to.contain('UNAUTHENTICATED');
  });

  it('names who made each write in its event (by), through a follower too, whatever a client claims', async () => {
    const viaFollower = new AdminClient([follower], { metadata: { authorization: 'Bearer op-secret', 'tessera-caller': 'mallory' } });
    const spoofed = new AdminClient([address], { metadata: { authorization: 'Bearer op-secret', 'tessera-caller': 'mallory' } });
    try {
      await viaFollower.applyApp({ ...spec, name: 'by-follower' });
      await spoofed.setQuota({ kind: 'by-kind', cpuMillis: 100 });
      const events = await pastEvents(spoofed, ['app.', 'quota.']);
      const applied = events.find((e) => e.kind === 'app.applied' && e.subject === 'by-follower');
      expect(applied?.fields?.by, JSON.stringify(applied)).to.equal('ops');
      expect(events.find((e) => e.kind === 'quota.set' && e.subject === 'by-kind')?.fields?.by).to.equal('ops');
      expect(events.some((e) => e.fields?.by === 'mallory')).to.equal(false);
      // And the version it made says so (tessera app history's BY).
      expect((await spoofed.appHistory('by-follower')).versions.map((v) => v.by)).to.deep.equal(['ops']);
      const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
      const out = await run(process.execPath, [cli, '-c', follower, '--token', 'op-secret', 'events', '--kind', 'quota.']);
      expect(out.stdout).to.match(/quota of kind by-kind: 100 millicores, any MiB \(by ops\)/);
    } finally {
      viaFollower.close();
      spoofed.close();
    }
  });

  it('names who submitted a job and who cancelled it, through a follower and a submission stream too', async () => {
    const started = await startEcho('slow-auth', { DELAY_MS: '30000' });
    const viaFollower = new AdminClient([follower], { metadata: { authorization: 'Bearer op-secret', 'tessera-caller': 'mallory' } });
    try {
      await viaFollower.registerComponent({ instanceId: 'slow-auth-1', kind: 'slow-auth', endpoint: `127.0.0.1:${started.port}`, ttlMs: 60_000 });
      await viaFollower.applyPipeline({ name: 'slow-auth', stages: [{ name: 'wait', kind: 'slow-auth' }] });
      const job = await viaFollower.submitJob({ pipeline: 'slow-auth', payload: Buffer.from('x') });
      expect(job.submittedBy, 'the token\'s name, not what the client claims').to.equal('ops');
      const cancelled = await viaFollower.cancelJob(job.id);
      expect([cancelled.state, cancelled.reason, cancelled.submittedBy]).to.deep.equal(['JOB_STATE_CANCELLED', 'cancelled through Admin by ops', 'ops']);
      // A SubmitJobs stream: each submission is the stream's caller's (its token's name).
      const streamClient = new AdminClient([address], { metadata: { authorization: 'Bearer op-secret' } });
      const stream = streamClient.jobStream();
      try {
        const streamed = await stream.submit({ pipeline: 'slow-auth', payload: Buffer.from('y') });
        expect(streamed.submittedBy).to.equal('ops');
        expect((await viaFollower.cancelJob(streamed.id)).submittedBy).to.equal('ops');
      } finally {
        stream.close();
        streamClient.close();
      }
      const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
      const got = await run(process.execPath, [cli, '-c', follower, '--token', 'op-secret', 'job', 'get', job.id]);
      expect(got.stdout).to.match(new RegExp(`^job ${job.id} \\(slow-auth\\): CANCELLED in \\d+ ms, submitted by ops - cancelled through Admin by ops`));
      const listed = await run(process.execPath, [cli, '-c', follower, '--token', 'op-secret', 'job', 'list', '--pipeline', 'slow-auth']);
      expect(listed.stdout).to.match(/^ID +PIPELINE +STATE +SUBMITTED +BY +TOOK/);
      expect(listed.stdout).to.match(new RegExp(`${job.id} +slow-auth +CANCELLED +\\S+ +ops `));
    } finally {
      viaFollower.close();
      started.proc.kill('SIGKILL');
    }
  });

  it('logs every denied call', () => {
    const log = fs.readFileSync(fleet.procs[0].logFile, 'utf8').split('\n').filter((l) => l.includes('admin call denied'));
    expect(log.length).to.be.at.least(5);
    expect(log.some((l) => l.includes('PERMISSION_DENIED') && l.includes('ApplyApp'))).to.equal(true);
  });

  it('reads the tokens file again on SIGHUP (systemctl reload): a new token works, a revoked one is refused, a broken file changes nothing', async () => {
    const file = path.join(fleet.dir, 'tokens.yaml');
    const [leader, second] = fleet.procs;
    const logOf = (p: typeof leader) => fs.readFileSync(p.logFile, 'utf8');
    const hup = () => { for (const p of [leader, second]) process.kill(p.pid, 'SIGHUP'); };
    // viewer revoked, ci added.
    fs.writeFileSync(file, `tokens:\n  - { name: ops, role: operator, sha256: ${sha256('op-secret').toString('hex')} }\n  - { name: ci, role: operator, token: ci-secret }\n`);
    hup();
    const ci = client('ci-secret');
    const viewer = client('view-secret');
    try {
      await waitFor('the new token accepted', async () => (await codeOf(ci.listNodes())) === grpc.status.OK, 10_000, 100);
      expect(await codeOf(viewer.listNodes())).to.equal(grpc.status.UNAUTHENTICATED);
      // Through the follower too (each coordinator checks the token).
      const viaFollower = new AdminClient([follower], { metadata: { authorization: 'Bearer ci-secret' } });
      expect(await codeOf(viaFollower.applyApp({ ...spec, name: 'by-ci' }))).to.equal(grpc.status.OK);
      viaFollower.close();
      expect(logOf(leader)).to.match(/"msg":"Admin API tokens reloaded"/).and.match(/"applied":\["tokensFile","relayKey"\]/);
      // Still up, still leading: SIGHUP is not the end of the process (node's default).
      expect(leader.running).to.equal(true);
      expect((await ci.getClusterStatus()).leader?.id).to.equal('auth');

      // A broken file: logged, and the running tokens stay.
      fs.writeFileSync(file, 'tokens: [ { name: broken\n');
      hup();
      await waitFor('the refusal logged', async () => /SIGHUP: the settings do not compile; the running ones stay/.test(logOf(leader)), 10_000, 100);
      expect(await codeOf(ci.listNodes())).to.equal(grpc.status.OK);
      expect(await codeOf(viewer.listNodes())).to.equal(grpc.status.UNAUTHENTICATED);
    } finally {
      ci.close();
      viewer.close();
    }
  });
});
