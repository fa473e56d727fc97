// The database's planner: a syntax tree in, a plan out (shards, pushdown, point lookup / scan /
// aggregate, the executor by cost, EXPLAIN lines). Its result header `executor` steers the
// pipeline's next stage to executor-row or executor-vector.
import { serveComponent } from '../../../common/component';
import { plan } from '../engine';
import type { Statement } from '../sql';
import { asStatus, catalogApi } from './remote';

const catalog = catalogApi();

// The catalog is one instance: asking it on every statement would make it every query's
// bottleneck. The planner keeps what it said for a second, and asks again at once when a
// statement names a table it does not know (a table created a moment ago).
let cached: { at: number; state: Awaited<ReturnType<typeof catalog.state>> } | undefined;
async function catalogState(table: string) {
  const fresh = cached && Date.now() - cached.at < 1_000 && cached.state.tables[table] && cached.state.shardEndpoints.filter(Boolean).length >= cached.state.shards;
  if (!fresh) cached = { at: Date.now(), state: await catalog.state() };
  return cached!.state;
}

void serveComponent({
  kind: 'sql-planner',
  version: '1.0.0',
  operations: {
    plan: async (input) => {
      const st = JSON.parse(input.toString('utf8')) as Statement;
      // DDL always reads the catalog itself: a cached answer could say a dropped table exists.
      const state = st.type === 'create' || st.type === 'drop' ? await catalog.state() : await catalogState(st.table);
      if (state.shardEndpoints.filter(Boolean).length < state.shards) throw new Error(`only ${state.shardEndpoints.filter(Boolean).length} of ${state.shards} storage shards have registered`);
      try {
        const p = plan(st, state.tables[st.table], state.shards);
        return { payload: JSON.stringify({ plan: p, shardEndpoints: state.shardEndpoints }), headers: { executor: p.executor } };
      } catch (e) {
        return asStatus(e);
      }
    },
  },
});
