// The component database's parser, planner and executors against known answers, and a
// differential test: the same random statements against this database (2 and 4 shards, both
// executors) and against SQLite (better-sqlite3), results compared.
import { expect } from 'chai';
import Database from 'better-sqlite3';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parse, SqlError } from '../../examples/db/sql';
import { explainAsRun, LocalDb } from '../../examples/db/db';
import { Shard } from '../../examples/db/shard';

async function errorOf(p: Promise<unknown> | (() => unknown)): Promise<SqlError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).to.be.instanceOf(SqlError);
    return e as SqlError;
  }
  throw new Error('expected an SqlError');
}

describe('db: parser', () => {
  it('parses the subset', () => {
    const st = parse("SELECT g, COUNT(*) AS n, AVG(x) FROM t WHERE x >= 2 AND name IS NOT NULL GROUP BY g ORDER BY n DESC, g LIMIT 5");
    expect(st.type).to.equal('select');
    if (st.type !== 'select') return;
    expect(st.items.map((i) => i.alias)).to.deep.equal([undefined, 'n', undefined]);
    expect(st.groupBy).to.deep.equal(['g']);
    expect(st.orderBy.map((o) => o.desc)).to.deep.equal([true, false]);
    expect(st.limit).to.equal(5);
    expect(parse("INSERT INTO t (id, name) VALUES (1, 'it''s'), (2, NULL)").type).to.equal('insert');
    expect(parse('UPDATE t SET x = x + 1 WHERE id = 3;').type).to.equal('update');
    expect(parse('create table t (id integer primary key, v real, s text)').type).to.equal('create');
  });

  it('points at the token: line, column, what was expected and what was found', async () => {
    const e = await errorOf(() => parse('SELECT *\nFORM people'));
    expect(e.message).to.equal('syntax error at line 2, column 1: expected FROM, found form');
    expect([e.line, e.column]).to.deep.equal([2, 1]);
    expect((await errorOf(() => parse('SELECT * FROM t WHERE'))).message).to.equal('syntax error at line 1, column 22: expected an expression, found end of input');
    expect((await errorOf(() => parse('INSERT INTO t VALUES (1, 2'))).message).to.match(/column 27: expected "\)", found end of input/);
    expect((await errorOf(() => parse("SELECT 'abc FROM t"))).message).to.match(/unterminated string starting at line 1, column 8/);
    expect((await errorOf(() => parse('CREATE TABLE t (id INTEGER)'))).message).to.match(/needs a PRIMARY KEY/);
  });
});

describe('db: planner and executors', () => {
  let db: LocalDb;
  beforeEach(async () => {
    db = new LocalDb(4);
    await db.exec('CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, city TEXT)');
    const rows = Array.from({ length: 100 }, (_, i) => `(${i}, 'p${i}', ${20 + (i % 30)}, '${['oslo', 'rome', 'lima'][i % 3]}')`);
    await db.exec(`INSERT INTO people VALUES ${rows.join(', ')}`);
  });

  it('plans a point lookup on one shard with the row executor, a scan or aggregate on all shards with the vector one', () => {
    const point = db.plan('SELECT name FROM people WHERE id = 42');
    expect(point.kind).to.equal('point');
    expect(point.shards).to.have.length(1);
    expect(point.executor).to.equal('row');
    const agg = db.plan('SELECT city, AVG(age) FROM people GROUP BY city');
    expect(agg.kind).to.equal('aggregate');
    expect(agg.shards).to.deep.equal([0, 1, 2, 3]);
    expect(agg.executor).to.equal('vector');
    expect(agg.explain.join('\n')).to.match(/SCAN people ON 4 SHARD\(S\)\nAGGREGATE AVG\(age\) GROUP BY city\nEXECUTOR vector/);
  });

  it("tells in the EXPLAIN when the executor that ran is not the one the planner preferred", () => {
    const explain = ['SCAN sales ON 2 SHARD(S)', 'EXECUTOR vector (estimated 5000 row(s))'];
    expect(explainAsRun(explain, 'vector', 'vector')).to.equal(explain);
    expect(explainAsRun(explain, 'vector', 'row')).to.deep.equal([...explain, 'RAN ON executor-row: no executor-vector instance was on the route']);
    expect(explainAsRun(undefined, 'vector', 'row')).to.equal(undefined);
  });

  it('answers known queries the same with both executors', async () => {
    for (const ex of ['row', 'vector'] as const) {
      expect((await db.exec('SELECT name, age FROM people WHERE id = 7', ex)).rows).to.deep.equal([['p7', 27]]);
      expect((await db.exec('SELECT COUNT(*), MIN(age), MAX(age), SUM(age) FROM people', ex)).rows).to.deep.equal([[100, 20, 49, 3350]]);
      expect((await db.exec('SELECT city, COUNT(*) AS n FROM people GROUP BY city ORDER BY city', ex)).rows).to.deep.equal([['lima', 33], ['oslo', 34], ['rome', 33]]);
      expect((await db.exec('SELECT city, COUNT(*) AS n FROM people GROUP BY city ORDER BY n DESC, city LIMIT 2', ex)).rows).to.deep.equal([['oslo', 34], ['lima', 33]]);
      expect((await db.exec('SELECT id FROM people WHERE age > 47 ORDER BY id DESC LIMIT 3', ex)).rows).to.deep.equal([[89], [88], [59]]);
      expect((await db.exec('SELECT AVG(age) FROM people WHERE id < 0', ex)).rows).to.deep.equal([[null]]);
    }
    expect((await db.exec("UPDATE people SET city = 'bern' WHERE age = 20")).changed).to.equal(4);
    expect((await db.exec("DELETE FROM people WHERE city = 'bern'")).changed).to.equal(4);
    expect((await db.exec('SELECT COUNT(*) FROM people')).rows).to.deep.equal([[96]]);
  });

  it('names the column of a type mismatch, the missing table, the duplicate key', async () => {
    expect((await errorOf(db.exec("INSERT INTO people VALUES (500, 'x', 'old', 'oslo')"))).message).to.equal("type mismatch: column age is INTEGER, got 'old'");
    expect((await errorOf(db.exec("SELECT * FROM people WHERE name = 5"))).message).to.equal('type mismatch: column name is TEXT, compared with 5');
    expect((await errorOf(db.exec('SELECT * FROM nobody'))).message).to.equal('no such table: nobody');
    expect((await errorOf(db.exec('SELECT shoe FROM people'))).message).to.match(/^no such column: shoe/);
    expect((await errorOf(db.exec("INSERT INTO people VALUES (1, 'dup', 30, 'oslo')"))).message).to.match(/UNIQUE constraint failed: people.id/);
    expect((await errorOf(db.exec('SELECT name, COUNT(*) FROM people'))).message).to.match(/name must appear in GROUP BY/);
    // Nothing of a refused statement is applied.
    expect((await db.exec('SELECT COUNT(*) FROM people')).rows).to.deep.equal([[100]]);
  });
});

describe('db: a shard keeps what it acknowledged', () => {
  it('replays its snapshot and log after a restart', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-shard-'));
    try {
      let s = new Shard(dir, 5);
      await s.run({ op: 'create', schema: { name: 't', columns: [{ name: 'id', type: 'INTEGER' }, { name: 'v', type: 'TEXT' }], primaryKey: 'id' } });
      for (let i = 0; i < 12; i++) await s.run({ op: 'insert', table: 't', rows: [{ id: i, v: `v${i}` }] });
      await s.run({ op: 'delete', table: 't', where: { k: 'bin', op: '<', l: { k: 'col', name: 'id' }, r: { k: 'lit', v: 2 } } });
      s.close();
      // A torn last line (a write that was never acknowledged) is ignored.
      fs.appendFileSync(path.join(dir, 'wal.log'), '{"op":"insert","table":"t","ro');
      s = new Shard(dir, 5);
      expect(s.count('t')).to.equal(10);
      expect(s.scan('t', undefined, 11)).to.deep.equal([{ id: 11, v: 'v11' }]);
      s.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('db: differential test against SQLite', function () {
  this.timeout(60_000);
  // A seeded generator: the same statements every run.
  let seed = 20261126;
  const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)];
  const int = (a: number, b: number) => a + Math.floor(rnd() * (b - a + 1));
  const CITIES = ['oslo', 'rome', 'lima', 'kyiv', 'nuuk'];

  const predicate = (): string => {
    const one = () => pick([
      () => `a ${pick(['=', '!=', '<', '<=', '>', '>='])} ${int(0, 50)}`,
      () => `b ${pick(['<', '>'])} ${(rnd() * 100).toFixed(2)}`,
      () => `c = '${pick(CITIES)}'`,
      () => `c IS ${pick(['', 'NOT '])}NULL`,
      () => `id % ${int(2, 5)} = ${int(0, 1)}`,
      () => `a + id > ${int(10, 200)}`,
    ])();
    return rnd() < 0.3 ? `(${one()} ${pick(['AND', 'OR'])} ${one()})` : rnd() < 0.1 ? `NOT ${one()}` : one();
  };
  const statement = (nextId: (dupOk: boolean) => number): string => {
    const r = rnd();
    if (r < 0.15) {
      // A duplicate key only in a one-row INSERT: statements are atomic per shard, not across
      // shards (documented), so a multi-row INSERT failing on one shard would diverge by design.
      const n = int(1, 5);
      const rows = Array.from({ length: n }, () => `(${nextId(n === 1)}, ${rnd() < 0.1 ? 'NULL' : int(0, 50)}, ${rnd() < 0.1 ? 'NULL' : (rnd() * 100).toFixed(2)}, ${rnd() < 0.1 ? 'NULL' : `'${pick(CITIES)}'`})`);
      return `INSERT INTO t (id, a, b, c) VALUES ${rows.join(', ')}`;
    }
    if (r < 0.22) return `UPDATE t SET a = ${pick(['a + 1', String(int(0, 50)), 'NULL'])} WHERE ${predicate()}`;
    if (r < 0.27) return `DELETE FROM t WHERE ${predicate()}`;
    const where = rnd() < 0.7 ? ` WHERE ${predicate()}` : '';
    if (r < 0.55) {
      const cols = pick(['id, a, b, c', 'id, a * 2 AS x, c', 'id, b, a - id']);
      const order = rnd() < 0.5 ? ` ORDER BY ${pick(['a', 'b DESC', 'c', 'id DESC'])}, id` : ' ORDER BY id';
      const limit = rnd() < 0.4 ? ` LIMIT ${int(0, 20)}` : '';
      return `SELECT ${cols} FROM t${where}${order}${limit}`;
    }
    if (r < 0.8) {
      const g = pick(['c', 'a % 3', '']);
      if (g === 'a % 3' || g === '') {
        return `SELECT ${pick(['COUNT(*)', 'COUNT(a)', 'SUM(a)', 'MIN(b)', 'MAX(c)', 'AVG(a)'])}, ${pick(['COUNT(*)', 'SUM(b)', 'MAX(a)', 'MIN(c)'])} FROM t${where}`;
      }
      return `SELECT c, COUNT(*) AS n, ${pick(['SUM(a)', 'MIN(a)', 'MAX(b)', 'COUNT(b)'])} FROM t${where} GROUP BY c ORDER BY c`;
    }
    return `SELECT id FROM t WHERE id = ${int(0, 400)}`;
  };
  const round = (v: unknown) => (typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 1e6) / 1e6 : v);

  for (const shards of [2, 4]) {
    it(`600 random statements give SQLite's answers (${shards} shards, both executors, shard-side partial aggregates)`, async () => {
      seed = 20261126 + shards;
      const lite = new Database(':memory:');
      const db = new LocalDb(shards, undefined, false);
      const create = 'CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b REAL, c TEXT)';
      lite.exec(create);
      await db.exec(create);
      let id = 0;
      const nextId = (dupOk: boolean) => (dupOk && rnd() < 0.2 && id > 0 ? int(0, id - 1) : id++);
      let compared = 0;
      for (let i = 0; i < 600; i++) {
        const sql = statement(nextId);
        let expected: unknown[][] | string;
        try {
          if (sql.startsWith('SELECT')) expected = (lite.prepare(sql).raw(true).all() as unknown[][]).map((r) => r.map(round));
          else expected = [[lite.prepare(sql).run().changes]];
        } catch (e) {
          expected = `error: ${(e as Error).message}`;
        }
        // SELECTs three ways: the row and the vector executor over the shards' rows, and the
        // shards' partial aggregates merged (what the deployed storage components do).
        for (const ex of sql.startsWith('SELECT') ? (['row', 'vector', 'partial'] as const) : ([undefined] as const)) {
          let got: unknown[][] | string;
          try {
            db.partials = ex === 'partial';
            const r = await db.exec(sql, ex === 'partial' ? undefined : ex);
            got = sql.startsWith('SELECT') ? r.rows.map((row) => row.map(round)) : [[r.changed]];
          } catch (e) {
            got = `error: ${(e as Error).message}`;
          }
          if (typeof expected === 'string') {
            expect(got, `${sql}: SQLite says ${expected}`).to.be.a('string');
          } else {
            expect(got, `${sql} (${ex ?? 'write'})`).to.deep.equal(expected);
          }
          compared++;
        }
      }
      expect(compared).to.be.greaterThan(1_000);
      lite.close();
    });
  }
});
