// The Admin API as grpcurl sees it (server reflection, JSON-shaped requests), and bad input on
// both services: each gets a clear status, and nothing else is disturbed.
import { expect } from 'chai';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { AdminClient } from '../../common/admin-client';
import { tesseraProto } from '../../common/proto';
import { repoRoot } from '../../common/version';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

const REFLECTION_PROTO = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');

/** What grpcurl does first: a ServerReflectionInfo stream, one request, one answer. */
function reflect(address: string, request: Record<string, unknown>): Promise<any> {
  const def = protoLoader.loadSync(REFLECTION_PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as any;
  const client = new pkg.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (res: unknown) => { resolve(res); call.end(); client.close(); });
    call.on('error', reject);
    call.write(request);
  });
}

/** FileDescriptorSet { repeated FileDescriptorProto file = 1; } from the raw file bytes. */
function descriptorSet(files: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of files) {
    const len: number[] = [];
    let n = f.length;
    while (n > 0x7f) { len.push((n & 0x7f) | 0x80); n >>>= 7; }
    len.push(n);
    parts.push(Buffer.from([0x0a, ...len]), f);
  }
  return Buffer.concat(parts);
}

describe('Admin API through server reflection, and bad input', function () {
  this.timeout(60_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let coord: Awaited<ReturnType<Fleet['coordinator']>>;

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    coord = await fleet.coordinator({ etcd: etcd.endpoints });
    await waitForLeader([coord.address]);
    fleet.agent({ coordinators: [coord.address], nodeId: 'good' });
    await waitFor('the good agent READY', async () => (await statusOf(coord.address))?.nodesByState.READY === 1);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });
  after(async () => {
    await fleet?.stop();
    await etcd?.stop();
  });

  it('lists every service over reflection (grpcurl list)', async () => {
    const res = await reflect(coord.address, { list_services: '' });
    const names = res.list_services_response.service.map((s: { name: string }) => s.name);
    expect(names).to.include.members(['tessera.v1.Admin', 'tessera.v1.AgentGateway', 'grpc.health.v1.Health']);
  });

  it('describes Admin with self-contained descriptors, and a client built only from them works (grpcurl describe / -d)', async () => {
    const res = await reflect(coord.address, { file_containing_symbol: 'tessera.v1.Admin' });
    const files: Buffer[] = res.file_descriptor_response.file_descriptor_proto;
    expect(files.length).to.be.greaterThan(0);
    // Every type the service refers to must resolve from these files alone, or grpcurl says
    // "cannot resolve type".
    const def = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet(files), { longs: String, enums: String, defaults: true });
    expect(Object.keys(def)).to.include.members(['tessera.v1.Admin', 'tessera.v1.ClusterStatus', 'tessera.v1.Node', 'tessera.v1.HostUsage']);
    const pkg = grpc.loadPackageDefinition(def) as any;
    const admin = new pkg.tessera.v1.Admin(coord.address, grpc.credentials.createInsecure());
    const status: any = await new Promise((resolve, reject) => admin.GetClusterStatus({}, (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))));
    expect(status.leader.id).to.equal(coord.id);
    const nodes: any = await new Promise((resolve, reject) => admin.ListNodes({ state: 'NODE_STATE_READY' }, (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))));
    expect(nodes.nodes.map((n: { id: string }) => n.id)).to.deep.equal(['good']);
    const err: grpc.ServiceError = await new Promise((resolve) => admin.GetNode({ nodeId: 'missing' }, (e: grpc.ServiceError) => resolve(e)));
    expect(err.code).to.equal(grpc.status.NOT_FOUND);
    // The README's ApplyApp JSON, as a dry run, and a broken one.
    const spec = { name: 'tiny', components: [{ name: 'sleeper', image: 'tessera/busybox:local', command: ['sleep', '3600'], resources: { cpuMillis: 50, memoryMib: 16 }, instances: 2 }] };
    const dry: any = await new Promise((resolve, reject) => admin.ApplyApp({ spec, dryRun: true }, (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))));
    expect(dry.planned).to.equal(2);
    expect(dry.unplaced).to.deep.equal([]);
    const bad: grpc.ServiceError = await new Promise((resolve) => admin.ApplyApp({ spec: { ...spec, components: [{ ...spec.components[0], resources: { cpuMillis: 50 } }] } }, (e: grpc.ServiceError) => resolve(e)));
    expect(bad.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(bad.details).to.equal('components[0].resources.memoryMib: must be > 0, got 0');
    expect(JSON.parse(String(bad.metadata.get('tessera-field-violations')[0]))).to.deep.equal([{ field: 'components[0].resources.memoryMib', message: 'must be > 0, got 0' }]);
    admin.close();
  });

  it('refuses a filter on a state that does not exist (a number grpcurl may send) with INVALID_ARGUMENT naming the field', async () => {
    const admin = new AdminClient([coord.address]);
    try {
      for (const [call, what] of [[() => admin.listJobs({ state: 99 as never }), 'job'], [() => admin.listNodes({ state: 99 as never }), 'node']] as const) {
        const err = await call().then(() => undefined, (e: grpc.ServiceError) => e);
        expect(err?.code, what).to.equal(grpc.status.INVALID_ARGUMENT);
        expect(err?.details).to.equal(`state: unknown ${what} state 99`);
      }
    } finally {
      admin.close();
    }
  });

  it('the CLI refuses a malformed number or state in an option before calling (a typo is not read as 0)', async () => {
    const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
    for (const [args, message] of [
      [['quota', 'set', 'k', '--cpu', '2000m'], /--cpu takes a whole number of millicores, 0 or more/],
      [['job', 'list', '--state', 'bogus'], /--state is one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED/],
      [['job', 'submit', 'p', '--deadline', '5s'], /--deadline takes a whole number of ms, 1 or more/],
      [['job', 'submit', 'p', '--data', '@/nonexistent/file'], /--data @\/nonexistent\/file: ENOENT/],
    ] as const) {
      const r = await run(process.execPath, [cli, '-c', coord.address, ...args]).then(() => undefined, (e: { code: number; stderr: string }) => e);
      expect(r?.code, args.join(' ')).to.equal(1);
      expect(r?.stderr).to.match(message);
    }
    // Nothing was set.
    const admin = new AdminClient([coord.address]);
    try {
      expect((await admin.listQuotas()).quotas.map((q) => q.kind)).to.not.include('k');
    } finally {
      admin.close();
    }
  });

  it('answers broken protobuf bytes on a unary call with INVALID_ARGUMENT', async () => {
    const Raw = grpc.makeGenericClientConstructor({
      GetNode: { path: '/tessera.v1.Admin/GetNode', requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b },
    }, 'Raw');
    const raw = new Raw(coord.address, grpc.credentials.createInsecure()) as any;
    const err: grpc.ServiceError = await new Promise((resolve) => raw.GetNode(Buffer.from([0xff, 0xff]), (e: grpc.ServiceError) => resolve(e)));
    raw.close();
    expect(err.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(err.details).to.match(/^request: malformed protobuf message/);
  });

  it('closes only the offending agent stream on garbage bytes, a bad hello, or a missing hello', async () => {
    const Raw = grpc.makeGenericClientConstructor({
      Connect: { path: '/tessera.v1.AgentGateway/Connect', requestStream: true, responseStream: true, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b },
    }, 'RawGateway');
    const raw = new Raw(coord.address, grpc.credentials.createInsecure()) as any;
    const garbage: grpc.ServiceError = await new Promise((resolve) => {
      const call = raw.Connect();
      call.on('error', resolve);
      call.on('data', () => {});
      call.write(Buffer.from([0xff, 0xff, 0xff])); // wire type 7 does not exist
    });
    raw.close();
    expect(garbage.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(garbage.details).to.match(/malformed protobuf/);

    const gw = new (tesseraProto().AgentGateway)(coord.address, grpc.credentials.createInsecure());
    const send = (msg: object): Promise<grpc.ServiceError> => new Promise((resolve) => {
      const call = gw.Connect();
      call.on('error', resolve);
      call.on('data', () => {});
      call.write(msg);
    });
    const badId = await send({ hello: { nodeId: '../../etc/passwd', hostname: 'h' } });
    expect(badId.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(badId.details).to.match(/^hello\.nodeId: /);
    const noHello = await send({ report: { seq: 1 } });
    expect(noHello.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(noHello.details).to.match(/first message on the stream must be a hello/);
    gw.close();

    // The well-behaved agent never noticed.
    const admin = new AdminClient([coord.address]);
    const good = await admin.getNode('good');
    admin.close();
    expect(good.state).to.equal('NODE_STATE_READY');
    expect(good.connectedTo).to.equal(coord.id);
    expect((await statusOf(coord.address))!.nodesByState).to.deep.equal({ READY: 1 });
  });

  it('lists apps in pages (limit, next_page_token), in name order; the CLI asks them chunk at a time', async () => {
    const admin = new AdminClient([coord.address], { timeoutMs: 10_000 });
    const names = ['paged-c', 'paged-a', 'paged-b'];
    try {
      for (const name of names) await admin.applyApp({ name, components: [{ name: 'w', image: 'tessera/busybox:local', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 0 }] });
      const whole = (await admin.listApps()).apps.map((a) => a.name);
      expect(whole.filter((n) => n.startsWith('paged-'))).to.deep.equal(['paged-a', 'paged-b', 'paged-c']);
      const first = await admin.listApps({ limit: 2 });
      const rest = await admin.allApps(2).then((all) => all.slice(2));
      expect([first.apps.length, first.nextPageToken !== '']).to.deep.equal([2, true]);
      expect([...first.apps, ...rest].map((a) => a.name)).to.deep.equal(whole);
      expect((await admin.allApps(1)).map((a) => a.name)).to.deep.equal(whole);
      const last = await admin.listApps({ limit: whole.length });
      expect(last.nextPageToken).to.equal('');
      const refusal = (p: Promise<unknown>) => p.then(() => 'answered', (e: grpc.ServiceError) => `${grpc.status[e.code]} ${e.details}`);
      expect(await refusal(admin.listApps({ limit: 2, pageToken: 'x' }))).to.match(/^INVALID_ARGUMENT .*pageToken: is not a token ListApps gave/);
      expect(await refusal(admin.listApps({ limit: 10_001 }))).to.match(/^INVALID_ARGUMENT .*limit: must be 0\.\.10000 \(0: every app\)/);
      const cli = await promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', coord.address, '--json', 'apps', '--chunk-size', '1']);
      expect((JSON.parse(cli.stdout) as { name: string }[]).map((a) => a.name), 'tessera apps --chunk-size 1').to.deep.equal(whole);
    } finally {
      for (const name of names) await admin.deleteApp(name).catch(() => undefined);
      admin.close();
    }
  });

  it('lists pipelines in pages as well; the CLI asks them chunk at a time', async () => {
    const admin = new AdminClient([coord.address], { timeoutMs: 10_000 });
    const names = ['paged-z', 'paged-x', 'paged-y'];
    try {
      for (const name of names) await admin.applyPipeline({ name, stages: [{ name: 'only', kind: 'echo' }] });
      const whole = (await admin.listPipelines()).pipelines.map((p) => p.name);
      expect(whole.filter((n) => n.startsWith('paged-'))).to.deep.equal(['paged-x', 'paged-y', 'paged-z']);
      const first = await admin.listPipelines({ limit: 2 });
      expect([first.pipelines.length, first.nextPageToken !== '']).to.deep.equal([2, true]);
      const second = await admin.listPipelines({ limit: 2, pageToken: first.nextPageToken });
      expect([...first.pipelines, ...second.pipelines].map((p) => p.name).slice(0, 3)).to.deep.equal(whole.slice(0, 3));
      expect((await admin.allPipelines(1)).map((p) => p.name)).to.deep.equal(whole);
      expect((await admin.listPipelines({ limit: whole.length })).nextPageToken).to.equal('');
      const refusal = (p: Promise<unknown>) => p.then(() => 'answered', (e: grpc.ServiceError) => `${grpc.status[e.code]} ${e.details}`);
      expect(await refusal(admin.listPipelines({ limit: 2, pageToken: 'x' }))).to.match(/^INVALID_ARGUMENT .*pageToken: is not a token ListPipelines gave/);
      expect(await refusal(admin.listPipelines({ limit: -1 }))).to.match(/^INVALID_ARGUMENT .*limit: must be 0\.\.10000 \(0: every pipeline\)/);
      const cli = await promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', coord.address, '--json', 'pipeline', 'list', '--chunk-size', '1']);
      expect((JSON.parse(cli.stdout) as { name: string }[]).map((p) => p.name), 'tessera pipeline list --chunk-size 1').to.deep.equal(whole);
    } finally {
      for (const name of names) await admin.deletePipeline(name).catch(() => undefined);
      admin.close();
    }
  });

  it('refuses what is too large for etcd with INVALID_ARGUMENT, and the writes after it go through at once', async () => {
    const admin = new AdminClient([coord.address], { timeoutMs: 10_000 });
    try {
      // An app spec over the limit: refused before any write, naming its largest field.
      const big = { name: 'huge', components: [{ name: 'web', image: 'tessera/busybox:local', env: { SMALL: 'x', BLOB: 'x'.repeat(600_000) }, resources: { cpuMillis: 10, memoryMib: 16 }, instances: 0 }] };
      const spec = await admin.applyApp(big).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(spec?.code).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(spec?.details).to.match(/^components\[0\]\.env\.BLOB: the spec is 600,\d{3} bytes, at most 524,288 .*this field is 600,002 bytes/);
      // A write past validation that etcd refuses for its size (a 2 MB registry password).
      const cred = await admin.setRegistryCredential({ name: 'big', server: 'registry.example', username: 'u', password: 'p'.repeat(2_000_000) }).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(cred?.code).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(cred?.details).to.match(/the write is [\d,]+ bytes, more than etcd takes in one request .*nothing was changed/);
      // Refusals for size do not count against etcd's member (etcd-nospace.test.ts: the breaker).
      const again = await Promise.all(Array.from({ length: 4 }, () => admin.setRegistryCredential({ name: 'big', server: 'registry.example', username: 'u', password: 'p'.repeat(2_000_000) }).then(() => 0, (e: grpc.ServiceError) => e.code)));
      expect(again).to.deep.equal(Array(4).fill(grpc.status.INVALID_ARGUMENT));
      const ok = await admin.setRegistryCredential({ name: 'small', server: 'registry.example', username: 'u', password: 'p' });
      expect(ok.name).to.equal('small');
      expect((await admin.listNodes()).nodes.map((n) => n.id)).to.deep.equal(['good']);
    } finally {
      admin.close();
    }
  });
});
