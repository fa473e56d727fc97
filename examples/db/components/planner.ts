// The database's planner: a syntax tree in, a plan out (shards, pushdown, point lookup / scan /
// aggregate, the executor by cost, EXPLAIN lines). Its result header `executor` steers the
// pipeline's next stage to executor-row or executor-vector.
import { serveComponent } from '../../../common/component';
import { plan } from '../engine';
import type { Statement } from '../sql';
import { asStatus, catalogApi } from './remote';

const catalog = catalogApi();

void serveComponent({
  kind: 'sql-planner',
  version: '1.0.0',
  operations: {
    plan: async (input) => {
      const st = JSON.parse(input.toString('utf8')) as Statement;
      const state = await catalog.state();
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
