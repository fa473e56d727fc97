// The set-up most integration suites share: a real etcd (one member unless told) and a Fleet of
// coordinator and agent processes, started before the suite's tests and stopped after them
// (processes first, then etcd).
import { EtcdCluster } from './etcd';
import { Fleet } from './processes';

export interface SuiteCluster {
  readonly etcd: EtcdCluster;
  readonly fleet: Fleet;
}

/** Call inside a describe(): registers its before() and after(); `cleanup` runs first in after(). */
export function etcdAndFleet(o: { members?: number; cleanup?: () => void | Promise<void> } = {}): SuiteCluster {
  const s = {} as { etcd: EtcdCluster; fleet: Fleet };
  before(async () => {
    s.etcd = await EtcdCluster.start(o.members ?? 1);
    s.fleet = new Fleet();
  });
  after(async () => {
    await o.cleanup?.();
    await s.fleet?.stop();
    await s.etcd?.stop();
  });
  return s;
}
