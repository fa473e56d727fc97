// A fleet larger than one transaction: 150 simulated nodes (the agent's real connection code, in
// this process, on real gRPC streams) against a real coordinator process and real etcd. Before
// session 21 the leader wrote every node's status, and every node that went DOWN in one tick, in
// one etcd transaction: past 128 operations etcd refused it at every turn, so the status of a
// fleet over ~128 nodes was never written and a rack that lost power stayed READY for good.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AdminClient } from '../../common/admin-client';
import { createEtcdClient } from '../../common/etcd';
import { repoRoot } from '../../common/version';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { SimulatedNodes } from '../helpers/sim-nodes';
import { etcdAndFleet } from '../helpers/suite';
import { scrapeText } from '../helpers/scrape';

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

  it(`stores the hellos of ${N} nodes attaching at once in few transactions, writes their status, on change and once a refresh interval rather than at each report (a follower takes the live figures from the leader), and takes them all DOWN (each with its event) when they go silent at once`, async () => {
    const REFRESH_MS = 4_000;
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, heartbeatTimeoutMs: 3_000, extra: ['--status-refresh-interval-ms', String(REFRESH_MS)] });
    await waitForLeader([c.address]);
    const follower = await s.fleet.coordinator({ etcd: s.etcd.endpoints, heartbeatTimeoutMs: 3_000, extra: ['--status-refresh-interval-ms', String(REFRESH_MS)] });
    admin = new AdminClient([c.address]);
    const proposals = async () => Number(/^etcd_server_proposals_committed_total (\S+)$/m.exec(await scrapeText(s.etcd.endpoints[0]))?.[1]);
    const before = await proposals();
    sims = new SimulatedNodes([c.address], N, 'sim-', 500);
    await waitFor(`${N} nodes READY`, async () => (await admin!.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === N, 30_000, 250);
    // The hellos of nodes attaching together are stored together (before session 28, one etcd
    // transaction each, in turn: 150 and more).
    const attachWrites = (await proposals()) - before;
    expect(attachWrites, 'etcd proposals while 150 nodes attached').to.be.below(N / 2);

    // Listed in pages (limit, next_page_token), in id order, as kubectl and nomad list a fleet;
    // the CLI pages by --chunk-size. A page goes on with the state filter of the first.
    const everyId = (await admin!.listNodes()).nodes.map((n) => n.id);
    const paged: string[] = [];
    let pages = 0;
    let readyToken = '';
    for (let pageToken = ''; ;) {
      const page = await admin!.listNodes({ state: 'NODE_STATE_READY', limit: 40, pageToken });
      paged.push(...page.nodes.map((n) => n.id));
      pages++;
      readyToken ||= page.nextPageToken;
      if (!(pageToken = page.nextPageToken)) break;
    }
    expect([pages, everyId.length]).to.deep.equal([Math.ceil(N / 40), N]);
    expect(paged, 'the pages, in order').to.deep.equal(everyId);
    const refused = async (req: Parameters<AdminClient['listNodes']>[0]) => admin!.listNodes(req).then(() => 'answered', (e: { code: number; details: string }) => `${e.code} ${e.details}`);
    expect(await refused({ limit: -1 })).to.match(/^3 .*limit: must be 0\.\.10000/);
    expect(await refused({ limit: 10, pageToken: 'not-a-token' })).to.match(/^3 .*pageToken: is not a token ListNodes gave/);
    expect(await refused({ state: 'NODE_STATE_DOWN', limit: 10, pageToken: readyToken })).to.match(/^3 .*pageToken: was given for state NODE_STATE_READY, not state NODE_STATE_DOWN/);
    const listed = JSON.parse((await promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', c.address, '--json', 'nodes', '--chunk-size', '40'])).stdout) as { id: string }[];
    expect(listed.map((n) => n.id), 'tessera nodes --chunk-size 40').to.deep.equal(everyId);

    // Their usage reaches etcd (the status loop writes it every 500 ms here).
    const etcd = createEtcdClient({ endpoints: s.etcd.endpoints, callTimeoutMs: 2_000 });
    try {
      await waitFor('every node\'s reported usage in etcd', async () => {
        const stored = Object.values(await etcd.getAll().prefix('/tessera/nodes/').strings()).map((v) => JSON.parse(v) as { usage?: { memoryTotalMib?: string | number } });
        return stored.length === N && stored.every((r) => Number(r.usage?.memoryTotalMib) === 8192);
      }, 10_000, 250);

      // Each node reports every 500 ms and the leader's status loop runs every 500 ms, but a
      // node whose attachment and instances stay the same has its record written once a refresh
      // interval: at most twice in one (before session 28, at each report: ~8 times).
      const puts = new Map<string, number>();
      const watcher = await etcd.watch().prefix('/tessera/nodes/').create();
      watcher.on('put', (kv) => puts.set(kv.key.toString(), (puts.get(kv.key.toString()) ?? 0) + 1));
      await sleep(REFRESH_MS);
      await watcher.cancel();
      const most = Math.max(0, ...puts.values());
      expect(most, `writes of one node's record in ${REFRESH_MS} ms`).to.be.at.most(2);
      expect(puts.size, 'records refreshed').to.be.at.least(N / 2);

      // A follower answers node reads with the leader's live figures (each node seen within the
      // last report or two), not the records' (up to a refresh interval old): asked while the
      // stored last-seen of sim-0001 is over 2 s old.
      const viaFollower = new AdminClient([follower.address]);
      try {
        await waitFor('the follower knows the leader', async () => (await viaFollower.getClusterStatus()).leader?.id === c.id, 10_000, 200);
        const storedSeen = async () => Number((JSON.parse((await etcd.get('/tessera/nodes/sim-0001').string()) ?? '{}') as { lastSeenMs?: number }).lastSeenMs ?? 0);
        await waitFor('a record over 2 s old', async () => Date.now() - (await storedSeen()) > 2_000, REFRESH_MS * 2, 50);
        const [one, nodes, stored] = [await viaFollower.getNode('sim-0001'), (await viaFollower.listNodes()).nodes, await storedSeen()];
        expect(Number(one.lastSeenMs), 'GetNode through the follower: newer than the record').to.be.above(stored);
        expect(Date.now() - Number(one.lastSeenMs)).to.be.below(2_000);
        const oldest = Math.max(...nodes.map((n) => Date.now() - Number(n.lastSeenMs)));
        expect([nodes.length, oldest < 2_000], `ListNodes through the follower: the oldest last-seen ${oldest} ms ago`).to.deep.equal([N, true]);
        const firstPage = await viaFollower.listNodes({ limit: 40 });
        expect([firstPage.nodes.length, firstPage.nextPageToken !== '', firstPage.stale], 'a page through the follower').to.deep.equal([40, true, '']);
      } finally {
        viaFollower.close();
      }
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

    // The leader gone (the follower has not taken over yet: its lease lasts 2 s): the follower
    // answers from the node records, and says so.
    const viaFollower = new AdminClient([follower.address]);
    try {
      expect((await viaFollower.listNodes()).stale, 'with the leader').to.equal('');
      expect((await viaFollower.getNode('sim-0001')).stale, 'one node, with the leader').to.equal('');
      await c.kill('SIGKILL');
      const one = await viaFollower.getNode('sim-0001');
      expect(one.id).to.equal('sim-0001');
      expect(one.stale).to.match(new RegExp(`^answered by coordinator ${follower.id} from the node record \\(the leader ${c.id} did not answer within 0.5 s\\)`));
      const res = await viaFollower.listNodes();
      expect(res.nodes.length).to.equal(N);
      const fromRecords = await viaFollower.listNodes({ limit: 100 });
      const rest = await viaFollower.listNodes({ limit: 100, pageToken: fromRecords.nextPageToken });
      expect([fromRecords.nodes.length, rest.nodes.length, rest.nextPageToken, fromRecords.stale !== ''], 'pages from the records').to.deep.equal([100, N - 100, '', true]);
      expect([...fromRecords.nodes, ...rest.nodes].map((n) => n.id)).to.deep.equal(res.nodes.map((n) => n.id));
      expect(res.stale).to.match(new RegExp(`^answered by coordinator ${follower.id} from the node records \\(the leader ${c.id} did not answer within 2 s\\)`));
    } finally {
      viaFollower.close();
    }
  });

  it('keeps the instances of DOWN nodes where they are while more than --disruption-percent of the fleet is DOWN, with an event either way', async () => {
    // A cluster of its own on the same etcd (another key prefix): the nodes above are all DOWN.
    // Reports each second, each node at its own moment: the six go DOWN over a second, in
    // several liveness ticks (every 250 ms), as agents dying together do.
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, heartbeatTimeoutMs: 3_000, reportIntervalMs: 1_000, extra: ['--etcd-prefix', '/disruption/'] });
    await waitForLeader([c.address]);
    // A follower, for `tessera status` asked of it.
    const f = await s.fleet.coordinator({ etcd: s.etcd.endpoints, heartbeatTimeoutMs: 3_000, reportIntervalMs: 1_000, extra: ['--etcd-prefix', '/disruption/'] });
    const a = new AdminClient([c.address]);
    const viaFollower = new AdminClient([f.address]);
    const lost = new SimulatedNodes([c.address], 6, 'lost-', 1_000);
    const kept = new SimulatedNodes([c.address], 4, 'kept-', 1_000);
    try {
      await waitFor('10 nodes READY', async () => (await a.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 10, 20_000, 250);
      await a.applyApp({ name: 'spread', components: [{ name: 'w', image: 'tessera/busybox:local', command: ['sleep', '3600'], resources: { cpuMillis: 100, memoryMib: 16 }, instances: 10 }] });
      await waitFor('10 instances placed', async () => (await a.listInstances('spread')).instances.length === 10, 10_000, 250);
      const before = (await a.listInstances('spread')).instances.map((i) => `${i.id}@${i.nodeId}`).sort();
      expect(before.filter((x) => x.includes('@lost-')).length).to.be.above(0);

      // 6 of 10 nodes cut off at once: 60%, over the default 55.
      await lost.cut();
      await waitFor('6 nodes DOWN', async () => (await a.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_DOWN').length === 6, 15_000, 250);
      await waitFor('the disruption in the status', async () => /^6 of 10 nodes are DOWN or silent \(over 55%\)/.test((await a.getClusterStatus()).fleetDisruption), 5_000, 100);
      // The CLI says so too (`tessera status`, and under `tessera nodes`).
      // (Run without blocking this process, where the simulated nodes report: a CLI run waited for
      // synchronously held their reports back for over a second, and a live node read as silent.)
      const cli = async (...args: string[]) => (await promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', c.address, ...args])).stdout;
      expect(await cli('status')).to.match(/^fleet: +DISRUPTED: 6 of 10 nodes are DOWN or silent/m);
      expect(await cli('nodes')).to.match(/^warning: fleet disrupted: 6 of 10 nodes are DOWN or silent/m);
      await sleep(3_000); // six reconcile rounds
      expect((await a.listInstances('spread')).instances.map((i) => `${i.id}@${i.nodeId}`).sort()).to.deep.equal(before);

      // The partition heals: they attach again with what they ran, the disruption is over, and nothing was moved.
      lost.heal(1_500);
      // While the partition heals, the leader holds the disruption for the nodes still DOWN (under
      // the threshold now), which node records alone do not show: asked of the follower, the
      // status says so too (the follower takes the fleet's part from the leader).
      const settling = await waitFor('the settling disruption through the follower', async () => {
        const st = await viaFollower.getClusterStatus();
        return /still DOWN or silent after a disruption/.test(st.fleetDisruption) ? st : undefined;
      }, 10_000, 100);
      expect(settling.answeredBy).to.equal(f.id);
      await waitFor('10 nodes READY again', async () => (await a.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 10, 15_000, 250);
      // (Held for the failover grace, 4 s here, after the last of them is back: a partition heals node by node.)
      await waitFor('no disruption', async () => (await a.getClusterStatus()).fleetDisruption === '', 10_000, 100);
      expect((await a.listInstances('spread')).instances.map((i) => `${i.id}@${i.nodeId}`).sort()).to.deep.equal(before);
      const kinds = async () => {
        const events: string[] = [];
        for await (const e of a.watchEvents({ kinds: ['fleet.', 'instance.lost'], history: 100, follow: false })) events.push(e.kind);
        return events;
      };
      await waitFor('the disruption over', async () => (await kinds()).includes('fleet.disruption_over'), 2_000, 100);
      expect(await kinds()).to.deep.equal(['fleet.disrupted', 'fleet.disruption_over']);
    } finally {
      await lost.stop();
      await kept.stop();
      a.close();
      viaFollower.close();
    }
  });
  it('judges each zone (--zone-label): a zone mostly cut off keeps its instances; a zone lost whole while another answers has them replaced there', async () => {
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, heartbeatTimeoutMs: 3_000, reportIntervalMs: 1_000, extra: ['--etcd-prefix', '/zones/'] });
    await waitForLeader([c.address]);
    const a = new AdminClient([c.address]);
    const aLost = new SimulatedNodes([c.address], 3, 'a-lost-', 1_000, { zone: 'a' });
    const aKept = new SimulatedNodes([c.address], 2, 'a-kept-', 1_000, { zone: 'a' });
    const b = new SimulatedNodes([c.address], 5, 'b-', 1_000, { zone: 'b' });
    const placed = async () => (await a.listInstances('zoned')).instances.map((i) => `${i.id}@${i.nodeId}`).sort();
    try {
      await waitFor('10 nodes READY', async () => (await a.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 10, 20_000, 250);
      await a.applyApp({ name: 'zoned', components: [{ name: 'w', image: 'tessera/busybox:local', command: ['sleep', '3600'], resources: { cpuMillis: 100, memoryMib: 16 }, instances: 10 }] });
      await waitFor('10 instances placed', async () => (await placed()).length === 10, 10_000, 250);
      const before = await placed();
      expect(before.filter((x) => x.includes('@a-lost-')).length).to.be.above(0);

      // 3 of zone a's 5 nodes cut off: 60% of the zone, 30% of the fleet (under 55% as a whole).
      await aLost.cut();
      await waitFor('3 nodes DOWN', async () => (await a.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_DOWN').length === 3, 15_000, 250);
      await waitFor('zone a disrupted in the status', async () => /^3 of 5 nodes in zone a are DOWN or silent \(over 55%\)/.test((await a.getClusterStatus()).fleetDisruption), 5_000, 100);
      await sleep(3_000); // six reconcile rounds
      expect(await placed()).to.deep.equal(before);

      // The rest of zone a lost too while zone b answers: a zone outage. Once zone a has settled
      // (the failover grace, 4 s here), its instances are replaced in zone b.
      await aKept.cut();
      const wanted = async () => (await a.listInstances('zoned')).instances.filter((i) => i.desired === 'run');
      await waitFor('every instance in zone b', async () => {
        const now = await wanted();
        return now.length === 10 && now.every((i) => i.nodeId.startsWith('b-'));
      }, 25_000, 250);
      expect((await a.getClusterStatus()).fleetDisruption).to.equal('');
      // (The registry's tick writes the event; a reconcile round may replace the instances first.)
      const said = async () => {
        const events: string[] = [];
        for await (const e of a.watchEvents({ kinds: ['fleet.'], history: 100, follow: false })) events.push(`${e.kind}: ${e.message.split(':')[0]}`);
        return events;
      };
      await waitFor('the disruption over', async () => (await said()).length === 2, 5_000, 100);
      expect(await said()).to.deep.equal(['fleet.disrupted: zone a disrupted', 'fleet.disruption_over: zone a disruption over']);
    } finally {
      await aLost.stop();
      await aKept.stop();
      await b.stop();
      a.close();
    }
  });
  it('reads its state back from etcd after a write in parts fails half-way, so no instance is placed twice', async () => {
    // 150 instances placed in one round: more than one transaction (100 operations). The
    // failpoint fails the write once between its parts, as an etcd outage at that moment would.
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, extra: ['--etcd-prefix', '/parts/'], env: { TESSERA_FAILPOINTS: 'commitInPartsBetween=error(1)' } });
    await waitForLeader([c.address]);
    const a = new AdminClient([c.address]);
    const nodes = new SimulatedNodes([c.address], 10, 'parts-', 1_000);
    const etcd = createEtcdClient({ endpoints: s.etcd.endpoints, callTimeoutMs: 2_000 });
    try {
      await waitFor('10 nodes READY', async () => (await a.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 10, 20_000, 250);
      await a.applyApp({ name: 'many', components: [{ name: 'w', image: 'tessera/busybox:local', command: ['sleep', '3600'], resources: { cpuMillis: 10, memoryMib: 8 }, instances: 150 }] });
      await waitFor('the failed part in the log', async () => fs.readFileSync(c.logFile, 'utf8').includes('failpoint commitInPartsBetween: injected error'), 10_000, 100);
      await waitFor('150 instances running', async () => (await a.listInstances('many')).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length === 150, 20_000, 250);
      // etcd holds those 150 and no more (without reading back: the first part's ~100 too, placed again beside them).
      expect(await etcd.getAll().prefix('/parts/instances/').count()).to.equal(150);
      expect(fs.readFileSync(c.logFile, 'utf8')).to.include('reading the apps and instances back from etcd');
    } finally {
      etcd.close();
      await nodes.stop();
      a.close();
    }
  });
});
