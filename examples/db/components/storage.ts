// One storage shard of the database (its shard number is the instance's slot): tables in memory,
// a write-ahead log fsynced before each statement is acknowledged, and snapshots, on the
// instance's volume (/data). It registers its address with the catalog.
import { serveComponent } from '../../../common/component';
import { Shard, ShardOp } from '../shard';
import type { Expr, Statement, Value } from '../sql';
import { partialAggregate } from '../engine';
import { asStatus, call, CATALOG } from './remote';

const shardNo = Number(process.env.TESSERA_SLOT ?? process.env.SHARD ?? 0);
const shard = new Shard(process.env.DATA_DIR || '/data');
const endpoint = `127.0.0.1:${process.env.PORT_GRPC}`;

void serveComponent({
  kind: 'storage',
  version: '1.0.0',
  operations: {
    run: async (input) => {
      try {
        return JSON.stringify(await shard.run(JSON.parse(input.toString('utf8')) as ShardOp));
      } catch (e) {
        return asStatus(e);
      }
    },
    aggregate: async (input) => {
      const st = JSON.parse(input.toString('utf8')) as Extract<Statement, { type: 'select' }>;
      try {
        return JSON.stringify(partialAggregate(st, shard.scan(st.table, st.where ?? undefined)));
      } catch (e) {
        return asStatus(e);
      }
    },
    scan: async (input) => {
      const q = JSON.parse(input.toString('utf8')) as { table: string; where?: Expr; pk?: Value };
      try {
        return JSON.stringify(shard.scan(q.table, q.where ?? undefined, q.pk ?? undefined));
      } catch (e) {
        return asStatus(e);
      }
    },
  },
}).then(async () => {
  console.log(JSON.stringify({ msg: 'shard ready', shard: shardNo, recovered: shard.recovered }));
  // Tell the catalog where this shard is (again after every restart: the port may change).
  for (;;) {
    try {
      await call(CATALOG, 'register', { shard: shardNo, shards: Number(process.env.SHARDS ?? 1), endpoint });
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 500));
    }
  }
});
