// A new leader counts an agent as attached only once its hello is stored: before, a dispatch
// while the hello was being written saw the node connected with nothing observed, and sent the RUN
// of every instance the agent runs (harmless for most, but a new leader that could not open an
// instance's secret then said the running instance was not started). The hello's write is held
// 1.5 s (TESSERA_FAILPOINTS=nodeHelloStore=sleep(1500)) so that dispatches (every 200 ms) fall in
// it. Real etcd, two coordinators and an agent as processes, a container.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { AdminClient } from '../../common/admin-client';
import { waitForLeader } from '../helpers/cluster';
import { removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';
import { waitFor } from '../helpers/ports';
import { etcdAndFleet } from '../helpers/suite';

describe('an agent attaching to a new leader', function () {
  this.timeout(90_000);
  const s = etcdAndFleet();
  const node = `hr${randomBytes(3).toString('hex')}`;

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(s.fleet.dump());
  });
  after(() => removeContainers(`tessera.node=${node}`));

  it('gets no RUN for an instance it runs while its hello is being stored', async () => {
    const extra = ['--reconcile-interval-ms', '200'];
    const c1 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'h1', extra });
    await waitForLeader([c1.address]);
    const c2 = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'h2', extra, env: { ...process.env, TESSERA_FAILPOINTS: 'nodeHelloStore=sleep(1500)' } });
    await waitForLeader([c1.address, c2.address]);
    const admin = new AdminClient([c1.address, c2.address]);
    try {
      s.fleet.agent({ coordinators: [c1.address, c2.address], nodeId: node, extra: ['--port-range', laneRange('30900-30909')] });
      await waitFor('the node READY', async () => (await admin.listNodes()).nodes.some((n) => n.id === node && n.state === 'NODE_STATE_READY'), 20_000, 200);
      await admin.applyApp({ name: 'hello-race', components: [{ name: 'w', image: 'tessera/busybox:local', command: ['sleep', '3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100 }] });
      const inst = await waitFor('the instance RUNNING', async () => (await admin.listInstances('hello-race')).instances.find((i) => i.state === 'INSTANCE_STATE_RUNNING'), 30_000, 200);
      await c1.kill('SIGKILL');
      await waitFor('h2 leads with the agent attached', () => /"msg":"agent attached"/.test(fs.readFileSync(c2.logFile, 'utf8')), 30_000, 200);
      // Dispatches past the hello too.
      await new Promise((r) => setTimeout(r, 1_000));
      const runs = fs.readFileSync(c2.logFile, 'utf8').split('\n').filter((l) => l.includes(`"instruction":"run-${inst.id}"`));
      expect(runs, 'h2 sent the RUN of an instance the agent runs').to.deep.equal([]);
      expect((await admin.listInstances('hello-race')).instances.map((i) => i.id)).to.deep.equal([inst.id]);
    } finally {
      admin.close();
    }
  });
});
