// etcd going away entirely, and the embedded single-member etcd of a one-host trial.
import { expect } from 'chai';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { AdminClient } from '../../common/admin-client';
import * as grpc from '@grpc/grpc-js';

describe('etcd outage and the embedded etcd', function () {
  this.timeout(90_000);
  let fleet: Fleet;
  let etcd: EtcdCluster | undefined;

  beforeEach(() => { fleet = new Fleet(); });
  afterEach(async function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
    await fleet.stop();
    await etcd?.stop();
    etcd = undefined;
  });

  it('stops leader work while etcd is down, keeps agents alive, and recovers by itself when etcd returns', async () => {
    etcd = await EtcdCluster.start(1);
    const a = await fleet.coordinator({ etcd: etcd.endpoints });
    const b = await fleet.coordinator({ etcd: etcd.endpoints });
    const leader = await waitForLeader([a.address, b.address]);
    const agent = fleet.agent({ coordinators: [a.address, b.address] });
    await waitFor('node READY', async () => (await statusOf(a.address))?.nodesByState.READY === 1);

    await etcd.kill(0);
    await waitFor('no coordinator leads while etcd is down', async () => {
      const all = await Promise.all([a, b].map((c) => statusOf(c.address)));
      return all.every((s) => s && !s.leader?.id);
    }, 15_000);
    // Writes are refused with UNAVAILABLE rather than acted on by a stale leader.
    const admin = new AdminClient([a.address], { timeoutMs: 8_000 });
    const err = await admin.drainNode({ nodeId: agent.nodeId }).catch((e: grpc.ServiceError) => e);
    expect((err as grpc.ServiceError).code).to.equal(grpc.status.UNAVAILABLE);
    admin.close();
    expect(agent.running && a.running && b.running).to.equal(true);

    etcd.spawn(0);
    const again = await waitForLeader([a.address, b.address], 30_000);
    expect([a.id, b.id]).to.include(again);
    await waitFor('the node READY and attached again', async () => {
      const c = new AdminClient([a.address]);
      try {
        const n = await c.getNode(agent.nodeId);
        return n.state === 'NODE_STATE_READY' && n.connectedTo === again;
      } finally {
        c.close();
      }
    }, 30_000);
    // Each coordinator's campaign failed at every backoff step while etcd was away: one warning
    // each (then one each 30 s), and a line when it campaigns again; before, a warning per attempt.
    for (const c of [a, b]) {
      const log = fs.readFileSync(c.logFile, 'utf8');
      expect((log.match(/"level":"warn".*"msg":"campaign failed; retrying/g) ?? []).length, c.id).to.be.at.most(1);
      // (Its next try comes after its backoff, possibly after the other took the lead.)
      if (/"msg":"campaign failed; retrying/.test(log)) await waitFor(`${c.id} campaigning again`, async () => /"msg":"campaigning again"/.test(fs.readFileSync(c.logFile, 'utf8')), 15_000, 200);
    }
    void leader;
  });

  it('starts an embedded single-member etcd when no endpoints are configured, and stops it on SIGTERM', async () => {
    const clientPort = await freePort();
    const peerPort = await freePort();
    const c = await fleet.coordinator({ etcd: [], extra: ['--embedded-etcd-client-port', String(clientPort), '--embedded-etcd-peer-port', String(peerPort)] });
    await waitForLeader([c.address], 30_000);
    const st = await statusOf(c.address);
    expect(st!.etcd.map((m) => m.endpoint)).to.deep.equal([`127.0.0.1:${clientPort}`]);
    expect(st!.etcd[0].healthy).to.equal(true);
    const children = () => execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(c.pid)]).toString();
    expect(children()).to.contain(`--listen-client-urls http://127.0.0.1:${clientPort}`);
    await c.kill('SIGTERM');
    const alive = execFileSync('ps', ['-eo', 'args=']).toString().split('\n').filter((l) => l.includes(`127.0.0.1:${clientPort}`) && l.startsWith('etcd'));
    expect(alive, 'embedded etcd stopped with its coordinator').to.deep.equal([]);
  });
});
