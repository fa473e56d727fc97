// Registry passwords and secrets at rest (--secrets-key-file): sealed before they reach etcd,
// resealed by a new leader when keys rotate, and refused clearly by a leader that lacks their key. Real etcd
// and coordinator processes, one after another on the same etcd (each a new leader); the etcd
// values are read raw. The pull with a sealed credential is in image-pull.test.ts.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { createEtcdClient } from '../../common/etcd';
import { repoRoot } from '../../common/version';
import { loadKeyring, newKeyLine } from '../../coordinator/secrets';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { healthClient, pastEvents, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';

describe('registry passwords at rest', function () {
  this.timeout(120_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let dir: string;
  const keys = { k1: newKeyLine('k1'), k2: newKeyLine('k2'), k3: newKeyLine('k3') };
  const keyFile = (name: string, ...lines: string[]) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, `${lines.join('\n')}\n`, { mode: 0o600 });
    return f;
  };
  const SERVER = 'registry.example.com:5000';
  const IMAGE = `${SERVER}/team/web:1`;

  /** One coordinator at a time: the one before it steps down (SIGTERM), and this one leads. */
  let current: Awaited<ReturnType<Fleet['coordinator']>> | undefined;
  let admin: AdminClient | undefined;
  async function lead(keyFileArg?: string): Promise<AdminClient> {
    admin?.close();
    await current?.kill('SIGTERM');
    current = await fleet.coordinator({ etcd: etcd.endpoints, extra: keyFileArg ? ['--secrets-key-file', keyFileArg] : [] });
    await waitForLeader([current.address]);
    // Loaded, not only elected: its load reseals what it finds (on a slow day a check right after
    // the election read the old seal).
    const health = healthClient(current.address);
    try {
      await waitFor('the leader loaded', async () => (await health.check('tessera.v1.Leader')) === 'SERVING', 15_000, 100);
    } finally {
      health.close();
    }
    admin = new AdminClient([current.address]);
    return admin;
  }
  /** What etcd holds for a credential, as any reader of etcd (or of a snapshot) sees it. */
  async function stored(name: string, under = 'registry-credentials'): Promise<string> {
    const c = createEtcdClient({ endpoints: etcd.endpoints });
    try {
      return (await c.get(`/tessera/${under}/${name}`).string()) ?? '';
    } finally {
      c.close();
    }
  }
  const atRest = async (a: AdminClient, name: string) => (await a.listRegistryCredentials(name)).credentials[0].atRest;
  /** The secret "env" (for components' environments), sealed and resealed alongside. */
  const secretAtRest = async (a: AdminClient) => (await a.listSecrets('env')).secrets[0].atRest;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-keys-'));
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
  });

  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('stores a password in the clear without a key file, and sealed with one; a new leader seals what it finds in the clear', async () => {
    let a = await lead();
    await a.setRegistryCredential({ name: 'early', server: SERVER, username: 'ops', password: 'pl4in-s3cret' });
    expect(await stored('early')).to.include('pl4in-s3cret');
    expect(await atRest(a, 'early')).to.equal('plaintext');
    await a.setSecret({ name: 'env', data: { token: 'pl4in-t0ken' } });
    expect(await stored('env', 'secrets')).to.include('pl4in-t0ken');
    expect(await secretAtRest(a)).to.equal('plaintext');

    a = await lead(keyFile('one', keys.k1));
    // The new leader resealed it as it loaded: etcd no longer holds the password.
    const raw = await stored('early');
    expect(raw).to.not.include('pl4in-s3cret');
    expect(JSON.parse(raw).sealed.k).to.equal('k1');
    expect(await atRest(a, 'early')).to.equal('aes-256-gcm, key k1');
    const ev = await pastEvents(a, ['registry-credential.resealed']);
    expect(ev.map((e) => e.message)).to.include('registry credential early sealed with key k1 (was plaintext)');
    expect(await stored('env', 'secrets')).to.not.include('pl4in-t0ken');
    expect(JSON.parse(await stored('env', 'secrets')).sealed.k).to.equal('k1');
    expect(await secretAtRest(a)).to.equal('aes-256-gcm, key k1');
    expect((await pastEvents(a, ['secret.resealed'])).map((e) => e.message)).to.include('secret env sealed with key k1 (was plaintext)');
    // Set under a key file: sealed from the start; the API never shows the password either way.
    const set = await a.setRegistryCredential({ name: 'later', server: SERVER, username: 'ci', password: 'l4ter-s3cret' });
    expect([set.password, set.atRest]).to.deep.equal(['', 'aes-256-gcm, key k1']);
    expect(await stored('later')).to.not.include('l4ter-s3cret');
  });

  it('rotates keys: a leader with a new key first reseals, and the old key can then go', async () => {
    let a = await lead(keyFile('rotating', keys.k2, keys.k1));
    for (const name of ['early', 'later']) {
      expect(JSON.parse(await stored(name)).sealed.k, name).to.equal('k2');
      expect(await atRest(a, name)).to.equal('aes-256-gcm, key k2');
    }
    expect(JSON.parse(await stored('env', 'secrets')).sealed.k).to.equal('k2');
    a = await lead(keyFile('rotated', keys.k2));
    expect(await atRest(a, 'later')).to.equal('aes-256-gcm, key k2');
    // What the operator checks before dropping the old key.
    const cli = spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', current!.address, 'registry-auth', 'list'], { encoding: 'utf8', timeout: 20_000 });
    const lines = cli.stdout.trimEnd().split('\n');
    expect(lines[0]).to.match(/^NAME +SERVER +USERNAME +UPDATED +BY +AT REST +USED BY$/);
    expect(lines.slice(1).map((l) => /aes-256-gcm, key (\w+)/.exec(l)?.[1])).to.deep.equal(['k2', 'k2']);
    // Opened, so an app may name it (the apply checks it; nothing here places instances).
    const res = await a.applyApp({ name: 'sealedapp', components: [{ name: 'web', image: IMAGE, imagePullCredential: 'later', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1 }] });
    expect(Number(res.app?.version)).to.equal(1);
  });

  it('refuses an app naming a credential the leader cannot open (FAILED_PRECONDITION, saying why), until it is set again', async () => {
    const a = await lead(keyFile('other', keys.k3));
    const why = 'sealed with key "k2", which this coordinator\'s --secrets-key-file does not hold (it has k3)';
    expect(await atRest(a, 'later')).to.equal(`unreadable: ${why}`);
    // Not resealed (it cannot be opened) and not lost: etcd keeps the k2 value for a leader that has k2.
    expect(JSON.parse(await stored('later')).sealed.k).to.equal('k2');
    const err = await a.applyApp({ name: 'sealedapp', components: [{ name: 'web', image: IMAGE, imagePullCredential: 'later', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 2 }] })
      .then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(err?.details).to.equal(`registry credential later (components[0].imagePullCredential) cannot be opened: ${why}`);
    expect(await secretAtRest(a)).to.equal(`unreadable: ${why}`);
    const envErr = await a.applyApp({ name: 'sealedapp', components: [{ name: 'web', image: IMAGE, secretEnv: { TOKEN: 'env/token' }, resources: { cpuMillis: 10, memoryMib: 16 }, instances: 2 }] })
      .then(() => undefined, (e: grpc.ServiceError) => e);
    expect(envErr?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(envErr?.details).to.equal(`secret env (components[0].secretEnv.TOKEN) cannot be opened: ${why}`);
    expect(Number((await a.getApp('sealedapp')).version), 'nothing stored').to.equal(1);
    await a.setRegistryCredential({ name: 'later', server: SERVER, username: 'ci', password: 'n3w-s3cret' });
    expect(await atRest(a, 'later')).to.equal('aes-256-gcm, key k3');
    await a.applyApp({ name: 'sealedapp', components: [{ name: 'web', image: IMAGE, imagePullCredential: 'later', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 2 }] });
  });

  it('shows each coordinator\'s keys in status, and warns when they differ (the next leader might not open what this one sealed)', async () => {
    const fingerprint = (line: string) => `${line.slice(0, line.indexOf(':'))}:${createHash('sha256').update('tessera secrets key\0').update(Buffer.from(line.slice(line.indexOf(':') + 1), 'base64')).digest('hex').slice(0, 8)}`;
    const same = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--secrets-key-file', keyFile('same', keys.k3)] });
    const status = async () => {
      const s = await admin!.getClusterStatus();
      return Object.fromEntries(s.coordinators.map((c) => [c.id, c.secretsKeys]));
    };
    const cli = () => spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', current!.address, 'status'], { encoding: 'utf8', timeout: 20_000 }).stdout;
    try {
      await waitFor('the follower listed', async () => Object.keys(await status()).length === 2, 10_000, 100);
      expect(await status()).to.deep.equal({ [current!.id]: [fingerprint(keys.k3)], [same.id]: [fingerprint(keys.k3)] });
      expect(cli()).to.match(/COORDINATOR .* SECRETS KEYS/).and.not.match(/warning/);
      const other = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--secrets-key-file', keyFile('differs', keys.k2, keys.k3)] });
      try {
        await waitFor('the second follower listed', async () => Object.keys(await status()).length === 3, 10_000, 100);
        expect((await status())[other.id]).to.deep.equal([fingerprint(keys.k2), fingerprint(keys.k3)]);
        const out = cli();
        expect(out).to.match(new RegExp(`${other.id} .*k2:[0-9a-f]{8}, k3:[0-9a-f]{8}`));
        expect(out).to.match(/warning: the coordinators hold different --secrets-key-file keys/);
      } finally {
        await other.kill('SIGTERM');
      }
    } finally {
      await same.kill('SIGTERM');
    }
  });

  it('reads the key file again on SIGHUP: a key added opens what could not be opened, the leader reseals with the new first key, and status shows the keys at once', async () => {
    const fingerprints = async () => (await admin!.getClusterStatus()).coordinators.find((c) => c.id === current!.id)?.secretsKeys?.map((k) => k.split(':')[0]);
    // The leader has k3 only (the test before): "early" is sealed with k2 and cannot be opened.
    expect(await atRest(admin!, 'early')).to.match(/^unreadable: sealed with key "k2"/);
    // The operator's rotation without restarts: the new key first, the others kept, then reload.
    keyFile('other', keys.k1, keys.k2, keys.k3);
    process.kill(current!.pid, 'SIGHUP');
    await waitFor('both resealed with k1', async () => (await atRest(admin!, 'early')) === 'aes-256-gcm, key k1' && (await atRest(admin!, 'later')) === 'aes-256-gcm, key k1', 10_000, 100);
    expect(JSON.parse(await stored('early')).sealed.k).to.equal('k1');
    expect(JSON.parse(await stored('later')).sealed.k).to.equal('k1');
    await waitFor('the secret resealed with k1 too', async () => (await secretAtRest(admin!)) === 'aes-256-gcm, key k1', 10_000, 100);
    expect(JSON.parse(await stored('env', 'secrets')).sealed.k).to.equal('k1');
    await waitFor('status shows the new keys', async () => (await fingerprints())?.join(',') === 'k1,k2,k3', 10_000, 100);
    const resealed = (await pastEvents(admin!, ['registry-credential.resealed'])).filter((e) => /sealed with key k1 \(was key k/.test(e.message ?? ''));
    expect(resealed.map((e) => e.subject).sort()).to.deep.equal(['early', 'later']);
    // The old keys go once nothing is sealed with them; a file that does not load changes nothing.
    keyFile('other', keys.k1);
    process.kill(current!.pid, 'SIGHUP');
    await waitFor('status shows k1 only', async () => (await fingerprints())?.join(',') === 'k1', 10_000, 100);
    expect(await atRest(admin!, 'early')).to.equal('aes-256-gcm, key k1');
    fs.writeFileSync(path.join(dir, 'other'), 'k9:c2hvcnQ=\n');
    process.kill(current!.pid, 'SIGHUP');
    await waitFor('the refusal logged', async () => /SIGHUP: the settings do not compile; the running ones stay/.test(fs.readFileSync(current!.logFile, 'utf8')), 10_000, 100);
    expect((await fingerprints())?.join(',')).to.equal('k1');
    expect(await atRest(admin!, 'later')).to.equal('aes-256-gcm, key k1');
  });

  it('makes key file lines with tessera operator keygen (named, or named after the date)', () => {
    const cli = (...a: string[]) => spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), 'operator', 'keygen', ...a], { encoding: 'utf8', timeout: 20_000 });
    const named = cli('k9');
    expect(named.status).to.equal(0);
    expect(named.stdout).to.match(/^k9:[A-Za-z0-9+/]{43}=\n$/);
    expect(cli().stdout).to.match(/^k\d{8}:/);
    expect(cli('k9').stdout, 'a new key each time').to.not.equal(named.stdout);
    expect(loadKeyring(keyFile('generated', named.stdout.trim())).primary).to.equal('k9');
    const bad = cli('no spaces');
    expect([bad.status, bad.stderr]).to.deep.equal([1, 'error: a key name is letters, digits, ".", "_" or "-", got "no spaces"\n']);
  });

  it('refuses to start (exit 2) with a key file others may read, or a key of the wrong size', () => {
    const open = keyFile('readable', keys.k1);
    fs.chmodSync(open, 0o644);
    const short = keyFile('short', `k1:${Buffer.alloc(31).toString('base64')}`);
    for (const [f, msg] of [[open, /secretsKeyFile: .*readable may be read or changed by others than its owner and group \(mode 644\): chmod 600 it/], [short, /secretsKeyFile: .*short line 1: key "k1" must be 32 bytes in base64 \(44 characters\), got 31 bytes/]] as const) {
      const r = spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/main.js'), '--insecure-dev', '--etcd-endpoints', etcd.endpoints[0], '--secrets-key-file', f], { encoding: 'utf8', timeout: 20_000 });
      expect(r.status, r.stderr).to.equal(2);
      expect(r.stderr).to.match(msg);
    }
  });
});
