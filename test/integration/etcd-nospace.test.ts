// etcd out of space: its database reaches --quota-backend-bytes, etcd raises its NOSPACE alarm
// and takes only reads and deletes. Tessera refuses every write with RESOURCE_EXHAUSTED and says
// why, changes nothing it stored, keeps leading, serving reads and running what runs, and shows
// the alarm (status, metric, log); once an operator frees space as the README says (compact,
// defrag, alarm disarm, with etcdctl), writes resume by themselves. Real etcd (a 20 MiB quota,
// filled by the test with keys of its own), coordinator and agent processes, a real container.
import { expect } from 'chai';
import { execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';
import { AdminClient } from '../../common/admin-client';
import { createEtcdClient, isTooLarge } from '../../common/etcd';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { healthClient, waitForLeader } from '../helpers/cluster';
import { startEcho } from '../helpers/echo';
import { freePort, waitFor } from '../helpers/ports';
import { containers, removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';
import { scrape } from '../helpers/scrape';

const QUOTA = 20 * 1024 * 1024;

describe('etcd out of space (NOSPACE)', function () {
  this.timeout(120_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let raw: Etcd3;
  let echo: ChildProcess | undefined;
  let address: string;
  let metricsPort: number;
  const app = (version: string) => ({
    name: 'full', components: [{
      name: 'web', image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], env: { VERSION: version },
      resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
    }],
  });
  const refused = async (p: Promise<unknown>): Promise<grpc.ServiceError> => {
    const err = await p.then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err, 'the write was refused').to.not.equal(undefined);
    return err!;
  };
  const metrics = async () => scrape(metricsPort);

  before(async () => {
    etcd = await EtcdCluster.start(1, undefined, ['--quota-backend-bytes', String(QUOTA)]);
    raw = createEtcdClient({ endpoints: etcd.endpoints });
    fleet = new Fleet();
    metricsPort = await freePort();
    // The node's record refreshed each second (at most; its default is a minute): a leader loop
    // that writes all along, whose failures under NOSPACE and recovery after it the tests read.
    const c = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--metrics-listen', `127.0.0.1:${metricsPort}`, '--status-refresh-interval-ms', '1000'] });
    address = c.address;
    await waitForLeader([address]);
    fleet.agent({ coordinators: [address], nodeId: 'full-1', extra: ['--port-range', laneRange('30830-30839')] });
    admin = new AdminClient([address], { timeoutMs: 10_000 });
    await waitFor('node READY', async () => (await admin.listNodes()).nodes.some((n) => n.state === 'NODE_STATE_READY'), 20_000, 100);
    await admin.applyApp(app('1'));
    await waitFor('the instance RUNNING', async () => (await admin.listInstances('full')).instances.some((i) => i.state === 'INSTANCE_STATE_RUNNING'), 60_000, 200);
    const started = await startEcho('roomy');
    echo = started.proc;
    await admin.registerComponent({ instanceId: 'roomy-1', kind: 'roomy', endpoint: `127.0.0.1:${started.port}`, ttlMs: 600_000 });
    await admin.applyPipeline({ name: 'roomy', stages: [{ name: 'echo', kind: 'roomy' }] });
    expect((await admin.submitJob({ pipeline: 'roomy', payload: Buffer.from('before'), wait: true })).state).to.equal('JOB_STATE_SUCCEEDED');
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  after(async () => {
    echo?.kill('SIGKILL');
    admin?.close();
    raw?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers('tessera.app=full');
  });

  it('keeps etcd\'s client usable after requests etcd refuses for their size (not the member\'s fault)', async () => {
    // Four refusals in a row, nothing else on this client: etcd3 counted RESOURCE_EXHAUSTED as
    // the member's fault, and after three its circuit breaker turned every call away (a read
    // right after failed with "circuit breaker is open"; in a coordinator, every write for a while).
    for (let i = 0; i < 4; i++) {
      const err = await raw.put('/not-tessera/too-big').value(Buffer.alloc(3 * 1024 * 1024, 1)).then(() => undefined, (e: Error) => e);
      expect(isTooLarge(err), String(err)).to.equal(true);
    }
    expect(await raw.get('/not-tessera/too-big').string()).to.equal(null);
  });

  it('refuses writes with RESOURCE_EXHAUSTED and the reason, keeps what is stored, and goes on serving reads and running what runs', async () => {
    // Someone else's keys in the same etcd fill it (1 MiB each) until etcd refuses.
    const blob = Buffer.alloc(1024 * 1024, 7);
    let filled = 0;
    for (;;) {
      const err = await raw.put(`/not-tessera/${filled}`).value(blob).then(() => undefined, (e: Error) => e);
      if (err) {
        expect(err.message).to.match(/database space exceeded/);
        break;
      }
      if (++filled > 40) throw new Error('etcd took 40 MiB under a 20 MiB quota');
    }
    const container = containers('tessera.app=full').find((x) => x.state === 'running');
    expect(container, 'the instance\'s container').to.not.equal(undefined);

    const text = /etcd is out of space \(its NOSPACE alarm is raised.*nothing was changed/;
    const apply = await refused(admin.applyApp(app('2')));
    expect(apply.code).to.equal(grpc.status.RESOURCE_EXHAUSTED);
    expect(apply.details).to.match(text);
    const jobs = await Promise.all(Array.from({ length: 6 }, (_, i) => refused(admin.submitJob({ pipeline: 'roomy', payload: Buffer.from(`during ${i}`), wait: true }))));
    for (const job of jobs) {
      expect(job.code).to.equal(grpc.status.RESOURCE_EXHAUSTED);
      expect(job.details).to.match(text);
    }
    // Nothing half-written: the app is at the version it had.
    expect(Number((await admin.getApp('full')).version)).to.equal(1);

    // The alarm shows (status, metric, one error in the log); reads, health and leadership carry on.
    await waitFor('the alarm in the status', async () => (await admin.getClusterStatus()).etcdAlarms.some((a) => /^NOSPACE on member [0-9a-f]+$/.test(a)), 5_000, 100);
    const cli = execFileSync(process.execPath, [path.join(__dirname, '../../coordinator/cli/main.js'), '-c', address, 'status']).toString();
    expect(cli).to.match(/etcd alarms: NOSPACE on member [0-9a-f]+ \(out of space: every write is refused/);
    await waitFor('tessera_etcd_alarm{alarm="NOSPACE"} 1', async () => (await metrics()).get('tessera_etcd_alarm{alarm="NOSPACE"}') === 1, 5_000, 200);
    // Before, etcd3 counted NOSPACE as the member's fault: three refused writes opened its circuit
    // breaker and turned every read away with them ("etcd unreachable: reporting NOT_SERVING").
    await new Promise((r) => setTimeout(r, 3_000));
    const health = healthClient(address);
    try {
      expect(await health.check('')).to.equal('SERVING');
      expect(await health.check('tessera.v1.Leader')).to.equal('SERVING');
    } finally {
      health.close();
    }
    expect((await admin.getClusterStatus()).leader?.id).to.equal('c1');
    expect((await admin.listNodes()).nodes.map((n) => n.state)).to.deep.equal(['NODE_STATE_READY']);
    expect(containers('tessera.app=full').find((x) => x.id === container!.id)?.state).to.equal('running');
    const log = fs.readFileSync(path.join(fleet.dir, 'c1.log'), 'utf8');
    expect(log.match(/etcd raised its NOSPACE alarm/g) ?? []).to.have.length(1);
    expect(log).to.not.match(/circuit breaker is open/);
    // The leader's loops whose writes fail (node status, each second here) warn once each, not
    // at every turn (25 warnings in 13 s before).
    // Six jobs refused: one warning for them (then one each 10 s with the count), not one each.
    expect((log.match(/"level":"warn".*"msg":"job end not recorded; its caller is told so/g) ?? []).length).to.equal(1);
    const warned = log.split('\n').filter((l) => l.includes('"level":"warn"') && /"msg":"leader loop /.test(l)).map((l) => JSON.parse(l) as { loop: string });
    expect(warned.length, 'a warning from the loops that write').to.be.above(0);
    // One a loop and error (a write that times out instead, under load, is another error): at most two.
    const perLoop = new Map<string, number>();
    for (const w of warned) perLoop.set(w.loop, (perLoop.get(w.loop) ?? 0) + 1);
    expect(Math.max(...perLoop.values()), JSON.stringify([...perLoop])).to.be.at.most(2);
  });

  it('writes again by themselves once an operator frees space (compact, defrag, alarm disarm)', async () => {
    const ctl = (...args: string[]) => execFileSync('etcdctl', ['--endpoints', etcd.endpoints.join(','), ...args], { env: { ...process.env, ETCDCTL_API: '3' } }).toString();
    await raw.delete().prefix('/not-tessera/');
    const rev = Number(/"revision":(\d+)/.exec(ctl('endpoint', 'status', '--write-out=json'))![1]);
    ctl('compact', String(rev));
    ctl('defrag');
    ctl('alarm', 'disarm');
    expect(ctl('alarm', 'list').trim()).to.equal('');
    await waitFor('an apply accepted', async () => admin.applyApp(app('2')).then(() => true, () => false), 10_000, 200);
    expect(Number((await admin.getApp('full')).version)).to.equal(2);
    expect((await admin.submitJob({ pipeline: 'roomy', payload: Buffer.from('after'), wait: true })).state).to.equal('JOB_STATE_SUCCEEDED');
    await waitFor('the alarm gone from the status', async () => (await admin.getClusterStatus()).etcdAlarms.length === 0, 5_000, 100);
    await waitFor('the metric cleared', async () => (await metrics()).get('tessera_etcd_alarm{alarm="NOSPACE"}') === undefined, 5_000, 200);
    const log = fs.readFileSync(path.join(fleet.dir, 'c1.log'), 'utf8');
    expect(log).to.match(/etcd alarms cleared: writes resume/);
    await waitFor('the node-status loop working again', async () => /"msg":"leader loop node-status works again"/.test(fs.readFileSync(path.join(fleet.dir, 'c1.log'), 'utf8')), 5_000, 200);
  });
});
