// The database's executors: a plan in, the result out. EXECUTOR=row registers as executor-row
// (row at a time: point lookups, small results), EXECUTOR=vector as executor-vector (column at a
// time: scans, aggregates). Both fetch from the storage shards the plan names.
import { serveComponent } from '../../../common/component';
import type { Plan } from '../engine';
import { executePlan, explainAsRun } from '../db';
import { asStatus, catalogApi, shardApi } from './remote';
import { delay } from '../../pipeline/components/delay';

const mode = process.env.EXECUTOR === 'vector' ? 'vector' : 'row';
const catalog = catalogApi();

void serveComponent({
  kind: `executor-${mode}`,
  version: '1.0.0',
  operations: {
    execute: async (input) => {
      const { plan, shardEndpoints } = JSON.parse(input.toString('utf8')) as { plan: Plan; shardEndpoints: string[] };
      await delay(); // DELAY_MS: a slow executor, for the crash tests
      try {
        const r = await executePlan(plan, shardEndpoints.map(shardApi), catalog, mode);
        return { payload: JSON.stringify({ ...r, explain: explainAsRun(r.explain, plan.executor, mode), executor: mode }), headers: { executor: mode } };
      } catch (e) {
        return asStatus(e);
      }
    },
  },
});
