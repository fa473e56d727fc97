// A fleet larger than one transaction: 150 simulated nodes (the agent's real connection code, in
// this process, on real gRPC streams) against a real coordinator process and real etcd. Before
// session 21 the leader wrote every node's status, and every node that went DOWN in one tick, in
// one etcd transaction: past 128 operations etcd refused it at every turn, so the status of a
// fleet over ~128 nodes was never written and a rack that lost power stayed READY for good.
import { expect } from 'chai';
import * as fs from 'node:fs';
import { AdminClient } from '../../common/admin-client';
import { createEtcdClient } from '../../common/etcd';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { SimulatedNodes } from '../helpers/sim-nodes';
import { etcdAndFleet } from '../helpers/suite';

const N = 150;

describe('a fleet larger than one etcd transaction', function () {
  this.timeout(90_000);
  const s = etcdAndFleet();
  let sims: SimulatedNodes | undefined;
  let admin: AdminClient | undefined;
  after(async () => {
    await sims?.stop();
    admin?.close();
  });

  it(`writes the status of ${N} nodes, and takes them all DOWN (each with its event) when they go silent at once`, async () => {
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, heartbeatTimeoutMs: 3_000 });
    await waitForLeader([c.address]);
    admin = new AdminClient([c.address]);
    sims = new SimulatedNodes([c.address], N, 'sim-', 500);
    await waitFor(`${N} nodes READY`, async () => (await admin!.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === N, 30_000, 250);

    // Their usage reaches etcd (the status loop writes it every 500 ms here).
    const etcd = createEtcdClient({ endpoints: s.etcd.endpoints, callTimeoutMs: 2_000 });
    try {
      await waitFor('every node\'s reported usage in etcd', async () => {
        const stored = Object.values(await etcd.getAll().prefix('/tessera/nodes/').strings()).map((v) => JSON.parse(v) as { usage?: { memoryTotalMib?: string | number } });
        return stored.length === N && stored.every((r) => Number(r.usage?.memoryTotalMib) === 8192);
      }, 10_000, 250);
    } finally {
      etcd.close();
    }

    await sims.stop();
    sims = undefined;
    await waitFor(`${N} nodes DOWN`, async () => (await admin!.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_DOWN').length === N, 15_000, 250);
    const events: { subject: string }[] = [];
    for await (const e of admin.watchEvents({ kinds: ['node.down'], history: 1_000, follow: false })) events.push(e);
    expect(new Set(events.map((e) => e.subject)).size).to.equal(N);

    const failed = fs.readFileSync(c.logFile, 'utf8').split('\n').filter((l) => /leader loop node-(status|liveness) failed/.test(l));
    expect(failed, failed.join('\n')).to.deep.equal([]);
  });
});
