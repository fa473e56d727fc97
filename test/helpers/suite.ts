// The set-up most integration suites share: a real etcd (one member unless told) and a Fleet of
// coordinator and agent processes, started before the suite's tests and stopped after them
// (processes first, then etcd).
import { randomBytes } from 'node:crypto';
import { AdminClient } from '../../common/admin-client';
import { waitForLeader } from './cluster';
import { removeContainers } from './docker';
import { EtcdCluster } from './etcd';
import { waitFor } from './ports';
import { Fleet, type CoordinatorOptions } from './processes';
import { laneRange } from './lane';

export interface SuiteCluster {
  readonly etcd: EtcdCluster;
  readonly fleet: Fleet;
}

/**
 * Call inside a describe(): registers its before() and after(); `cleanup` runs first in after(),
 * `afterStop` last (once the agents are gone: containers removed earlier, an agent starts again).
 */
export function etcdAndFleet(o: { members?: number; cleanup?: () => void | Promise<void>; afterStop?: () => void | Promise<void> } = {}): SuiteCluster {
  const s = {} as { etcd: EtcdCluster; fleet: Fleet };
  before(async () => {
    s.etcd = await EtcdCluster.start(o.members ?? 1);
    s.fleet = new Fleet();
  });
  after(async () => {
    await o.cleanup?.();
    await s.fleet?.stop();
    await s.etcd?.stop();
    await o.afterStop?.();
  });
  return s;
}

export interface OneNodeCluster extends SuiteCluster {
  readonly coordinator: Awaited<ReturnType<Fleet['coordinator']>>;
  readonly admin: AdminClient;
  readonly node: string;
}

/**
 * Call inside a describe(): real etcd, one coordinator (leading) and one agent (READY) on a node
 * named `<prefix><random>` whose instances take ports from `portRange`, and an Admin client.
 * After the suite: the client closed, the processes stopped, etcd stopped, and then the node's
 * containers removed (after the agent, which would otherwise start them again).
 */
export function oneNodeCluster(o: { prefix: string; portRange: string; coordinator?: Omit<CoordinatorOptions, 'etcd'>; agentExtra?: string[] }): OneNodeCluster {
  const s = { node: `${o.prefix}${randomBytes(3).toString('hex')}` } as { etcd: EtcdCluster; fleet: Fleet; coordinator: OneNodeCluster['coordinator']; admin: AdminClient; node: string };
  before(async () => {
    s.etcd = await EtcdCluster.start(1);
    s.fleet = new Fleet();
    s.coordinator = await s.fleet.coordinator({ etcd: s.etcd.endpoints, ...o.coordinator });
    await waitForLeader([s.coordinator.address]);
    s.fleet.agent({ coordinators: [s.coordinator.address], nodeId: s.node, extra: ['--port-range', laneRange(o.portRange), ...(o.agentExtra ?? [])] });
    s.admin = new AdminClient([s.coordinator.address]);
    await waitFor('node READY', async () => (await s.admin.listNodes()).nodes.some((n) => n.id === s.node && n.state === 'NODE_STATE_READY'), 20_000, 200);
  });
  after(async () => {
    s.admin?.close();
    await s.fleet?.stop(!!process.env.KEEP);
    if (process.env.KEEP) console.log('kept', s.fleet.dir);
    await s.etcd?.stop();
    removeContainers(`tessera.node=${s.node}`);
  });
  return s;
}
