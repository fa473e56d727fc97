// Secrets for components' environments (SetSecret, secretEnv VAR: SECRET/KEY), end to end: real
// etcd, a coordinator with --secrets-key-file, an agent and busybox containers. The value reaches
// the container's environment and nothing else: not etcd in the clear (read raw, every key),
// not an answer, not the container's labels; bad references are refused by field, and secrets in
// use cannot be deleted or lose a key. Sealing, rotation and unreadable keys are shared with
// registry credentials (secrets.test.ts).
import { expect } from 'chai';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { createEtcdClient } from '../../common/etcd';
import { repoRoot } from '../../common/version';
import { newKeyLine } from '../../coordinator/secrets';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { removeContainers } from '../helpers/docker';
import { waitFor } from '../helpers/ports';
import { laneRange } from '../helpers/lane';

describe('secrets for components\' environments', function () {
  this.timeout(120_000);
  const node = `s${randomBytes(3).toString('hex')}`;
  const k1 = newKeyLine('k1');
  const k2 = newKeyLine('k2');
  const FIRST = `first-${randomBytes(6).toString('hex')}`;
  const SECOND = `second-${randomBytes(6).toString('hex')}`;
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let coordinator: string;
  let dir: string;
  let agent: ReturnType<Fleet['agent']>;
  let c1: Awaited<ReturnType<Fleet['coordinator']>>;
  let c2: Awaited<ReturnType<Fleet['coordinator']>>;
  let otherKeys: string;
  const cliPath = () => path.join(repoRoot(), 'dist/coordinator/cli/main.js');
  const cli = (args: string[], input?: string) => new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    const child = execFile(process.execPath, [cliPath(), '-c', coordinator, ...args], (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
    child.stdin!.end(input ?? '');
  });
  const comp = (over: Record<string, unknown> = {}) => ({
    name: 'api', image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
    env: { PLAIN: 'visible' }, secretEnv: { DB_PASSWORD: 'db-creds/password', DB_USER: 'db-creds/user' }, ...over,
  });
  const running = async (app: string) => (await admin.listInstances(app)).instances.filter((i) => i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING');
  const envOf = (instanceId: string): string[] => JSON.parse(execFileSync('docker', ['inspect', '-f', '{{json .Config.Env}}', `tessera-${instanceId}`], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
  /** The error a call ends with, its field violations read from the trailers. */
  const refused = (p: Promise<unknown>) => p.then(() => undefined, (e: grpc.ServiceError) => {
    const v = e.metadata?.get('tessera-field-violations')?.[0];
    return Object.assign(e, { violations: v ? JSON.parse(String(v)) as { field: string; message: string }[] : undefined });
  });
  /** Every value under the cluster's prefix, as a reader of etcd or of its snapshots sees it. */
  async function everythingStored(): Promise<string> {
    const c = createEtcdClient({ endpoints: etcd.endpoints });
    try {
      return Object.entries(await c.getAll().prefix('/tessera/').strings()).map(([k, v]) => `${k}=${v}`).join('\n');
    } finally {
      c.close();
    }
  }

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-appsecrets-'));
    const keyFile = path.join(dir, 'secrets.keys');
    fs.writeFileSync(keyFile, `${k1}\n`, { mode: 0o600 });
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    c1 = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--secrets-key-file', keyFile] });
    coordinator = c1.address;
    await waitForLeader([c1.address]);
    // A follower whose key file lacks k1 (until a test reloads it): leading, it cannot open what c1 sealed.
    otherKeys = path.join(dir, 'other.keys');
    fs.writeFileSync(otherKeys, `${k2}\n`, { mode: 0o600 });
    c2 = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--secrets-key-file', otherKeys] });
    agent = fleet.agent({ coordinators: [c1.address, c2.address], nodeId: node, extra: ['--port-range', laneRange('30600-30619')] });
    admin = new AdminClient([c1.address, c2.address]);
    await waitFor('node READY', async () => (await admin.listNodes()).nodes.some((n) => n.state === 'NODE_STATE_READY'), 20_000, 200);
  });

  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${node}`);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('sets a secret with the CLI (a value from standard input, one from a file), and lists its keys, never its values', async () => {
    const userFile = path.join(dir, 'user');
    fs.writeFileSync(userFile, 'app-user');
    const set = await cli(['secret', 'set', 'db-creds', 'password=-', `user=@${userFile}`], `${FIRST}\n`);
    expect(set.stderr).to.equal('');
    expect(set.stdout.trim()).to.equal('secret db-creds version 1: password, user');
    const list = await cli(['secret', 'list']);
    const lines = list.stdout.trimEnd().split('\n');
    expect(lines[0]).to.match(/^NAME +KEYS +VERSION +UPDATED +BY +AT REST +USED BY$/);
    expect(lines[1]).to.match(/^db-creds +password,user +1 +\S+ +- +aes-256-gcm, key k1 +-$/);
    const json = JSON.stringify(await admin.listSecrets());
    expect(json).to.not.include(FIRST);
    expect(json).to.not.include('app-user');
    expect(await everythingStored()).to.not.include(FIRST);
    const ev = (await pastEvents(admin, ['secret.set'])).map((e) => e.message);
    expect(ev).to.include('secret db-creds version 1: password, user');
  });

  it('refuses bad secrets and references by field, and stores nothing', async () => {
    const bad = await refused(admin.setSecret({ name: 'Bad_Name', data: { 'a key': 'x', ok: 'nul\0byte' } }));
    expect(bad?.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(bad?.violations?.map((v) => v.field)).to.deep.equal(['secret.name', 'secret.data.a key', 'secret.data.ok']);
    const empty = await refused(admin.setSecret({ name: 'empty', data: {} }));
    expect(empty?.violations?.map((v) => v.field)).to.deep.equal(['secret.data']);
    const big = await refused(admin.setSecret({ name: 'big', data: { blob: 'x'.repeat(70_000) } }));
    expect(big?.violations?.[0].message).to.match(/^is 70004 bytes; a secret holds at most 65536$/);
    expect((await admin.listSecrets()).secrets.map((s) => s.name)).to.deep.equal(['db-creds']);

    const noSecret = await refused(admin.applyApp({ name: 'vault', components: [comp({ secretEnv: { TOKEN: 'nowhere/token' } })] }));
    expect(noSecret?.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(noSecret?.violations).to.deep.equal([{ field: 'components[0].secretEnv.TOKEN', message: 'no secret "nowhere" (set one with tessera secret set)' }]);
    const noKey = await refused(admin.applyApp({ name: 'vault', components: [comp({ secretEnv: { TOKEN: 'db-creds/token' } })] }));
    expect(noKey?.violations).to.deep.equal([{ field: 'components[0].secretEnv.TOKEN', message: 'secret "db-creds" has no key "token" (it has password, user)' }]);
    await admin.getApp('vault').then(() => expect.fail('nothing stored'), (e: grpc.ServiceError) => expect(e.code).to.equal(grpc.status.NOT_FOUND));

    const unknown = await refused(admin.deleteSecret('nowhere'));
    expect(unknown?.code).to.equal(grpc.status.NOT_FOUND);
    const usage = await cli(['secret', 'set', 'x', 'novalue']);
    expect(usage.code).to.not.equal(0);
    expect(usage.stderr).to.match(/"novalue" is not KEY=VALUE, KEY=@FILE or KEY=-/);
  });

  it('puts the values in the container\'s environment, and nowhere else: not etcd, not an answer, not the container\'s labels', async () => {
    await admin.applyApp({ name: 'vault', components: [comp()] });
    const [inst] = await waitFor('running', async () => { const r = await running('vault'); return r.length ? r : undefined; }, 30_000, 200);
    const env = envOf(inst.id);
    expect(env).to.include.members([`DB_PASSWORD=${FIRST}`, 'DB_USER=app-user', 'PLAIN=visible']);
    // Through tessera exec, as an operator would check it.
    const shown = await cli(['exec', inst.id, '--', 'sh', '-c', 'echo "$DB_USER:$DB_PASSWORD"']);
    expect(shown.stdout).to.equal(`app-user:${FIRST}\n`);
    // The label keeps the spec for adoption, without the values.
    const label = execFileSync('docker', ['inspect', '-f', '{{index .Config.Labels "tessera.spec"}}', `tessera-${inst.id}`]).toString().trim();
    const spec = JSON.parse(Buffer.from(label, 'base64').toString());
    expect(spec.secretEnv).to.deep.equal(['DB_PASSWORD', 'DB_USER']);
    expect(spec.env).to.have.property('PLAIN', 'visible');
    expect(spec.env).to.not.have.property('DB_PASSWORD');
    expect(Buffer.from(label, 'base64').toString()).to.not.include(FIRST);
    // The spec names the reference only.
    const app = await admin.getApp('vault');
    expect(app.spec?.components[0].secretEnv).to.deep.equal({ DB_PASSWORD: 'db-creds/password', DB_USER: 'db-creds/user' });
    expect(JSON.stringify(app)).to.not.include(FIRST);
    expect(JSON.stringify(await admin.listInstances('vault'))).to.not.include(FIRST);
    expect(await everythingStored()).to.not.include(FIRST);
    expect((await admin.listSecrets('db-creds')).secrets[0].usedBy).to.deep.equal(['vault/api']);
  });

  it('keeps a secret in use: no delete, no key removed; a new value reaches new instances (app restart), running ones keep theirs', async () => {
    const del = await refused(admin.deleteSecret('db-creds'));
    expect(del?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(del?.details).to.equal('secret db-creds is named by vault/api (the current or the stable version): apply those without it first, and let the rollout finish');
    const lose = await refused(admin.setSecret({ name: 'db-creds', data: { password: SECOND } }));
    expect(lose?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(lose?.details).to.equal('secret db-creds: key user is named by vault/api (secretEnv.DB_USER): keep it, or apply those without it first');

    const [before] = await running('vault');
    const set = await cli(['secret', 'set', 'db-creds', `password=${SECOND}`, 'user=app-user']);
    expect(set.stdout.trim().split('\n')).to.deep.equal([
      'secret db-creds version 2: password, user',
      'used by vault/api: running instances keep the values they started with; tessera app restart APP rolls the new ones out',
    ]);
    expect(envOf(before.id)).to.include(`DB_PASSWORD=${FIRST}`);
    await admin.restartApp('vault');
    const after = await waitFor('a new instance running', async () => (await running('vault')).find((i) => i.id !== before.id), 60_000, 200);
    expect(envOf(after.id)).to.include(`DB_PASSWORD=${SECOND}`);
    await waitFor('the rollout done: the old one stopped', async () => (await running('vault')).map((i) => i.id).join() === after.id, 60_000, 200);
    expect(await everythingStored()).to.not.include(SECOND);
  });

  it('hands a restarted agent the values of the instances it adopted: a container it makes again has them', async () => {
    const [inst] = await running('vault');
    await agent.kill('SIGKILL');
    agent.start();
    // Adopted from the label (no values); the leader's RUN brings them again.
    await waitFor('the values handed over again', async () => fs.readFileSync(agent.logFile, 'utf8').includes('secret env values taken for an instance already here'), 30_000, 200);
    execFileSync('docker', ['rm', '-f', `tessera-${inst.id}`]);
    await waitFor('the same instance running in a new container', async () => {
      try {
        return envOf(inst.id).includes(`DB_PASSWORD=${SECOND}`);
      } catch {
        return false;
      }
    }, 30_000, 200);
    expect(envOf(inst.id)).to.include('DB_USER=app-user');
    await waitFor('the same instance RUNNING again', async () => (await running('vault')).some((i) => i.id === inst.id), 30_000, 200);
  });

  it('starts no instance whose secret the leader cannot open: an event says why, the old one serves on, and it starts once the key is back', async () => {
    const [old] = await running('vault');
    // c2 leads: its key file lacks k1, which sealed db-creds.
    await c1.kill('SIGTERM');
    coordinator = c2.address;
    await waitForLeader([c2.address]);
    expect((await admin.listSecrets('db-creds')).secrets[0].atRest).to.match(/^unreadable: sealed with key "k1"/);
    await admin.replaceInstance(old.id, 'a new one with the rotated password');
    const ev = await waitFor('the event', async () => (await pastEvents(admin, ['instance.secret_unavailable']))[0], 20_000, 200);
    expect(ev.message).to.match(/^not started: secret db-creds \(secretEnv.DB_PASSWORD\) cannot be opened: sealed with key "k1", which this coordinator's --secrets-key-file does not hold/);
    // Said once, for the new instance only (the RUN handed over for the running one is left out quietly).
    expect(ev.subject).to.not.equal(old.id);
    await new Promise((r) => setTimeout(r, 6_000)); // past the RUN's resend window
    expect((await pastEvents(admin, ['instance.secret_unavailable'])).map((e) => e.subject)).to.deep.equal([ev.subject]);
    expect((await running('vault')).map((i) => i.id)).to.deep.equal([old.id]);
    // The key back (reloaded, no restart): the secret opens, the new instance starts with it, the old one goes.
    fs.writeFileSync(otherKeys, `${k2}\n${k1}\n`, { mode: 0o600 });
    process.kill(c2.pid, 'SIGHUP');
    const fresh = await waitFor('the new instance running', async () => (await running('vault')).find((i) => i.id === ev.subject), 30_000, 200);
    expect(envOf(fresh.id)).to.include(`DB_PASSWORD=${SECOND}`);
    await waitFor('the old one stopped', async () => !(await running('vault')).some((i) => i.id === old.id), 30_000, 200);
  });

  it('deletes a secret no app names any more', async () => {
    await admin.applyApp({ name: 'vault', components: [comp({ secretEnv: {} })] });
    await waitFor('the rollout without it done', async () => (await admin.getApp('vault')).status === 'running' && (await running('vault')).every((i) => !envOf(i.id).some((e) => e.startsWith('DB_PASSWORD='))), 60_000, 200);
    const gone = await cli(['secret', 'delete', 'db-creds']);
    expect(gone.stdout.trim()).to.equal('secret db-creds removed');
    expect((await admin.listSecrets()).secrets).to.deep.equal([]);
    expect((await pastEvents(admin, ['secret.deleted'])).map((e) => e.subject)).to.deep.equal(['db-creds']);
  });
});
