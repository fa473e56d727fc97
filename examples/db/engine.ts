// The database's evaluation, planning and execution, as pure functions the components call:
//
//   planner   statement + schema + shard map + row-count estimate -> plan: which shards, what is
//             pushed down to them, point lookup / scan / aggregate, and the executor (row or
//             vector) by a cost estimate; EXPLAIN lines
//   executors rows fetched from the shards -> result. executeRow works row by row (cheap to
//             start, good for point lookups and small results); executeVector turns the rows into
//             columns first and evaluates filters, groups and aggregates column by column (costs
//             a conversion, cheaper per row on scans and aggregates). Same answers, checked
//             against SQLite by the differential test.
//
// Semantics follow SQLite for this subset: NULL compares to nothing (WHERE drops it), NULLs sort
// first ascending, integer / integer divides as integers, SUM of no rows is NULL, AVG is real,
// COUNT(x) counts non-NULL values. Statements are atomic per shard, not across shards.
import { ColumnType, columnsOf, Expr, exprText, hasAggregate, OrderItem, SqlError, Statement, Value } from './sql';

export interface TableSchema { name: string; columns: { name: string; type: ColumnType }[]; primaryKey: string; rows?: number }
export type Row = Record<string, Value>;
export interface Result { columns: string[]; rows: Value[][]; changed?: number; explain?: string[] }

// ─────────────────────────────── expressions ───────────────────────────────

function truthy(v: Value): boolean | null {
  if (v === null) return null;
  return typeof v === 'number' ? v !== 0 : Number(v) !== 0 && !Number.isNaN(Number(v));
}

/** SQLite order: NULL < numbers < text. */
export function compare(a: Value, b: Value): number {
  if (a === null || b === null) return a === b ? 0 : a === null ? -1 : 1;
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === 'number') return -1;
  if (typeof b === 'number') return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

export function evalExpr(e: Expr, row: Row): Value {
  switch (e.k) {
    case 'lit': return e.v;
    case 'col': return row[e.name] ?? null;
    case 'neg': { const v = evalExpr(e.e, row); return v === null ? null : -Number(v); }
    case 'not': { const t = truthy(evalExpr(e.e, row)); return t === null ? null : t ? 0 : 1; }
    case 'isnull': { const isNull = evalExpr(e.e, row) === null; return (e.not ? !isNull : isNull) ? 1 : 0; }
    case 'agg': throw new SqlError(`${exprText(e)}: aggregates are allowed only in the select list`);
    case 'bin': return binary(e.op, evalExpr(e.l, row), () => evalExpr(e.r, row));
  }
}

function binary(op: string, l: Value, rf: () => Value): Value {
  if (op === 'AND') {
    const a = truthy(l);
    if (a === false) return 0;
    const b = truthy(rf());
    return b === false ? 0 : a === null || b === null ? null : 1;
  }
  if (op === 'OR') {
    const a = truthy(l);
    if (a === true) return 1;
    const b = truthy(rf());
    return b === true ? 1 : a === null || b === null ? null : 0;
  }
  const r = rf();
  if (l === null || r === null) return null;
  switch (op) {
    case '=': return compare(l, r) === 0 ? 1 : 0;
    case '!=': return compare(l, r) !== 0 ? 1 : 0;
    case '<': return compare(l, r) < 0 ? 1 : 0;
    case '<=': return compare(l, r) <= 0 ? 1 : 0;
    case '>': return compare(l, r) > 0 ? 1 : 0;
    case '>=': return compare(l, r) >= 0 ? 1 : 0;
  }
  const a = Number(l);
  const b = Number(r);
  const ints = Number.isInteger(a) && Number.isInteger(b);
  switch (op) {
    case '+': return a + b;
    case '-': return a - b;
    case '*': return a * b;
    case '/': return b === 0 ? null : ints ? Math.trunc(a / b) : a / b;
    case '%': return b === 0 ? null : ints ? a % b : a % b;
  }
  throw new SqlError(`unknown operator ${op}`);
}

export const matches = (where: Expr | undefined, row: Row) => !where || truthy(evalExpr(where, row)) === true;

// ─────────────────────────────── checks ───────────────────────────────

/** Every column named must exist; a column compared with a literal of another type is a mismatch. */
export function checkColumns(st: Statement, schema: TableSchema): void {
  const cols = new Map(schema.columns.map((c) => [c.name, c.type]));
  const check = (e: Expr | '*' | undefined) => {
    if (!e || e === '*') return;
    for (const c of columnsOf(e)) if (!cols.has(c)) throw new SqlError(`no such column: ${c} (table ${schema.name} has ${[...cols.keys()].join(', ')})`);
    checkTypes(e);
  };
  const checkTypes = (e: Expr) => {
    if (e.k === 'bin' && ['=', '!=', '<', '<=', '>', '>='].includes(e.op)) {
      const [c, lit] = e.l.k === 'col' && e.r.k === 'lit' ? [e.l, e.r] : e.r.k === 'col' && e.l.k === 'lit' ? [e.r, e.l] : [];
      if (c && lit && lit.v !== null) {
        const t = cols.get(c.name)!;
        if ((t === 'TEXT') !== (typeof lit.v === 'string')) throw new SqlError(`type mismatch: column ${c.name} is ${t}, compared with ${typeof lit.v === 'string' ? `'${lit.v}'` : lit.v}`);
      }
    }
    if (e.k === 'bin') { checkTypes(e.l); checkTypes(e.r); }
    if (e.k === 'not' || e.k === 'neg' || e.k === 'isnull') checkTypes(e.e);
  };
  switch (st.type) {
    case 'select':
      for (const i of st.items) check(i.expr);
      check(st.where);
      for (const g of st.groupBy) if (!cols.has(g)) throw new SqlError(`no such column: ${g} in GROUP BY`);
      for (const o of st.orderBy) if (!(o.expr.k === 'col' && st.items.some((i) => i.alias === (o.expr as { name: string }).name))) check(o.expr);
      break;
    case 'update':
      for (const s of st.set) {
        if (!cols.has(s.column)) throw new SqlError(`no such column: ${s.column} (table ${schema.name} has ${[...cols.keys()].join(', ')})`);
        if (s.column === schema.primaryKey) throw new SqlError(`column ${s.column} is the primary key and cannot be updated (rows are placed on shards by it)`);
        check(s.expr);
      }
      check(st.where);
      break;
    case 'delete': check(st.where); break;
    default: break;
  }
}

/** A value as a column of this type stores it, or a type error naming the column. */
export function coerce(v: Value, col: { name: string; type: ColumnType }, pk: boolean): Value {
  if (v === null) {
    if (pk) throw new SqlError(`column ${col.name} is the primary key and cannot be NULL`);
    return null;
  }
  if (col.type === 'TEXT') {
    if (typeof v !== 'string') throw new SqlError(`type mismatch: column ${col.name} is TEXT, got ${v}`);
    return v;
  }
  if (typeof v !== 'number') throw new SqlError(`type mismatch: column ${col.name} is ${col.type}, got '${v}'`);
  if (col.type === 'INTEGER' && !Number.isInteger(v)) throw new SqlError(`type mismatch: column ${col.name} is INTEGER, got ${v}`);
  return v;
}

/** The rows of an INSERT, typed and complete. */
export function insertRows(st: Extract<Statement, { type: 'insert' }>, schema: TableSchema): Row[] {
  const names = st.columns.length ? st.columns : schema.columns.map((c) => c.name);
  for (const n of names) if (!schema.columns.some((c) => c.name === n)) throw new SqlError(`no such column: ${n} (table ${schema.name} has ${schema.columns.map((c) => c.name).join(', ')})`);
  return st.rows.map((vals, i) => {
    if (vals.length !== names.length) throw new SqlError(`row ${i + 1} has ${vals.length} values for ${names.length} columns`);
    const row: Row = {};
    for (const c of schema.columns) row[c.name] = null;
    names.forEach((n, j) => {
      const col = schema.columns.find((c) => c.name === n)!;
      row[n] = coerce(evalExpr(vals[j], {}), col, n === schema.primaryKey);
    });
    if (row[schema.primaryKey] === null) throw new SqlError(`column ${schema.primaryKey} is the primary key and cannot be NULL`);
    return row;
  });
}

export function shardOf(pk: Value, shards: number): number {
  const s = typeof pk === 'number' ? `n${pk}` : `s${pk}`;
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return (h >>> 0) % shards;
}

// ─────────────────────────────── planner ───────────────────────────────

export interface Plan {
  statement: Statement;
  schema?: TableSchema;
  /** Shards the statement touches. */
  shards: number[];
  kind: 'point' | 'scan' | 'aggregate' | 'insert' | 'update' | 'delete' | 'create' | 'drop';
  executor: 'row' | 'vector';
  /** The WHERE clause the shards evaluate (pushed down). */
  pushdown?: Expr;
  /** The primary-key value of a point lookup. */
  key?: Value;
  explain: string[];
}

/** The primary-key value of `WHERE pk = literal` (alone or ANDed), if any. */
function pointKey(where: Expr | undefined, pk: string): Value | undefined {
  if (!where || where.k !== 'bin') return undefined;
  if (where.op === 'AND') return pointKey(where.l, pk) ?? pointKey(where.r, pk);
  if (where.op !== '=') return undefined;
  if (where.l.k === 'col' && where.l.name === pk && where.r.k === 'lit') return where.r.v;
  if (where.r.k === 'col' && where.r.name === pk && where.l.k === 'lit') return where.l.v;
  return undefined;
}

export const COST = { rowPerRow: 1, rowStart: 0.05, vectorPerRow: 0.3, vectorStart: 2 };

export function plan(st: Statement, schema: TableSchema | undefined, shardCount: number): Plan {
  const all = Array.from({ length: shardCount }, (_, i) => i);
  if (st.type === 'create') {
    if (schema) throw new SqlError(`table ${st.table} already exists`);
    return { statement: st, shards: all, kind: 'create', executor: 'row', explain: [`CREATE TABLE ${st.table} ON ${shardCount} SHARDS (hash of ${st.primaryKey})`] };
  }
  if (!schema) throw new SqlError(`no such table: ${st.table}`);
  checkColumns(st, schema);
  if (st.type === 'drop') return { statement: st, schema, shards: all, kind: 'drop', executor: 'row', explain: [`DROP TABLE ${st.table} ON ${shardCount} SHARDS`] };
  if (st.type === 'insert') {
    const rows = insertRows(st, schema);
    const shards = [...new Set(rows.map((r) => shardOf(r[schema.primaryKey], shardCount)))].sort((a, b) => a - b);
    return { statement: st, schema, shards, kind: 'insert', executor: 'row', explain: [`INSERT ${rows.length} ROW(S) INTO ${st.table} ON SHARD(S) ${shards.join(', ')}`] };
  }
  const key = pointKey(st.where, schema.primaryKey);
  const shards = key !== undefined && key !== null ? [shardOf(key, shardCount)] : all;
  const where = key !== undefined ? `${schema.primaryKey} = ${JSON.stringify(key)}` : st.where ? exprText(st.where) : '';
  if (st.type === 'update' || st.type === 'delete') {
    return {
      statement: st, schema, shards, kind: st.type, executor: 'row', pushdown: st.where,
      explain: [`${st.type.toUpperCase()} ${st.table}${where ? ` WHERE ${where}` : ''} ON ${shards.length === 1 && shardCount > 1 ? `SHARD ${shards[0]} (point)` : `${shards.length} SHARD(S)`}`],
    };
  }
  const aggregate = st.groupBy.length > 0 || st.items.some((i) => hasAggregate(i.expr));
  const total = schema.rows ?? 1000;
  const est = key !== undefined ? 1 : Math.max(1, Math.round(total * (st.where ? 0.33 : 1)));
  const rowCost = COST.rowStart + est * COST.rowPerRow;
  const vecCost = COST.vectorStart + est * COST.vectorPerRow;
  const executor = vecCost < rowCost ? 'vector' : 'row';
  const kind = key !== undefined ? 'point' : aggregate ? 'aggregate' : 'scan';
  const explain = [
    kind === 'point' ? `POINT LOOKUP ${st.table} ON SHARD ${shards[0]} (${where})` : `SCAN ${st.table} ON ${shards.length} SHARD(S)${where ? ` WHERE ${where} (pushed down)` : ''}`,
    ...(aggregate ? [`AGGREGATE ${st.items.filter((i) => hasAggregate(i.expr)).map((i) => exprText(i.expr)).join(', ')}${st.groupBy.length ? ` GROUP BY ${st.groupBy.join(', ')}` : ''}`] : []),
    ...(st.orderBy.length ? [`ORDER BY ${st.orderBy.map((o) => `${exprText(o.expr)}${o.desc ? ' DESC' : ''}`).join(', ')}`] : []),
    ...(st.limit !== undefined ? [`LIMIT ${st.limit}`] : []),
    `EXECUTOR ${executor} (estimated ${est} row(s): row cost ${rowCost.toFixed(1)}, vector cost ${vecCost.toFixed(1)})`,
  ];
  return { statement: st, schema, shards, kind, executor, pushdown: st.where, key: kind === 'point' ? key : undefined, explain };
}

// ─────────────────────────────── executors ───────────────────────────────

type Select = Extract<Statement, { type: 'select' }>;

function outputColumns(st: Select, schema: TableSchema): string[] {
  return st.items.flatMap((i) => (i.expr === '*' ? schema.columns.map((c) => c.name) : [i.alias ?? exprText(i.expr)]));
}

function sortAndLimit(rows: { key: Value[]; out: Value[] }[], order: OrderItem[], limit?: number): Value[][] {
  if (order.length) {
    rows.sort((a, b) => {
      for (let i = 0; i < order.length; i++) {
        const c = compare(a.key[i], b.key[i]);
        if (c) return order[i].desc ? -c : c;
      }
      return 0;
    });
  }
  const out = rows.map((r) => r.out);
  return limit === undefined ? out : out.slice(0, limit);
}

/** Resolves ORDER BY items that name an output alias. */
function orderExpr(o: OrderItem, st: Select): Expr {
  if (o.expr.k === 'col') {
    const item = st.items.find((i) => i.alias === (o.expr as { name: string }).name);
    if (item && item.expr !== '*') return item.expr;
  }
  return o.expr;
}

export interface Acc { fn: string; n: number; sum: number; allInt: boolean; best: Value }
const newAcc = (fn: string): Acc => ({ fn, n: 0, sum: 0, allInt: true, best: null });
function feed(a: Acc, v: Value | '*'): void {
  if (v === '*') { a.n++; return; }
  if (v === null) return;
  a.n++;
  if (a.fn === 'SUM' || a.fn === 'AVG') { a.sum += Number(v); if (!Number.isInteger(Number(v))) a.allInt = false; }
  if (a.fn === 'MIN' && (a.best === null || compare(v, a.best) < 0)) a.best = v;
  if (a.fn === 'MAX' && (a.best === null || compare(v, a.best) > 0)) a.best = v;
}
function result(a: Acc): Value {
  switch (a.fn) {
    case 'COUNT': return a.n;
    case 'SUM': return a.n ? a.sum : null;
    case 'AVG': return a.n ? a.sum / a.n : null;
    default: return a.best;
  }
}

/** Evaluates an output expression over a group: aggregates from accumulators, columns from the group's first row. */
function evalGroup(e: Expr, accs: Map<Expr, Acc>, first: Row): Value {
  switch (e.k) {
    case 'agg': return result(accs.get(e)!);
    case 'bin': return binary(e.op, evalGroup(e.l, accs, first), () => evalGroup(e.r, accs, first));
    case 'neg': { const v = evalGroup(e.e, accs, first); return v === null ? null : -Number(v); }
    case 'not': { const t = truthy(evalGroup(e.e, accs, first)); return t === null ? null : t ? 0 : 1; }
    case 'isnull': { const n = evalGroup(e.e, accs, first) === null; return (e.not ? !n : n) ? 1 : 0; }
    default: return evalExpr(e, first);
  }
}

function aggregatesOf(e: Expr | '*', out: Extract<Expr, { k: 'agg' }>[] = []): Extract<Expr, { k: 'agg' }>[] {
  if (e === '*') return out;
  if (e.k === 'agg') out.push(e);
  else if (e.k === 'bin') { aggregatesOf(e.l, out); aggregatesOf(e.r, out); }
  else if (e.k === 'not' || e.k === 'neg' || e.k === 'isnull') aggregatesOf(e.e, out);
  return out;
}

function checkGrouping(st: Select): void {
  for (const i of st.items) {
    if (i.expr === '*') throw new SqlError('SELECT * cannot be used with aggregates or GROUP BY');
    if (!hasAggregate(i.expr)) for (const c of columnsOf(i.expr)) if (!st.groupBy.includes(c)) throw new SqlError(`column ${c} must appear in GROUP BY or be inside an aggregate`);
  }
}

/** Row at a time. */
export function executeRow(st: Select, schema: TableSchema, input: Row[]): Result {
  const columns = outputColumns(st, schema);
  const rows = input.filter((r) => matches(st.where, r));
  const aggregate = st.groupBy.length > 0 || st.items.some((i) => hasAggregate(i.expr));
  const orders = st.orderBy.map((o) => orderExpr(o, st));
  if (!aggregate) {
    const out = rows.map((r) => ({
      key: orders.map((e) => evalExpr(e, r)),
      out: st.items.flatMap((i) => (i.expr === '*' ? schema.columns.map((c) => r[c.name] ?? null) : [evalExpr(i.expr, r)])),
    }));
    return { columns, rows: sortAndLimit(out, st.orderBy, st.limit) };
  }
  checkGrouping(st);
  const aggs = [...new Set([...st.items.flatMap((i) => aggregatesOf(i.expr)), ...orders.flatMap((e) => aggregatesOf(e))])];
  const groups = new Map<string, { first: Row; accs: Map<Expr, Acc> }>();
  for (const r of rows) {
    const k = JSON.stringify(st.groupBy.map((g) => r[g]));
    let g = groups.get(k);
    if (!g) { g = { first: r, accs: new Map(aggs.map((a) => [a, newAcc(a.fn)])) }; groups.set(k, g); }
    for (const a of aggs) feed(g.accs.get(a)!, a.arg === '*' ? '*' : evalExpr(a.arg, r));
  }
  if (!groups.size && !st.groupBy.length) groups.set('', { first: {}, accs: new Map(aggs.map((a) => [a, newAcc(a.fn)])) });
  const out = [...groups.values()].map((g) => ({
    key: orders.map((e) => evalGroup(e, g.accs, g.first)),
    out: st.items.map((i) => evalGroup(i.expr as Expr, g.accs, g.first)),
  }));
  return { columns, rows: sortAndLimit(out, st.orderBy, st.limit) };
}

/** Column at a time: the rows become column arrays; filters make a selection vector. */
export function executeVector(st: Select, schema: TableSchema, input: Row[]): Result {
  const columns = outputColumns(st, schema);
  const n = input.length;
  const cols = new Map<string, Value[]>();
  for (const c of schema.columns) {
    const arr = new Array<Value>(n);
    for (let i = 0; i < n; i++) arr[i] = input[i][c.name] ?? null;
    cols.set(c.name, arr);
  }
  const vec = (e: Expr, sel: Int32Array): Value[] => {
    switch (e.k) {
      case 'lit': return new Array(sel.length).fill(e.v);
      case 'col': { const src = cols.get(e.name)!; const out = new Array<Value>(sel.length); for (let i = 0; i < sel.length; i++) out[i] = src[sel[i]]; return out; }
      case 'bin': {
        const l = vec(e.l, sel);
        const r = vec(e.r, sel);
        const out = new Array<Value>(sel.length);
        for (let i = 0; i < sel.length; i++) out[i] = binary(e.op, l[i], () => r[i]);
        return out;
      }
      case 'not': return vec(e.e, sel).map((v) => { const t = truthy(v); return t === null ? null : t ? 0 : 1; });
      case 'neg': return vec(e.e, sel).map((v) => (v === null ? null : -Number(v)));
      case 'isnull': return vec(e.e, sel).map((v) => ((e.not ? v !== null : v === null) ? 1 : 0));
      case 'agg': throw new SqlError(`${exprText(e)}: aggregates are allowed only in the select list`);
    }
  };
  let sel = Int32Array.from({ length: n }, (_, i) => i);
  if (st.where) {
    const keep = vec(st.where, sel);
    let m = 0;
    const next = new Int32Array(n);
    for (let i = 0; i < sel.length; i++) if (truthy(keep[i]) === true) next[m++] = sel[i];
    sel = next.slice(0, m);
  }
  const aggregate = st.groupBy.length > 0 || st.items.some((i) => hasAggregate(i.expr));
  const orders = st.orderBy.map((o) => orderExpr(o, st));
  if (!aggregate) {
    const outCols = st.items.flatMap((i) => (i.expr === '*' ? schema.columns.map((c) => vec({ k: 'col', name: c.name }, sel)) : [vec(i.expr, sel)]));
    const keyCols = orders.map((e) => vec(e, sel));
    const rows = Array.from({ length: sel.length }, (_, i) => ({ key: keyCols.map((c) => c[i]), out: outCols.map((c) => c[i]) }));
    return { columns, rows: sortAndLimit(rows, st.orderBy, st.limit) };
  }
  checkGrouping(st);
  const aggs = [...new Set([...st.items.flatMap((i) => aggregatesOf(i.expr)), ...orders.flatMap((e) => aggregatesOf(e))])];
  // Group ids per selected row, then each aggregate over its argument column in one pass.
  const groupCols = st.groupBy.map((g) => vec({ k: 'col', name: g }, sel));
  const ids = new Int32Array(sel.length);
  const firsts: number[] = [];
  const index = new Map<string, number>();
  for (let i = 0; i < sel.length; i++) {
    const k = groupCols.length === 1 ? `${typeof groupCols[0][i]}:${groupCols[0][i]}` : JSON.stringify(groupCols.map((c) => c[i]));
    let id = index.get(k);
    if (id === undefined) { id = firsts.length; index.set(k, id); firsts.push(sel[i]); }
    ids[i] = id;
  }
  const groupCount = firsts.length || (st.groupBy.length ? 0 : 1);
  const accs = new Map<Expr, Acc[]>();
  for (const a of aggs) {
    const arr = Array.from({ length: groupCount }, () => newAcc(a.fn));
    const arg = a.arg === '*' ? undefined : vec(a.arg, sel);
    for (let i = 0; i < sel.length; i++) feed(arr[ids[i]], arg ? arg[i] : '*');
    accs.set(a, arr);
  }
  const out = Array.from({ length: groupCount }, (_, g) => {
    const first = firsts.length ? input[firsts[g]] : {};
    const m = new Map([...accs].map(([e, arr]) => [e, arr[g]]));
    return { key: orders.map((e) => evalGroup(e, m, first)), out: st.items.map((i) => evalGroup(i.expr as Expr, m, first)) };
  });
  return { columns, rows: sortAndLimit(out, st.orderBy, st.limit) };
}

// ───────────────────── partial aggregation on the shards ─────────────────────

/** One group's partial state from one shard: its first row (for group columns) and an accumulator per aggregate. */
export interface Partial { key: string; first: Row; accs: Acc[] }

function aggList(st: Select): Extract<Expr, { k: 'agg' }>[] {
  const orders = st.orderBy.map((o) => orderExpr(o, st));
  return [...new Set([...st.items.flatMap((i) => aggregatesOf(i.expr)), ...orders.flatMap((e) => aggregatesOf(e))])];
}

/** On a shard: its rows that pass the WHERE, folded into one partial per group. */
export function partialAggregate(st: Select, rows: Row[]): Partial[] {
  checkGrouping(st);
  const aggs = aggList(st);
  const groups = new Map<string, Partial>();
  for (const r of rows) {
    if (!matches(st.where, r)) continue;
    const k = JSON.stringify(st.groupBy.map((g) => r[g] ?? null));
    let g = groups.get(k);
    if (!g) { g = { key: k, first: r, accs: aggs.map((a) => newAcc(a.fn)) }; groups.set(k, g); }
    aggs.forEach((a, i) => feed(g!.accs[i], a.arg === '*' ? '*' : evalExpr(a.arg, r)));
  }
  return [...groups.values()];
}

/** In the executor: the shards' partials merged per group, then the output, order and limit. */
export function mergePartials(st: Select, schema: TableSchema, parts: Partial[]): Result {
  checkGrouping(st);
  const aggs = aggList(st);
  const merged = new Map<string, Partial>();
  for (const p of parts) {
    const m = merged.get(p.key);
    if (!m) { merged.set(p.key, { key: p.key, first: p.first, accs: p.accs.map((a) => ({ ...a })) }); continue; }
    p.accs.forEach((a, i) => {
      const t = m.accs[i];
      t.n += a.n;
      t.sum += a.sum;
      t.allInt = t.allInt && a.allInt;
      if (a.best !== null && (t.best === null || (t.fn === 'MIN' ? compare(a.best, t.best) < 0 : compare(a.best, t.best) > 0))) t.best = a.best;
    });
  }
  if (!merged.size && !st.groupBy.length) merged.set('', { key: '', first: {}, accs: aggs.map((a) => newAcc(a.fn)) });
  const orders = st.orderBy.map((o) => orderExpr(o, st));
  const out = [...merged.values()].map((g) => {
    const m = new Map<Expr, Acc>(aggs.map((a, i) => [a, g.accs[i]]));
    return { key: orders.map((e) => evalGroup(e, m, g.first)), out: st.items.map((i) => evalGroup(i.expr as Expr, m, g.first)) };
  });
  return { columns: outputColumns(st, schema), rows: sortAndLimit(out, st.orderBy, st.limit) };
}

/** The SELECT result over rows already filtered by the shards. */
export function executeSelect(p: Plan, rows: Row[], executor = p.executor): Result {
  const st = p.statement as Select;
  return executor === 'vector' ? executeVector(st, p.schema!, rows) : executeRow(st, p.schema!, rows);
}
