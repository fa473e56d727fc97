// A three-member etcd under the coordinators: losing one member, the cluster keeps serving;
// losing quorum, writes are refused with UNAVAILABLE while agents (and what they run) carry on;
// when the members return, everything recovers on its own.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';

describe('three-member etcd: member loss and quorum loss', function () {
  this.timeout(150_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let addrs: string[];

  before(async () => {
    etcd = await EtcdCluster.start(3);
    fleet = new Fleet();
    const cs = [await fleet.coordinator({ etcd: etcd.endpoints }), await fleet.coordinator({ etcd: etcd.endpoints })];
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
