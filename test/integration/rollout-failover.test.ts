// SIGKILL the leader in the middle of a rollout: the next leader finishes it, and no instance
// is lost or duplicated (Docker is the witness).
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { waitForLeader, statusOf } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { containers, httpGet, removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';

const RUN = randomBytes(3).toString('hex');

const spec = (marker: string) => ({
  name: 'roll',
  components: [{
    name: 'web', image: 'tessera/busybox:local', command: ['sh', '-c'],
    args: [`mkdir -p /tmp/www && echo "${marker}" > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:$PORT_HTTP -h /tmp/www`],
    ports: [{ name: 'http' }], resources: { cpuMillis: 50, memoryMib: 16 }, instances: 4,
    health: { type: 'http', port: 'http', intervalMs: 300, timeoutMs: 200, graceMs: 3000 },
    update: { maxParallel: 1, minHealthyMs: 1500, healthyDeadlineMs: 30_000 }, stopGraceMs: 500,
  }],
});

describe('leader failover during a rollout', function () {
  this.timeout(120_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  const nodes = [`r${RUN}a`, `r${RUN}b`];
  let coords: Awaited<ReturnType<Fleet['coordinator']>>[] = [];
  let addrs: string[] = [];

  after(async () => {
    await fleet?.stop();
    await etcd?.stop();
    for (const n of nodes) removeContainers(`tessera.node=${n}`);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  it('completes the rollout under the next leader with no instance lost or duplicated', async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    coords = [];
    for (let i = 0; i < 3; i++) coords.push(await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: 3_000, failoverGraceMs: 4_000 }));
    addrs = coords.map((c) => c.address);
    await waitForLeader(addrs);
    nodes.forEach((n, i) => fleet.agent({ coordinators: addrs, nodeId: n, extra: ['--port-range', laneRange(`${26000 + i * 1000}-${26999 + i * 1000}`)] }));
    const admin = new AdminClient(addrs, { timeoutMs: 8_000 });
    try {
      await waitFor('nodes READY', async () => (await statusOf(addrs[0]))?.nodesByState.READY === 2, 20_000);
      await admin.applyApp(spec('one'));
      const healthyRun = async () => (await admin.listInstances('roll')).instances.filter((i) => i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING' && i.health === 'healthy');
      await waitFor('version 1 stable', async () => Number((await admin.getApp('roll')).stableVersion) === 1, 30_000, 200);

      await admin.applyApp(spec('two'));
      await waitFor('the rollout under way (a version 2 instance exists)', async () => (await admin.listInstances('roll')).instances.some((i) => Number(i.version) === 2), 15_000, 100);
      const leader = await waitForLeader(addrs);
      await coords.find((c) => c.id === leader)!.kill('SIGKILL');
      const next = await waitForLeader(coords.filter((c) => c.running).map((c) => c.address), 15_000, leader);
      expect(next).to.not.equal(leader);

      await waitFor('version 2 stable under the new leader', async () => {
        const a = await admin.getApp('roll');
        return Number(a.stableVersion) === 2 && a.status === 'running';
      }, 60_000, 200);
      await waitFor('old containers gone', () => containers('tessera.app=roll').filter((c) => nodes.includes(c.node)).length === 4, 20_000, 200);
      const ctrs = containers('tessera.app=roll').filter((c) => nodes.includes(c.node));
      expect(ctrs.map((c) => c.state)).to.deep.equal(['running', 'running', 'running', 'running']);
      expect(new Set(ctrs.map((c) => c.instance)).size, 'no instance runs twice').to.equal(4);
      const inst = await healthyRun();
      expect(inst).to.have.length(4);
      expect(inst.map((i) => i.id).sort()).to.deep.equal(ctrs.map((c) => c.instance).sort());
      for (const i of inst) expect(await httpGet(i.ports.http)).to.equal('two\n');
    } finally {
      admin.close();
    }
  });

  it('keeps a stable app running, not degraded, while its agents re-attach to the next leader', async () => {
    const admin = new AdminClient(addrs, { timeoutMs: 8_000 });
    try {
      expect((await admin.getApp('roll')).status).to.equal('running');
      const leader = await waitForLeader(coords.filter((c) => c.running).map((c) => c.address));
      await coords.find((c) => c.id === leader)!.kill('SIGKILL');
      // Every answer from the kill until the agents have re-attached and their instances have been
      // healthy for minHealthyMs (1.5 s) under the next leader: the app as it was.
      const seen = new Set<string>();
      const t0 = Date.now();
      while (Date.now() - t0 < 9_000) {
        const a = await admin.getApp('roll').catch(() => undefined);
        if (a) seen.add(`${a.status}: ${a.statusReason}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect([...seen]).to.deep.equal(['running: version 2 running']);
      expect((await statusOf(coords.find((c) => c.running)!.address))?.nodesByState.READY).to.equal(2);
    } finally {
      admin.close();
    }
  });
});
