// A slot's volume moving with it (VolumeSpec.migrate, Nomad's ephemeral_disk migrate): a drain
// moves the slot to the other node, the leader copies the volume from the old agent to the new
// one before the new instance starts, and the data is there (a log and a 300 KB file, checked in
// the container). Without a node to copy from (its agent gone), the slot starts empty and an
// event says why. The agents' AgentVolumes refuse a volume in use and a reference that would
// leave their volume root. Real etcd, a coordinator, two agents and busybox containers.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { CHANNEL_OPTIONS, clientCredentials } from '../../common/grpc';
import { tesseraProto } from '../../common/proto';
import type { AgentVolumesClient } from '../../common/generated/tessera/v1/AgentVolumes';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { execOutput, pastEvents, waitForLeader } from '../helpers/cluster';
import { removeContainers } from '../helpers/docker';
import { waitFor } from '../helpers/ports';
import { laneRange } from '../helpers/lane';

describe('volumes that migrate with their slot', function () {
  this.timeout(120_000);
  const run = randomBytes(3).toString('hex');
  const nodes = [`m${run}a`, `m${run}b`];
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let coordinator: string;
  let agents: ReturnType<Fleet['agent']>[];
  const startAgent = (i: number) => fleet.agent({ coordinators: [coordinator], nodeId: nodes[i], extra: ['--port-range', laneRange(`${30660 + i * 20}-${30679 + i * 20}`)] });
  const running = async () => (await admin.listInstances('mover')).instances.filter((i) => i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING');
  const exec = (instanceId: string, command: string[]) => execOutput(admin, instanceId, command);
  const spec = (over: Record<string, unknown> = {}) => ({ name: 'mover', components: [{
    name: 'keeper', image: 'tessera/busybox:local', command: ['sh', '-c'],
    // Its start and (on SIGTERM) its stop in the slot's volume, and once a 300 KB file.
    args: ['[ -f /data/blob ] || head -c 300000 /dev/urandom > /data/blob; echo "start $TESSERA_INSTANCE_ID" >> /data/log; trap \'echo "stop $TESSERA_INSTANCE_ID" >> /data/log; exit 0\' TERM; while true; do sleep 0.1; done'],
    volumes: [{ name: 'data', path: '/data', migrate: true }], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, health: { type: 'none' },
    update: { maxParallel: 1, minHealthyMs: 200, healthyDeadlineMs: 8_000 }, stopGraceMs: 3_000, ...over,
  }] });

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: 3_000, extra: ['--reconcile-interval-ms', '200'] });
    coordinator = c1.address;
    await waitForLeader([c1.address]);
    agents = [startAgent(0), startAgent(1)];
    admin = new AdminClient([c1.address]);
    await waitFor('both nodes READY', async () => (await admin.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 2, 20_000, 200);
  });

  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    for (const n of nodes) removeContainers(`tessera.node=${n}`);
  });

  it('copies the volume to the node a drain moves the slot to, before the new instance starts', async () => {
    await admin.applyApp(spec());
    const [first] = await waitFor('running', async () => { const r = await running(); return r.length ? r : undefined; }, 30_000, 200);
    await waitFor('the blob written', async () => (await exec(first.id, ['ls', '/data'])).includes('blob'), 10_000, 200);
    const sum = await exec(first.id, ['md5sum', '/data/blob']);
    await admin.drainNode({ nodeId: first.nodeId, reason: 'migration test' });
    try {
      const moved = await waitFor('the slot on the other node', async () => (await running()).find((i) => i.nodeId !== first.nodeId), 30_000, 200);
      expect(await exec(moved.id, ['cat', '/data/log'])).to.equal(`start ${first.id}\nstop ${first.id}\nstart ${moved.id}\n`);
      expect(await exec(moved.id, ['md5sum', '/data/blob'])).to.equal(sum);
      const migrating = (await pastEvents(admin, ['instance.volumes_migrating'])).find((e) => e.subject === moved.id);
      expect(migrating?.message).to.equal(`mover/keeper[0] placed on ${moved.nodeId}, not on ${first.nodeId}, which holds the slot's volumes but cannot take it now: copying data from ${first.nodeId} before it starts`);
      const migrated = (await pastEvents(admin, ['instance.volumes_migrated'])).find((e) => e.subject === moved.id);
      expect(migrated?.message).to.match(new RegExp(`^mover/keeper\\[0\\]: data copied from ${first.nodeId} to ${moved.nodeId} \\(\\d+ bytes in \\d+ ms\\): it starts$`));
      expect(Number(migrated?.fields?.bytes)).to.be.above(300_000);
      expect((await pastEvents(admin, ['instance.volumes_left'])).filter((e) => e.subject === moved.id)).to.deep.equal([]);
    } finally {
      await admin.drainNode({ nodeId: first.nodeId, undo: true });
    }
  });

  it('refuses, on the agent, a volume in use and a reference that leaves the volume root', async () => {
    const [inst] = await running();
    const node = (await admin.listNodes()).nodes.find((n) => n.id === inst.nodeId)!;
    const client = new (tesseraProto().AgentVolumes)(node.endpoint, clientCredentials(undefined), CHANNEL_OPTIONS) as unknown as AgentVolumesClient;
    const fetchError = (ref: Record<string, unknown>) => new Promise<grpc.ServiceError | undefined>((resolve) => {
      const s = client.fetchVolume(ref);
      s.on('data', () => {});
      s.on('end', () => resolve(undefined));
      s.on('error', (e: grpc.ServiceError) => resolve(e));
    });
    try {
      const busy = await fetchError({ app: 'mover', component: 'keeper', slot: 0, volume: 'data' });
      expect(busy?.code).to.equal(grpc.status.FAILED_PRECONDITION);
      expect(busy?.details).to.equal('an instance of mover/keeper[0] runs on this node: its volume data is not copied while in use');
      const climbing = await fetchError({ app: '..', component: 'keeper', slot: 0, volume: '../../etc' });
      expect(climbing?.code).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(climbing?.details).to.match(/^ref\.app: .*; ref\.volume: /);
    } finally {
      client.close();
    }
  });

  it('starts the slot empty when the node holding its volume is gone, and says why', async () => {
    const [inst] = await running();
    const i = nodes.indexOf(inst.nodeId);
    await agents[i].kill('SIGKILL');
    removeContainers(`tessera.node=${inst.nodeId}`); // the host is gone, and its containers with it
    try {
      const moved = await waitFor('the slot on the other node', async () => (await running()).find((x) => x.nodeId !== inst.nodeId), 40_000, 200);
      const left = (await pastEvents(admin, ['instance.volumes_left'])).find((e) => e.subject === moved.id);
      expect(left?.message).to.equal(`mover/keeper[0] placed on ${moved.nodeId}, not on ${inst.nodeId}, which holds the slot's volumes but cannot take it now: it starts with empty volumes; ${inst.nodeId} cannot give them (DOWN); the data stays on ${inst.nodeId}`);
      expect(await exec(moved.id, ['cat', '/data/log'])).to.equal(`start ${moved.id}\n`);
    } finally {
      agents[i] = startAgent(i);
    }
  });
});
