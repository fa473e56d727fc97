// A three-member etcd under the coordinators: losing one member, the cluster keeps serving;
// losing quorum, writes are refused with UNAVAILABLE while agents (and what they run) carry on;
// when the members return, everything recovers on its own.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { scrape } from '../helpers/scrape';

describe('three-member etcd: member loss and quorum loss', function () {
  this.timeout(150_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let addrs: string[];
  let metricsPort: number;
  /** tessera_etcd_endpoint_answering of the first coordinator, by endpoint port. */
  const answering = async () => {
    const m = await scrape(metricsPort);
    return Object.fromEntries([...m].filter(([k]) => k.startsWith('tessera_etcd_endpoint_answering')).map(([k, v]) => [k.match(/:(\d+)"/)![1], v]));
  };

  before(async () => {
    etcd = await EtcdCluster.start(3);
    fleet = new Fleet();
    metricsPort = await freePort();
    const cs = [await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--metrics-listen', `127.0.0.1:${metricsPort}`] }), await fleet.coordinator({ etcd: etcd.endpoints })];
    addrs = cs.map((c) => c.address);
    await waitForLeader(addrs, 20_000);
    fleet.agent({ coordinators: addrs, nodeId: 'ha1' });
    admin = new AdminClient(addrs, { timeoutMs: 6_000 });
    await waitFor('node READY', async () => (await admin.getNode('ha1')).state === 'NODE_STATE_READY', 20_000, 200);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });
  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
  });

  const write = () => admin.drainNode({ nodeId: 'ha1', undo: true });

  it('keeps its leader and takes writes while one member hangs (SIGSTOP: neither answers nor refuses)', async () => {
    const st = await statusOf(addrs[0]);
    const leaderId = st?.leader?.id;
    expect(leaderId).to.be.a('string').and.not.equal('');
    // A member other than etcd's own leader (freezing that one makes etcd elect anew: a blip
    // for every client, Go's as well).
    const pick = st!.etcd.find((m) => !m.leader && m.healthy);
    const member = etcd.members.find((m) => pick?.endpoint.endsWith(`:${m.clientPort}`))!.proc!;
    member.kill('SIGSTOP');
    const quick = new AdminClient(addrs, { timeoutMs: 3_000 });
    try {
      // A call already on its way to it waits out its deadline: let those end.
      await new Promise((r) => setTimeout(r, 5_000));
      const outcomes: string[] = [];
      for (const end = Date.now() + 8_000; Date.now() < end;) {
        outcomes.push(await quick.drainNode({ nodeId: 'ha1', undo: true }).then(() => 'ok', (e: grpc.ServiceError) => `${grpc.status[e.code]}: ${e.details}`));
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(outcomes.filter((o) => o !== 'ok'), 'every write within 3 s').to.deep.equal([]);
      expect(outcomes.length).to.be.at.least(10);
      const leaders = await Promise.all(addrs.map(async (a) => (await statusOf(a))?.leader?.id));
      expect(leaders, 'the same leader throughout').to.deep.equal(addrs.map(() => leaderId));
      expect(fleet.procs.filter((p) => p.name.startsWith('c')).map((p) => p.tail(400)).join('\n')).to.not.match(/"from":"leader","to":"follower"/);
      // The metric says which endpoint does not answer (for an alert).
      const frozenPort = String(etcd.members.find((m) => m.proc === member)!.clientPort);
      const seen = await answering();
      expect(Object.keys(seen)).to.have.length(3);
      for (const [port, v] of Object.entries(seen)) expect(v, port).to.equal(port === frozenPort ? 0 : 1);
    } finally {
      member.kill('SIGCONT');
      quick.close();
    }
    await waitFor('every member healthy again', async () => (await statusOf(addrs[0]))?.etcd.every((m) => m.healthy) === true, 15_000, 250);
    await waitFor('every endpoint answering again', async () => Object.values(await answering()).every((v) => v === 1), 10_000, 250);
  });

  it('keeps serving reads and writes with one member down', async () => {
    await etcd.kill(0);
    await waitFor('a write accepted with one member down', async () => !!(await write()), 20_000, 250);
    const st = await waitFor('status with the dead member shown', async () => {
      const s = await statusOf(addrs[1]);
      return s?.etcd.filter((m) => !m.healthy).length === 1 && s.leader?.id ? s : undefined;
    }, 15_000, 250);
    expect(st.etcd.filter((m) => m.healthy)).to.have.length(2);
    expect((await admin.getNode('ha1')).state).to.equal('NODE_STATE_READY');
  });

  it('refuses writes with UNAVAILABLE without quorum, while the agent carries on', async () => {
    await etcd.kill(1);
    const err = await waitFor('writes refused', async () => {
      const e = await write().then(() => undefined, (x: grpc.ServiceError) => x);
      return e && e.code === grpc.status.UNAVAILABLE ? e : undefined;
    }, 30_000, 500);
    expect(err.code).to.equal(grpc.status.UNAVAILABLE);
    await waitFor('no coordinator claims to lead', async () => (await Promise.all(addrs.map(statusOf))).every((s) => !s?.leader?.id), 20_000, 250);
    expect(fleet.procs.every((p) => p.running), 'coordinators and the agent keep running').to.equal(true);
  });

  it('recovers on its own when the members return', async () => {
    etcd.spawn(0);
    etcd.spawn(1);
    await waitForLeader(addrs, 60_000);
    await waitFor('writes accepted again', async () => !!(await write().catch(() => undefined)), 30_000, 500);
    await waitFor('the node READY and attached', async () => {
      const n = await admin.getNode('ha1');
      return n.state === 'NODE_STATE_READY' && n.connectedTo !== '';
    }, 30_000, 500);
  });
});
