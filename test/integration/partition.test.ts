// A partition between an agent and the leader alone: the agent reaches a follower, the follower
// reaches the leader. The follower relays the agent's stream to the leader (as Nomad's servers
// forward client RPCs), so the node stays READY and its instructions still arrive; before, the
// follower sent the agent back to a leader it could not reach until the node went DOWN and its
// instances were replaced elsewhere. Real etcd, two coordinators and an agent as processes, the
// agent's gRPC going through an HTTP CONNECT proxy that drops its traffic to the leader alone.
import * as grpc from '@grpc/grpc-js';
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { AdminClient } from '../../common/admin-client';
import { loadTls } from '../../common/tls';
import { repoRoot } from '../../common/version';
import { execOutput, pastEvents } from '../helpers/cluster';
import { ConnectProxy } from '../helpers/connect-proxy';
import { removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';
import { waitFor } from '../helpers/ports';
import { etcdAndFleet } from '../helpers/suite';

const run = promisify(execFile);

describe('an agent cut off from the leader alone', function () {
  this.timeout(90_000);
  const s = etcdAndFleet();
  const nodePrefix = `cut${randomBytes(3).toString('hex')}`;
  const nodes: string[] = [];
  let proxy = new ConnectProxy();
  beforeEach(() => {
    proxy = new ConnectProxy();
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(s.fleet.dump());
  });

  after(() => {
    for (const n of nodes) removeContainers(`tessera.node=${n}`);
  });

  const certs = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-partition-'));
  after(() => fs.rmSync(certs, { recursive: true, force: true }));

  /** Two coordinators and an agent whose link to the leader (p1) is cut; with mTLS when tls. */
  async function cutOff(tls: boolean): Promise<void> {
    const node = `${nodePrefix}${tls ? 't' : 'p'}`;
    nodes.push(node);
    const prefix = tls ? '/tessera-partition-tls/' : '/tessera-partition/';
    if (tls) execFileSync('bash', [path.join(repoRoot(), 'scripts/make-certs.sh'), certs, '--nodes', node]);
    const f = (n: string) => path.join(certs, n);
    // Production's heartbeat timeout (10 s): the agent gives up its stalled stream after ~4 s of
    // keepalive, then attaches through the follower.
    const opts = { etcd: s.etcd.endpoints, heartbeatTimeoutMs: 10_000, extra: ['--etcd-prefix', prefix], ...(tls ? { certs } : {}) };
    // The leader's own calls (to etcd, the follower, the agent) go through a proxy of their own,
    // which drops its calls to the agent as well, plain: a partition both ways.
    const leaderProxy = new ConnectProxy();
    const leaderProxyPort = tls ? 0 : await leaderProxy.start();
    const c1 = await s.fleet.coordinator({ ...opts, id: tls ? 't1' : 'p1', ...(tls ? {} : { env: { ...process.env, grpc_proxy: `http://127.0.0.1:${leaderProxyPort}`, no_grpc_proxy: '' } }) });
    const admin = new AdminClient([c1.address], tls ? { tls: loadTls({ tlsCa: f('ca.pem'), tlsCert: f('admin.pem'), tlsKey: f('admin-key.pem') }) } : {});
    await waitFor('p1 leads', async () => (await admin.getClusterStatus().catch(() => undefined))?.leader?.id === c1.id, 20_000, 200);
    const c2 = await s.fleet.coordinator({ ...opts, id: tls ? 't2' : 'p2' });
    await waitFor('p1 leads, p2 follows', async () => {
      const st = await admin.getClusterStatus().catch(() => undefined);
      return st?.leader?.id === c1.id && st.coordinators.length === 2;
    }, 20_000, 200);
    const proxyPort = await proxy.start();
    const agent = s.fleet.agent({
      coordinators: [c1.address, c2.address], nodeId: node, extra: ['--port-range', laneRange(tls ? '30890-30899' : '30880-30889')],
      env: { ...process.env, grpc_proxy: `http://127.0.0.1:${proxyPort}`, no_grpc_proxy: '' },
      ...(tls ? { tls: [f('ca.pem'), f(`agent-${node}.pem`), f(`agent-${node}-key.pem`)] as [string, string, string] } : {}),
    });
    const leaderPort = Number(c1.address.split(':')[1]);
    try {
      await waitFor('the node READY', async () => (await admin.listNodes()).nodes.some((n) => n.id === node && n.state === 'NODE_STATE_READY'), 20_000, 200);
      const cutAt = Date.now();
      proxy.partition(leaderPort);
      await waitFor(`the agent attached through ${c2.id}`, () => /attached to leader/.test(fs.readFileSync(agent.logFile, 'utf8').split('\n').filter((l) => l.includes(c2.address)).join('\n')), 20_000, 200);
      expect(fs.readFileSync(c1.logFile, 'utf8')).to.contain(`agent attached through ${c2.id}: it cannot reach this leader itself`);
      // Operators see it: the node's record, and `tessera nodes` (its column and a warning).
      await waitFor('the node shown relayed', async () => (await admin.getNode(node)).relayedBy === c2.id, 10_000, 200);
      if (!tls) {
        const shown = (await run(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', c1.address, 'nodes'])).stdout;
        expect(shown, shown).to.match(new RegExp(`^${node} .* ${c1.id} via ${c2.id} `, 'm'));
        expect(shown).to.contain(`warning: node ${node} reaches the leader only through coordinator ${c2.id} (its network to ${c1.id} is cut?)`);
      }
      // An instruction goes down the relayed stream and the instance's state comes back up it.
      await admin.applyApp({ name: 'cutoff', components: [{ name: 'w', image: 'tessera/busybox:local', command: ['sh', '-c', 'echo up; exec sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100 }] });
      const inst = await waitFor('the instance RUNNING on the cut-off node', async () => (await admin.listInstances('cutoff')).instances.find((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.nodeId === node), 30_000, 200);
      {
        // The leader cannot reach the agent either (plain: its proxy drops that too): a command
        // and the logs go through the follower the agent is attached through (before, they waited
        // for the direct link until their timeout). With mTLS the follower takes that from the
        // leader's coordinator certificate.
        if (!tls) leaderProxy.partition(Number((await admin.getNode(node)).endpoint.split(':')[1]));
        const t0 = Date.now();
        expect(await execOutput(admin, inst.id, ['echo', 'through', 'the', 'follower'])).to.equal('through the follower\n');
        const logs = await new Promise<string>((resolve, reject) => {
          let out = '';
          const st = admin.instanceLogs({ instanceId: inst.id });
          st.on('data', (c: { data: Buffer }) => (out += c.data.toString()));
          st.on('end', () => resolve(out));
          st.on('error', reject);
        });
        expect(logs).to.equal('up\n');
        expect(Date.now() - t0).to.be.below(5_000);
      }
      if (!tls) {
        // A component there is left out of job routing while its node is cut off (the leader's
        // steps to it would stall until their timeout): a job finds no path at once and says why.
        await admin.applyApp({ name: 'cutjobs', components: [{
          name: 'splitter', image: 'tessera/components:local', command: ['node', '/app/splitter.js'], ports: [{ name: 'grpc' }], instances: 1,
          health: { type: 'tcp', port: 'grpc', intervalMs: 300, timeoutMs: 250, graceMs: 5000 }, resources: { cpuMillis: 50, memoryMib: 64 }, stopGraceMs: 500,
        }] });
        await admin.applyPipeline({ name: 'cutjobs', defaultTimeoutMs: 10_000, stages: [{ name: 'split', kind: 'splitter', operation: 'split' }] });
        await waitFor('the splitter registered, unreachable', async () => (await admin.listComponents('splitter')).instances.some((i) => i.state === 'unreachable'), 60_000, 200);
        const t1 = Date.now();
        const refused = await admin.submitJob({ pipeline: 'cutjobs', payload: Buffer.from('a b'), wait: true }).then(() => undefined, (e: grpc.ServiceError) => e);
        expect(refused?.code).to.equal(grpc.status.UNAVAILABLE);
        expect(refused?.details).to.match(/none of 1 instance\(s\) of splitter can take work \(0 unhealthy, 0 saturated, 0 excluded, 1 on nodes cut off from the leader/);
        expect(Date.now() - t1).to.be.below(3_000);
      }
      // Past the heartbeat timeout since the cut (and, plain, past the agent's first try of the
      // leader itself, which must fail while the link is cut): still READY, relayed, never DOWN,
      // nothing replaced.
      await new Promise((r) => setTimeout(r, Math.max(0, cutAt + (tls ? 12_000 : 16_000) - Date.now())));
      expect((await admin.getNode(node)).state).to.equal('NODE_STATE_READY');
      expect((await admin.getNode(node)).relayedBy).to.equal(c2.id);
      expect((await pastEvents(admin, ['node.down'])).filter((e) => e.subject === node)).to.deep.equal([]);
      // And the event history says so, once.
      expect((await pastEvents(admin, ['node.relayed'])).filter((e) => e.subject === node).map((e) => e.message))
        .to.deep.equal([`node ${node} reaches the leader only through coordinator ${c2.id} (its network to ${c1.id} is cut?)`]);
      const now = (await admin.listInstances('cutoff')).instances.filter((i) => i.desired === 'run');
      expect(now.map((i) => i.id)).to.deep.equal([inst.id]);
      if (!tls) {
        // The link back: the agent tries the leader every 10 s and leaves the relay once it answers.
        proxy.heal(leaderPort);
        leaderProxy.heal(Number((await admin.getNode(node)).endpoint.split(':')[1]));
        await waitFor('the agent attached to p1 itself', async () => /leaving the relay: attaching to the leader itself/.test(fs.readFileSync(agent.logFile, 'utf8')) && (await admin.getNode(node)).relayedBy === '', 25_000, 200);
        expect((await admin.getNode(node)).state).to.equal('NODE_STATE_READY');
        // Its component is routed to again.
        await waitFor('the splitter routable', async () => (await admin.listComponents('splitter')).instances.some((i) => i.state === 'routable'), 10_000, 200);
        const job = await admin.submitJob({ pipeline: 'cutjobs', payload: Buffer.from('a b a'), wait: true });
        expect(job.state, job.reason).to.equal('JOB_STATE_SUCCEEDED');
        await admin.deleteApp('cutjobs');
        expect((await pastEvents(admin, ['node.relayed_over'])).filter((e) => e.subject === node).map((e) => e.fields.relayedBy)).to.deep.equal([c2.id]);
      }
      await admin.deleteApp('cutoff');
      await waitFor('its container gone', async () => (await admin.listInstances('cutoff').catch(() => ({ instances: [] }))).instances.length === 0, 20_000, 200).catch(() => undefined);
    } finally {
      proxy.heal(leaderPort);
      await proxy.stop();
      if (!tls) await leaderProxy.stop();
      admin.close();
      await agent.kill('SIGTERM');
      await c1.kill('SIGTERM');
      await c2.kill('SIGTERM');
    }
  }

  it('stays READY through a follower that relays its stream, and its instructions still arrive', () => cutOff(false));

  it('the same with mTLS: the leader takes the relayed hello from the follower\'s coordinator certificate', () => cutOff(true));
});
