// Image pulls: the agent pulls an instance's image from its registry by the spec's
// imagePullPolicy, with credentials from a Docker config file for a private registry. Real etcd,
// coordinator and agent processes, the real Docker Engine pulling from registries on 127.0.0.1
// (test/helpers/registry.ts: the registry API's pull side, serving a local image).
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { removeContainers, removeImage } from '../helpers/docker';
import { TestRegistry } from '../helpers/registry';
import { createEtcdClient } from '../../common/etcd';
import { newKeyLine } from '../../coordinator/secrets';
import { laneRange } from '../helpers/lane';

const BASE = 'tessera/busybox:local';

describe('image pulls', function () {
  this.timeout(120_000);
  const tag = randomBytes(3).toString('hex');
  const plain = `p${tag}`;
  const withAuth = `a${tag}`;
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let registry: TestRegistry;
  let privateRegistry: TestRegistry;
  let dir: string;
  const refs: string[] = [];

  const comp = (name: string, image: string, over: Record<string, unknown> = {}) => ({
    name, image, command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
    restart: { attempts: 2, windowMs: 60_000, delayMs: 200 }, ...over,
  });
  const instances = async (app: string) => (await admin.listInstances(app)).instances;

  before(async () => {
    registry = await TestRegistry.start();
    privateRegistry = await TestRegistry.start({ auth: { username: 'ops', password: 's3cret' } });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-pull-'));
    // What `docker login` writes: base64 of user:password under the registry's host:port.
    const authFile = path.join(dir, 'config.json');
    fs.writeFileSync(authFile, JSON.stringify({ auths: { [privateRegistry.address]: { auth: Buffer.from('ops:s3cret').toString('base64') } } }));
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    // Registry passwords sealed at rest (secrets.test.ts has the key file's rules and rotation).
    const keyFile = path.join(dir, 'secrets.keys');
    fs.writeFileSync(keyFile, `${newKeyLine('k1')}\n`, { mode: 0o600 });
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--secrets-key-file', keyFile] });
    await waitForLeader([c1.address]);
    fleet.agent({ coordinators: [c1.address], nodeId: plain, extra: ['--port-range', laneRange('30300-30349'), '--labels', 'creds=none'] });
    fleet.agent({ coordinators: [c1.address], nodeId: withAuth, extra: ['--port-range', laneRange('30350-30399'), '--labels', 'creds=private', '--registry-auth', authFile] });
    admin = new AdminClient([c1.address]);
    await waitFor('both nodes READY', async () => (await admin.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 2, 20_000, 200);
  });

  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${plain}`);
    removeContainers(`tessera.node=${withAuth}`);
    for (const r of refs) removeImage(r);
    await registry?.stop();
    await privateRegistry?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('pulls an image the host lacks (IfNotPresent, the default), once: a second instance finds it there', async () => {
    const ref = registry.publish(BASE, 'tessera/pulled', tag);
    refs.push(ref);
    removeImage(ref);
    const pin = [{ label: 'creds', op: '=', value: 'none' }];
    await admin.applyApp({ name: 'pulled', components: [comp('web', ref, { constraints: pin })] });
    await waitFor('RUNNING from the pulled image', async () => (await instances('pulled')).some((i) => i.state === 'INSTANCE_STATE_RUNNING'), 60_000, 200);
    expect(registry.manifestRequests('tessera/pulled', tag)).to.have.length(1);
    const pulled = await pastEvents(admin, ['instance.pulling', 'instance.pulled']);
    expect(pulled.map((e) => e.kind)).to.include.members(['instance.pulling', 'instance.pulled']);
    expect(pulled.find((e) => e.kind === 'instance.pulled')!.message).to.match(new RegExp(`image ${ref.replace(/[.]/g, '\\.')} pulled in [0-9.]+ s`));

    await admin.applyApp({ name: 'pulled', components: [comp('web', ref, { constraints: pin, instances: 2 })] });
    await waitFor('two RUNNING', async () => (await instances('pulled')).filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length === 2, 60_000, 200);
    expect(registry.manifestRequests('tessera/pulled', tag)).to.have.length(1);
  });

  it('pulls before every container it creates with Always: an app restart of one component pulls again, the others stay', async () => {
    const ref = registry.publish(BASE, 'tessera/always', tag);
    refs.push(ref);
    const pin = [{ label: 'creds', op: '=', value: 'none' }];
    await admin.applyApp({ name: 'always', components: [comp('web', ref, { constraints: pin, imagePullPolicy: 'Always' }), comp('side', BASE, { constraints: pin })] });
    await waitFor('both RUNNING', async () => (await instances('always')).filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length === 2, 60_000, 200);
    expect(registry.manifestRequests('tessera/always', tag)).to.have.length(1);
    const side = (await instances('always')).find((i) => i.component === 'side')!.id;
    // The same tag may name a new image now: a rolling restart makes new containers, each pulled first.
    const res = await admin.restartApp('always', 'web');
    expect(Number(res.version)).to.equal(2);
    await waitFor('web of version 2 RUNNING', async () => (await instances('always')).some((i) => i.component === 'web' && i.state === 'INSTANCE_STATE_RUNNING' && Number(i.version) === 2), 60_000, 200);
    expect(registry.manifestRequests('tessera/always', tag)).to.have.length(2);
    expect((await instances('always')).filter((i) => i.component === 'side' && i.desired === 'run').map((i) => i.id)).to.deep.equal([side]);
    expect((await admin.getApp('always')).spec!.components[0].imagePullPolicy).to.equal('Always');
  });

  it('makes a new container, pulled first, when an instance with Always exits: a tag that moved runs its new image', async () => {
    const ref = registry.publish(BASE, 'tessera/moving', tag);
    refs.push(ref);
    const pin = [{ label: 'creds', op: '=', value: 'none' }];
    await admin.applyApp({ name: 'moving', components: [comp('web', ref, { constraints: pin, imagePullPolicy: 'Always', restart: { attempts: 5, windowMs: 60_000, delayMs: 100 } })] });
    const inst = await waitFor('RUNNING', async () => (await instances('moving')).find((i) => i.state === 'INSTANCE_STATE_RUNNING'), 60_000, 200);
    const container = `tessera-${inst.id}`;
    const imageOf = (name: string) => execFileSync('docker', ['inspect', '-f', '{{.Image}}', name]).toString().trim();
    const before = imageOf(container);
    // The tag moves to another image (busybox with a file added), then the process dies.
    const marked = `tessera/busybox-marked:${tag}`;
    execFileSync('docker', ['run', '--name', `mark-${tag}`, '--network', 'none', BASE, 'sh', '-c', 'echo v2 > /marker']);
    execFileSync('docker', ['commit', `mark-${tag}`, marked]);
    execFileSync('docker', ['rm', '-f', `mark-${tag}`]);
    refs.push(marked);
    registry.publish(marked, 'tessera/moving', tag);
    const newImage = execFileSync('docker', ['image', 'inspect', '-f', '{{.Id}}', marked]).toString().trim();
    expect(newImage).to.not.equal(before);
    const pulls = registry.manifestRequests('tessera/moving', tag).length;
    execFileSync('docker', ['kill', container]);
    await waitFor('the same instance RUNNING on the moved tag\'s image', async () => {
      const now = (await instances('moving')).find((i) => i.id === inst.id);
      return now?.state === 'INSTANCE_STATE_RUNNING' && imageOf(container) === newImage;
    }, 60_000, 200);
    expect(registry.manifestRequests('tessera/moving', tag).length).to.be.greaterThan(pulls);
    const restarted = (await pastEvents(admin, ['instance.restarted'])).filter((e) => e.subject === inst.id);
    expect(restarted.map((e) => e.message)).to.satisfy((m: string[]) => m.some((x) => /a new container, its image pulled first \(imagePullPolicy Always\)/.test(x)));
    await admin.deleteApp('moving');
  });

  it('fails an instance whose image is missing with Never, without asking any registry', async () => {
    const ref = `${registry.address}/tessera/never:${tag}`;
    const before = registry.requests.length;
    await admin.applyApp({ name: 'never', components: [comp('web', ref, { imagePullPolicy: 'never' })] });
    await waitFor('FAILED with the reason', async () => (await instances('never')).some((i) => i.state === 'INSTANCE_STATE_FAILED' && i.message.includes(`image ${ref} is not on this host and its imagePullPolicy is Never`)), 30_000, 200);
    expect(registry.requests.length).to.equal(before);
    await admin.deleteApp('never');
  });

  it('counts a failed pull as a failed start, with the registry\'s reason, until the restart policy gives up', async () => {
    const ref = `${registry.address}/tessera/unknown:${tag}`;
    await admin.applyApp({ name: 'unknown', components: [comp('web', ref, { constraints: [{ label: 'creds', op: '=', value: 'none' }] })] });
    const failed = await waitFor('FAILED', async () => (await instances('unknown')).find((i) => i.state === 'INSTANCE_STATE_FAILED'), 60_000, 200);
    expect(failed.message).to.match(new RegExp(`image pull failed for ${ref.replace(/[.]/g, '\\.')}: .*manifest unknown`));
    // Tried by the restart policy (2 attempts), each a request for the manifest.
    expect(registry.manifestRequests('tessera/unknown', tag).length).to.be.at.least(2);
    const ev = await pastEvents(admin, ['instance.pull_failed']);
    expect(ev.some((e) => e.subject === failed.id && /manifest unknown/.test(e.message))).to.equal(true);
    await admin.deleteApp('unknown');
  });

  it('says why a private registry refuses a node without credentials, and pulls with those of --registry-auth', async () => {
    const ref = privateRegistry.publish(BASE, 'tessera/private', tag);
    refs.push(ref);
    removeImage(ref);
    // First the node without credentials (both agents share this machine's Engine: once one has
    // pulled the image, it is there for the other too).
    await admin.applyApp({ name: 'nocreds', components: [comp('web', ref, { constraints: [{ label: 'creds', op: '=', value: 'none' }] })] });
    const refused = await waitFor('a refused pull', async () => (await pastEvents(admin, ['instance.pull_failed'])).find((e) => e.message.includes(ref)), 60_000, 300);
    expect(refused.message).to.match(/no basic auth credentials|unauthorized|authentication required/);
    expect(privateRegistry.requests.some((r) => !r.authorized)).to.equal(true);
    await admin.deleteApp('nocreds');
    await admin.applyApp({ name: 'creds', components: [comp('web', ref, { constraints: [{ label: 'creds', op: '=', value: 'private' }] })] });
    await waitFor('RUNNING on the node with credentials', async () => (await instances('creds')).some((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.nodeId === withAuth), 60_000, 200);
    expect(privateRegistry.manifestRequests('tessera/private', tag).length).to.be.at.least(1);
  });

  it('pulls with a registry credential the component names (imagePullCredential) on a node without any, and never shows its password', async () => {
    const ref = privateRegistry.publish(BASE, 'tessera/named', tag);
    refs.push(ref);
    removeImage(ref);
    const noCreds = [{ label: 'creds', op: '=', value: 'none' }];
    const good = await admin.setRegistryCredential({ name: 'private-ops', server: privateRegistry.address, username: 'ops', password: 's3cret' });
    expect([good.name, good.server, good.username, good.password]).to.deep.equal(['private-ops', privateRegistry.address, 'ops', '']);
    await admin.setRegistryCredential({ name: 'private-wrong', server: privateRegistry.address, username: 'ops', password: 'nope' });
    // Refused at apply, by field path: a credential that does not exist, or is for another registry.
    const refusal = async (name: string, image: string) => {
      const err = await admin.applyApp({ name: 'credapp', components: [comp('web', image, { imagePullCredential: name, constraints: noCreds })] }).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code).to.equal(grpc.status.INVALID_ARGUMENT);
      return err!.details;
    };
    expect(await refusal('missing', ref)).to.equal('components[0].imagePullCredential: no registry credential "missing" (set one with tessera registry-auth set)');
    expect(await refusal('private-ops', `${registry.address}/tessera/named:${tag}`)).to.match(/^components\[0\]\.imagePullCredential: registry credential "private-ops" is for 127\.0\.0\.1:\d+, and the image .* is from 127\.0\.0\.1:\d+$/);
    // A wrong password: the registry's refusal, on the node without credentials of its own.
    await admin.applyApp({ name: 'wrongcred', components: [comp('web', ref, { imagePullCredential: 'private-wrong', constraints: noCreds })] });
    const refused = await waitFor('a refused pull', async () => (await pastEvents(admin, ['instance.pull_failed'])).find((e) => e.message.includes(ref)), 60_000, 300);
    expect(refused.message).to.match(/unauthorized|authentication required|no basic auth credentials/);
    await admin.deleteApp('wrongcred');
    // The right one: the node that has no --registry-auth pulls and runs it.
    await admin.applyApp({ name: 'credapp', components: [comp('web', ref, { imagePullCredential: 'private-ops', constraints: noCreds })] });
    const inst = await waitFor('RUNNING on the node without credentials', async () => (await instances('credapp')).find((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.nodeId === plain), 60_000, 200);
    expect(privateRegistry.manifestRequests('tessera/named', tag).length).to.be.at.least(1);
    // The password shows nowhere: not in the list, the app, the container's labels or its env.
    const listed = (await admin.listRegistryCredentials()).credentials.find((c) => c.name === 'private-ops')!;
    expect([listed.password, listed.usedBy, listed.atRest]).to.deep.equal(['', ['credapp/web'], 'aes-256-gcm, key k1']);
    // Nor in etcd (or a snapshot of it): the leader sealed it, and opened it for the run instruction.
    const raw = createEtcdClient({ endpoints: etcd.endpoints });
    try {
      expect(JSON.parse((await raw.get('/tessera/registry-credentials/private-ops').string())!).sealed.k).to.equal('k1');
      expect(JSON.stringify(await raw.getAll().prefix('/tessera/').strings())).to.not.include('s3cret');
    } finally {
      raw.close();
    }
    expect(JSON.stringify(await admin.getApp('credapp'))).to.not.include('s3cret');
    const inspect = execFileSync('docker', ['inspect', `tessera-${inst.id}`]).toString();
    const labels = JSON.parse(inspect)[0].Config.Labels as Record<string, string>;
    expect(Buffer.from(labels['tessera.spec'], 'base64').toString()).to.include('"pullAuth":null').and.not.include('s3cret');
    expect(inspect).to.not.include('s3cret');
    // Named by a running app: not deleted; unused: deleted.
    const inUse = await admin.deleteRegistryCredential('private-ops').then(() => undefined, (e: grpc.ServiceError) => e);
    expect(inUse?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(inUse?.details).to.match(/named by credapp\/web/);
    const moved = await admin.setRegistryCredential({ name: 'private-ops', server: registry.address, username: 'ops', password: 's3cret' }).then(() => undefined, (e: grpc.ServiceError) => e);
    expect(moved?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(moved?.details).to.match(/named by credapp\/web \(image from 127\.0\.0\.1:\d+\): it cannot move to 127\.0\.0\.1:\d+$/);
    expect((await admin.listRegistryCredentials('private-ops')).credentials[0].server).to.equal(privateRegistry.address);
    await admin.deleteRegistryCredential('private-wrong');
    expect((await admin.listRegistryCredentials()).credentials.map((c) => c.name)).to.deep.equal(['private-ops']);
    // Named only by the stable version (what an auto-revert goes back to) while a version
    // without it rolls out (held for a minute by minHealthyMs): still refused.
    await waitFor('version 1 stable', async () => Number((await admin.getApp('credapp')).stableVersion) === 1, 30_000, 200);
    await admin.applyApp({ name: 'credapp', components: [comp('web', BASE, { constraints: noCreds, update: { minHealthyMs: 60_000 } })] });
    const stable = await admin.deleteRegistryCredential('private-ops').then(() => undefined, (e: grpc.ServiceError) => e);
    expect(stable?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(stable?.details).to.match(/named by credapp\/web \(the current or the stable version\)/);
    await admin.deleteApp('credapp');
  });

  it('hands a restarted agent the registry login of the instances it adopted: a container it makes again pulls with it (Always)', async () => {
    const ref = privateRegistry.publish(BASE, 'tessera/adopted', tag);
    refs.push(ref);
    const noCreds = [{ label: 'creds', op: '=', value: 'none' }];
    await admin.applyApp({ name: 'adoptcred', components: [comp('web', ref, { imagePullCredential: 'private-ops', imagePullPolicy: 'Always', constraints: noCreds })] });
    const inst = await waitFor('RUNNING on the node without credentials', async () => (await instances('adoptcred')).find((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.nodeId === plain), 60_000, 200);
    // The agent restarts: its container is adopted from the label, which keeps no login.
    const agent = fleet.procs.find((p) => p.name === plain)!;
    await agent.kill('SIGKILL');
    agent.start();
    await waitFor('the login handed over again', async () => fs.readFileSync(agent.logFile, 'utf8').includes('registry login taken for an instance already here'), 30_000, 200);
    const pulls = privateRegistry.manifestRequests('tessera/adopted', tag).length;
    // Its container goes (removed by hand): the agent makes it again, pulling first (Always).
    execFileSync('docker', ['rm', '-f', `tessera-${inst.id}`]);
    await waitFor('pulled with the login again', async () => privateRegistry.manifestRequests('tessera/adopted', tag).length > pulls, 30_000, 200);
    await waitFor('the same instance RUNNING again', async () => (await instances('adoptcred')).some((i) => i.id === inst.id && i.state === 'INSTANCE_STATE_RUNNING'), 30_000, 200);
    expect((await pastEvents(admin, ['instance.pull_failed'])).filter((e) => e.subject === inst.id)).to.deep.equal([]);
    await admin.deleteApp('adoptcred');
  });

  it('refuses a bad pull policy or image reference, naming the field, and stores nothing', async () => {
    const bad = async (c: Record<string, unknown>) => {
      try {
        await admin.applyApp({ name: 'badpull', components: [c] });
        expect.fail('applied');
      } catch (err) {
        expect((err as grpc.ServiceError).code).to.equal(grpc.status.INVALID_ARGUMENT);
        return (err as grpc.ServiceError).details;
      }
    };
    expect(await bad(comp('web', BASE, { imagePullPolicy: 'Sometimes' }))).to.match(/components\[0\]\.imagePullPolicy: must be IfNotPresent \(the default\), Always or Never, got "Sometimes"/);
    expect(await bad(comp('web', 'Tessera/Busybox:local'))).to.match(/components\[0\]\.image: must be an image reference/);
    expect((await admin.listApps()).apps.some((a) => a.name === 'badpull')).to.equal(false);
  });
});
