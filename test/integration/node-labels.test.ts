// Relabeling a node without restarting its agent (as kubectl label node, or Nomad's dynamic node
// metadata): the agent's --config file changed and SIGHUP sent; the leader records the new
// labels with an event, placements from then on see them, and the instance placed before stays.
// Real etcd, coordinator and agent processes, real containers.
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdminClient } from '../../common/admin-client';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { etcdAndFleet } from '../helpers/suite';
import { laneRange } from '../helpers/lane';

describe('relabeling a node on SIGHUP', function () {
  this.timeout(120_000);
  const s = etcdAndFleet({ afterStop: () => removeContainers('tessera.app=zoned') });
  const component = (name: string, zone: string) => ({
    name, image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
    constraints: [{ label: 'zone', op: '=', value: zone }],
  });

  it('records the new labels with an event; new placements see them and placed instances stay', async () => {
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, extra: ['--reconcile-interval-ms', '200'] });
    await waitForLeader([c.address]);
    const admin = new AdminClient([c.address]);
    const file = path.join(s.fleet.dir, 'agent-zoned.yaml');
    const settings = (zone: string) => `labels: { zone: ${zone}, disk: ssd }\nportRange: ${laneRange('30490-30499')}\n`;
    fs.writeFileSync(file, settings('a'));
    const agent = s.fleet.agent({ coordinators: [c.address], nodeId: 'zoned', reportIntervalMs: 500, extra: ['--config', file] });
    try {
      await waitFor('the node READY', async () => (await admin.getNode('zoned').catch(() => undefined))?.state === 'NODE_STATE_READY', 20_000, 100);
      expect((await admin.getNode('zoned')).labels).to.deep.equal({ zone: 'a', disk: 'ssd' });
      // One component for zone a (placed), one for zone b (nowhere to go yet).
      await admin.applyApp({ name: 'zoned', components: [component('in-a', 'a'), component('in-b', 'b')] });
      const running = async (comp: string) => (await admin.listInstances('zoned')).instances.filter((i) => i.component === comp && i.state === 'INSTANCE_STATE_RUNNING');
      await waitFor('in-a running', async () => (await running('in-a')).length === 1, 30_000, 200);
      expect(await running('in-b')).to.have.length(0);

      fs.writeFileSync(file, settings('b'));
      process.kill(agent.pid, 'SIGHUP');
      await waitFor('the new labels recorded', async () => (await admin.getNode('zoned')).labels?.zone === 'b', 10_000, 100);
      expect((await admin.getNode('zoned')).labels).to.deep.equal({ zone: 'b', disk: 'ssd' });
      const events = (await pastEvents(admin, ['node.labels_changed'])).filter((e) => e.subject === 'zoned');
      expect(events.map((e) => e.message)).to.deep.equal(['labels of node zoned: disk=ssd,zone=a -> disk=ssd,zone=b']);
      // Placements see them: in-b is placed now; in-a, placed under the old labels, stays.
      await waitFor('in-b running', async () => (await running('in-b')).length === 1, 30_000, 200);
      expect(await running('in-a')).to.have.length(1);
      // Reports after it carry the same labels until the next hello: recorded once.
      await new Promise((r) => setTimeout(r, 1_500));
      expect((await pastEvents(admin, ['node.labels_changed'])).filter((e) => e.subject === 'zoned')).to.have.length(1);

      // A restarted agent says hello with the labels of its file: nothing changes, no event.
      await agent.kill('SIGTERM');
      const again = s.fleet.agent({ coordinators: [c.address], nodeId: 'zoned', reportIntervalMs: 500, extra: ['--config', file] });
      await waitFor('the agent attached again', async () => fs.readFileSync(again.logFile, 'utf8').includes('attached to leader'), 20_000, 100);
      await new Promise((r) => setTimeout(r, 1_000)); // its hello and a report recorded
      expect((await admin.getNode('zoned')).labels).to.deep.equal({ zone: 'b', disk: 'ssd' });
      expect((await pastEvents(admin, ['node.labels_changed'])).filter((e) => e.subject === 'zoned')).to.have.length(1);
      await again.kill('SIGTERM');
    } finally {
      admin.close();
    }
  });
});
