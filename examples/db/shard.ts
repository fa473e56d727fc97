// One storage shard: its tables in memory, made durable by a write-ahead log (each statement
// fsynced before it is applied and acknowledged) and snapshots, in a folder on the instance's
// volume. A shard restarted on the same host replays the snapshot then the log: nothing it
// acknowledged is lost. A statement is atomic on the shard: it is checked in full, logged, then
// applied.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { coerce, matches, Row, TableSchema, evalExpr } from './engine';
import { Expr, SqlError, Value } from './sql';

export type ShardOp =
  | { op: 'create'; schema: TableSchema }
  | { op: 'drop'; table: string }
  | { op: 'insert'; table: string; rows: Row[] }
  | { op: 'update'; table: string; set: { column: string; expr: Expr }[]; where?: Expr }
  | { op: 'delete'; table: string; where?: Expr };

interface Table { schema: TableSchema; rows: Map<string, Row> }

const key = (v: Value) => (typeof v === 'number' ? `n${v}` : `s${v}`);

export class Shard {
  private tables = new Map<string, Table>();
  private wal?: number;
  private walRecords = 0;
  private chain: Promise<unknown> = Promise.resolve();

  /** dir: where the log and snapshots live (none: memory only, for tests). */
  constructor(private readonly dir?: string, private readonly snapshotEvery = 2_000) {
    if (!dir) return;
    fs.mkdirSync(dir, { recursive: true });
    const snap = path.join(dir, 'snapshot.json');
    if (fs.existsSync(snap)) {
      for (const t of JSON.parse(fs.readFileSync(snap, 'utf8')) as { schema: TableSchema; rows: Row[] }[]) {
        this.tables.set(t.schema.name, { schema: t.schema, rows: new Map(t.rows.map((r) => [key(r[t.schema.primaryKey]), r])) });
      }
    }
    const log = path.join(dir, 'wal.log');
    if (fs.existsSync(log)) {
      const lines = fs.readFileSync(log, 'utf8').split('\n');
      for (const line of lines) {
        if (!line) continue;
        let op: ShardOp;
        try {
          op = JSON.parse(line);
        } catch {
          break; // a torn last write: it was never acknowledged
        }
        this.apply(op);
        this.walRecords++;
      }
    }
    this.wal = fs.openSync(log, 'a');
  }

  get recovered(): { tables: number; rows: number } {
    let rows = 0;
    for (const t of this.tables.values()) rows += t.rows.size;
    return { tables: this.tables.size, rows };
  }

  /** Checks, logs (fsync), applies: statements run one at a time, in log order. */
  run(op: ShardOp): Promise<number> {
    const next = this.chain.then(() => {
      const n = this.check(op);
      if (this.wal !== undefined) {
        fs.writeSync(this.wal, JSON.stringify(op) + '\n');
        fs.fsyncSync(this.wal);
        this.walRecords++;
      }
      this.apply(op);
      if (this.walRecords >= this.snapshotEvery) this.snapshot();
      return n;
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  private table(name: string): Table {
    const t = this.tables.get(name);
    if (!t) throw new SqlError(`no such table: ${name}`);
    return t;
  }

  /** Everything that could fail, before anything is logged. Returns the rows it would change. */
  private check(op: ShardOp): number {
    switch (op.op) {
      case 'create': if (this.tables.has(op.schema.name)) throw new SqlError(`table ${op.schema.name} already exists`); return 0;
      case 'drop': this.table(op.table); return 0;
      case 'insert': {
        const t = this.table(op.table);
        const seen = new Set<string>();
        for (const r of op.rows) {
          const k = key(r[t.schema.primaryKey]);
          if (t.rows.has(k) || seen.has(k)) throw new SqlError(`UNIQUE constraint failed: ${op.table}.${t.schema.primaryKey} (${r[t.schema.primaryKey]})`);
          seen.add(k);
        }
        return op.rows.length;
      }
      case 'update': {
        const t = this.table(op.table);
        let n = 0;
        for (const r of t.rows.values()) {
          if (!matches(op.where, r)) continue;
          n++;
          for (const s of op.set) coerce(evalExpr(s.expr, r), t.schema.columns.find((c) => c.name === s.column)!, false);
        }
        return n;
      }
      case 'delete': {
        const t = this.table(op.table);
        let n = 0;
        for (const r of t.rows.values()) if (matches(op.where, r)) n++;
        return n;
      }
    }
  }

  private apply(op: ShardOp): void {
    switch (op.op) {
      case 'create': this.tables.set(op.schema.name, { schema: op.schema, rows: new Map() }); break;
      case 'drop': this.tables.delete(op.table); break;
      case 'insert': { const t = this.tables.get(op.table)!; for (const r of op.rows) t.rows.set(key(r[t.schema.primaryKey]), r); break; }
      case 'update': {
        const t = this.tables.get(op.table)!;
        for (const r of t.rows.values()) {
          if (!matches(op.where, r)) continue;
          const vals = op.set.map((s) => evalExpr(s.expr, r));
          op.set.forEach((s, i) => (r[s.column] = vals[i]));
        }
        break;
      }
      case 'delete': { const t = this.tables.get(op.table)!; for (const [k, r] of t.rows) if (matches(op.where, r)) t.rows.delete(k); break; }
    }
  }

  /** The rows of a table that match a (pushed-down) filter, or the one row of a key. */
  scan(table: string, where?: Expr, pk?: Value): Row[] {
    const t = this.table(table);
    if (pk !== undefined) {
      const r = t.rows.get(key(pk));
      return r && matches(where, r) ? [r] : [];
    }
    const out: Row[] = [];
    for (const r of t.rows.values()) if (matches(where, r)) out.push(r);
    return out;
  }

  count(table: string): number {
    return this.table(table).rows.size;
  }

  /** Writes a snapshot (fsync, atomic rename) and starts a new log. */
  private snapshot(): void {
    if (!this.dir || this.wal === undefined) return;
    const tmp = path.join(this.dir, 'snapshot.json.tmp');
    const fd = fs.openSync(tmp, 'w');
    fs.writeSync(fd, JSON.stringify([...this.tables.values()].map((t) => ({ schema: t.schema, rows: [...t.rows.values()] }))));
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, path.join(this.dir, 'snapshot.json'));
    const dfd = fs.openSync(this.dir, 'r');
    fs.fsyncSync(dfd);
    fs.closeSync(dfd);
    fs.closeSync(this.wal);
    this.wal = fs.openSync(path.join(this.dir, 'wal.log'), 'w');
    fs.fsyncSync(this.wal);
    this.walRecords = 0;
  }

  close(): void {
    if (this.wal !== undefined) fs.closeSync(this.wal);
    this.wal = undefined;
  }
}
