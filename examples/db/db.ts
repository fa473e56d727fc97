// Carrying out a plan against the shards and the catalog, whoever they are: remote components
// (the executor components) or objects in this process (the tests' LocalDb).
import { executeSelect, mergePartials, partialAggregate, Partial, plan as makePlan, Plan, Result, Row, shardOf, TableSchema, insertRows } from './engine';
import { Shard, ShardOp } from './shard';
import { parse, Value, Expr, Statement } from './sql';

export interface ShardApi {
  run(op: ShardOp): Promise<number>;
  scan(table: string, where?: Expr, pk?: Value): Promise<Row[]>;
  /** Partial aggregation on the shard: one partial per group instead of every row. */
  aggregate?(statement: Statement): Promise<Partial[]>;
}

export interface CatalogState { tables: Record<string, TableSchema>; shards: number }

export interface CatalogApi {
  get(): Promise<CatalogState>;
  create(schema: TableSchema): Promise<void>;
  drop(table: string): Promise<void>;
  /** Row-count estimate for the planner's costs. */
  addRows(table: string, delta: number): Promise<void>;
}

/**
 * The plan's EXPLAIN as the executor that ran it tells it: the planner names the executor it
 * prefers, and the job's route runs it there only if an instance of that kind is on the route
 * (e.g. before any executor-vector is deployed, a scan it prefers for vector runs on a row one).
 */
export function explainAsRun(explain: string[] | undefined, preferred: Plan['executor'], ran: Plan['executor']): string[] | undefined {
  if (!explain || preferred === ran) return explain;
  return [...explain, `RAN ON executor-${ran}: no executor-${preferred} instance was on the route`];
}

export async function executePlan(p: Plan, shards: ShardApi[], catalog: CatalogApi, executor = p.executor): Promise<Result> {
  const st = p.statement;
  switch (st.type) {
    case 'create': {
      const schema: TableSchema = { name: st.table, columns: st.columns, primaryKey: st.primaryKey, rows: 0 };
      await catalog.create(schema);
      await Promise.all(shards.map((s) => s.run({ op: 'create', schema })));
      return { columns: [], rows: [], changed: 0, explain: p.explain };
    }
    case 'drop':
      await Promise.all(shards.map((s) => s.run({ op: 'drop', table: st.table })));
      await catalog.drop(st.table);
      return { columns: [], rows: [], changed: 0, explain: p.explain };
    case 'insert': {
      const rows = insertRows(st, p.schema!);
      const by = new Map<number, Row[]>();
      for (const r of rows) {
        const s = shardOf(r[p.schema!.primaryKey], shards.length);
        if (!by.has(s)) by.set(s, []);
        by.get(s)!.push(r);
      }
      const n = (await Promise.all([...by].map(([s, rs]) => shards[s].run({ op: 'insert', table: st.table, rows: rs })))).reduce((a, b) => a + b, 0);
      await catalog.addRows(st.table, n);
      return { columns: [], rows: [], changed: n, explain: p.explain };
    }
    case 'update':
    case 'delete': {
      const op: ShardOp = st.type === 'update' ? { op: 'update', table: st.table, set: st.set, where: st.where } : { op: 'delete', table: st.table, where: st.where };
      const n = (await Promise.all(p.shards.map((s) => shards[s].run(op)))).reduce((a, b) => a + b, 0);
      if (st.type === 'delete') await catalog.addRows(st.table, -n);
      return { columns: [], rows: [], changed: n, explain: p.explain };
    }
    case 'select': {
      if (p.kind === 'aggregate' && shards.every((s) => s.aggregate)) {
        // The shards fold their rows into one partial per group; only those travel.
        const parts = await Promise.all(p.shards.map((s) => shards[s].aggregate!(st)));
        return { ...mergePartials(st, p.schema!, parts.flat()), explain: [...p.explain, 'PARTIAL AGGREGATES ON THE SHARDS, MERGED IN THE EXECUTOR'] };
      }
      const key = p.kind === 'point' ? p.key : undefined;
      const parts = await Promise.all(p.shards.map((s) => shards[s].scan(st.table, p.pushdown, key)));
      return { ...executeSelect(p, parts.flat(), executor), explain: p.explain };
    }
  }
}

/** The whole database in one process: for unit and differential tests and the benchmark's floor. */
export class LocalDb {
  readonly shards: Shard[];
  private state: CatalogState;

  /** partials: let the shards pre-aggregate (as the deployed storage components do). */
  constructor(shardCount: number, dirs?: string[], public partials = true) {
    this.shards = Array.from({ length: shardCount }, (_, i) => new Shard(dirs?.[i]));
    this.state = { tables: {}, shards: shardCount };
  }

  private api(): { shards: ShardApi[]; catalog: CatalogApi } {
    return {
      shards: this.shards.map((s) => ({
        run: (op) => s.run(op),
        scan: async (t, w, pk) => s.scan(t, w, pk).map((r) => ({ ...r })),
        ...(this.partials ? { aggregate: async (st: Statement) => partialAggregate(st as never, s.scan(st.table, (st as { where?: Expr }).where)) } : {}),
      })),
      catalog: {
        get: async () => this.state,
        create: async (schema) => { this.state.tables[schema.name] = schema; },
        drop: async (t) => { delete this.state.tables[t]; },
        addRows: async (t, d) => { const s = this.state.tables[t]; if (s) s.rows = Math.max(0, (s.rows ?? 0) + d); },
      },
    };
  }

  plan(sql: string): Plan {
    const st = parse(sql);
    return makePlan(st, this.state.tables[st.table], this.state.shards);
  }

  async exec(sql: string, executor?: 'row' | 'vector'): Promise<Result> {
    const p = this.plan(sql);
    const { shards, catalog } = this.api();
    return executePlan(p, shards, catalog, executor);
  }
}
