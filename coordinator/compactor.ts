// etcd keeps every revision of every key until it is compacted, and Tessera writes all the time
// (node status, job records, events): without compaction etcd's database grows until it hits its
// quota (2 GiB by default) and raises NOSPACE, and the cluster turns read-only. The leader
// compacts, as kube-apiserver does: every interval it notes etcd's current revision and compacts
// to the one it noted an interval earlier, so that at least one interval of history stays for
// watchers that reconnect. Compaction is not a fenced write, and needs none: it is idempotent and
// only moves forward, so a deposed leader compacting once more does no harm. Freed pages are
// reused; the file shrinks only with `etcdctl defrag`, which is the operator's (it blocks a member).
import type { Etcd3 } from 'etcd3';
import type { Logger } from '../common/logger';

export class Compactor {
  /** etcd's revision at the previous tick: the next tick compacts to it. */
  private noted?: number;
  /** The last revision compacted to (for tests and logs). */
  compactedTo = 0;

  constructor(private readonly client: Etcd3, private readonly key: string, private readonly log: Logger) {}

  /** Called by the leader's loop every interval. */
  async tick(): Promise<void> {
    const res = await this.client.get(this.key).exec();
    const current = Number(res.header.revision);
    const prev = this.noted;
    this.noted = current;
    if (!prev || prev <= this.compactedTo) return;
    try {
      await this.client.kv.compact({ revision: String(prev), physical: false });
      this.compactedTo = prev;
      this.log.info({ revision: prev, current }, 'etcd history compacted');
    } catch (err) {
      // Compacted further already (etcd's own --auto-compaction, or an operator): nothing to do.
      if (/compacted/.test((err as Error).message)) {
        this.compactedTo = prev;
        return;
      }
      throw err;
    }
  }
}
