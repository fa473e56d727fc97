// The SQL subset of the component database: a lexer and a recursive-descent parser from text to
// a syntax tree, with precise errors (line, column, the token expected and the one found).
//
//   CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)     DROP TABLE t
//   INSERT INTO t (id, name) VALUES (1, 'a'), (2, 'b')
//   SELECT * | expr [AS a], COUNT(*), SUM(x), AVG(x), MIN(x), MAX(x) FROM t
//     [WHERE expr] [GROUP BY col, ...] [ORDER BY expr [ASC|DESC], ...] [LIMIT n]
//   UPDATE t SET col = expr, ... [WHERE expr]                          DELETE FROM t [WHERE expr]
//   expr: literals (integers, reals, 'text', NULL), columns, + - * / %, = != <> < <= > >=,
//         AND OR NOT, IS [NOT] NULL, parentheses

export type Value = number | string | null;
export type ColumnType = 'INTEGER' | 'REAL' | 'TEXT';

export type Expr =
  | { k: 'lit'; v: Value }
  | { k: 'col'; name: string }
  | { k: 'bin'; op: string; l: Expr; r: Expr }
  | { k: 'not'; e: Expr }
  | { k: 'neg'; e: Expr }
  | { k: 'isnull'; e: Expr; not: boolean }
  | { k: 'agg'; fn: 'COUNT' | 'SUM' | 'AVG' | 'MIN' | 'MAX'; arg: Expr | '*' };

export interface SelectItem { expr: Expr | '*'; alias?: string }
export interface OrderItem { expr: Expr; desc: boolean }

export type Statement =
  | { type: 'create'; table: string; columns: { name: string; type: ColumnType }[]; primaryKey: string }
  | { type: 'drop'; table: string }
  | { type: 'insert'; table: string; columns: string[]; rows: Expr[][] }
  | { type: 'select'; table: string; items: SelectItem[]; where?: Expr; groupBy: string[]; orderBy: OrderItem[]; limit?: number }
  | { type: 'update'; table: string; set: { column: string; expr: Expr }[]; where?: Expr }
  | { type: 'delete'; table: string; where?: Expr };

export class SqlError extends Error {
  constructor(message: string, readonly line = 0, readonly column = 0) {
    super(message);
  }
}

interface Token { t: 'id' | 'kw' | 'num' | 'str' | 'op' | 'eof'; v: string; line: number; col: number }

const KEYWORDS = new Set([
  'CREATE', 'TABLE', 'DROP', 'INSERT', 'INTO', 'VALUES', 'SELECT', 'FROM', 'WHERE', 'GROUP', 'BY', 'ORDER', 'ASC', 'DESC',
  'LIMIT', 'UPDATE', 'SET', 'DELETE', 'AND', 'OR', 'NOT', 'NULL', 'IS', 'AS', 'PRIMARY', 'KEY', 'INTEGER', 'REAL', 'TEXT',
  'COUNT', 'SUM', 'AVG', 'MIN', 'MAX', 'INT',
]);

function lex(src: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  let line = 1;
  let col = 1;
  const adv = (n: number) => {
    for (let j = 0; j < n; j++) {
      if (src[i] === '\n') { line++; col = 1; } else col++;
      i++;
    }
  };
  while (i < src.length) {
    const c = src[i];
    if (/\s/.test(c)) { adv(1); continue; }
    if (c === '-' && src[i + 1] === '-') { while (i < src.length && src[i] !== '\n') adv(1); continue; }
    const at = { line, col };
    if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(src.slice(i))![0];
      const up = m.toUpperCase();
      out.push(KEYWORDS.has(up) ? { t: 'kw', v: up, ...at } : { t: 'id', v: m.toLowerCase(), ...at });
      adv(m.length);
      continue;
    }
    if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(src[i + 1] ?? ''))) {
      const m = /^(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/.exec(src.slice(i))![0];
      out.push({ t: 'num', v: m, ...at });
      adv(m.length);
      continue;
    }
    if (c === "'") {
      let j = i + 1;
      let s = '';
      for (;;) {
        if (j >= src.length) throw new SqlError(`unterminated string starting at line ${at.line}, column ${at.col}`, at.line, at.col);
        if (src[j] === "'") {
          if (src[j + 1] === "'") { s += "'"; j += 2; continue; }
          break;
        }
        s += src[j++];
      }
      out.push({ t: 'str', v: s, ...at });
      adv(j + 1 - i);
      continue;
    }
    const two = src.slice(i, i + 2);
    if (['<=', '>=', '!=', '<>'].includes(two)) { out.push({ t: 'op', v: two === '<>' ? '!=' : two, ...at }); adv(2); continue; }
    if ('(),*=<>+-/%;.'.includes(c)) { out.push({ t: 'op', v: c, ...at }); adv(1); continue; }
    throw new SqlError(`syntax error at line ${line}, column ${col}: unexpected character ${JSON.stringify(c)}`, line, col);
  }
  out.push({ t: 'eof', v: '', line, col });
  return out;
}

const show = (t: Token) => (t.t === 'eof' ? 'end of input' : t.t === 'str' ? `'${t.v}'` : t.v);

export function parse(src: string): Statement {
  const toks = lex(src);
  let p = 0;
  const peek = () => toks[p];
  const fail = (expected: string): never => {
    const t = peek();
    throw new SqlError(`syntax error at line ${t.line}, column ${t.col}: expected ${expected}, found ${show(t)}`, t.line, t.col);
  };
  const isKw = (v: string) => peek().t === 'kw' && peek().v === v;
  const isOp = (v: string) => peek().t === 'op' && peek().v === v;
  const kw = (v: string) => (isKw(v) ? toks[p++] : fail(v));
  const op = (v: string) => (isOp(v) ? toks[p++] : fail(`"${v}"`));
  const ident = (what: string) => (peek().t === 'id' ? toks[p++].v : fail(what));

  const primary = (): Expr => {
    const t = peek();
    if (t.t === 'num') { p++; return { k: 'lit', v: Number(t.v) }; }
    if (t.t === 'str') { p++; return { k: 'lit', v: t.v }; }
    if (isKw('NULL')) { p++; return { k: 'lit', v: null }; }
    if (t.t === 'kw' && ['COUNT', 'SUM', 'AVG', 'MIN', 'MAX'].includes(t.v)) {
      p++;
      op('(');
      let arg: Expr | '*';
      if (isOp('*')) {
        if (t.v !== 'COUNT') fail('an expression');
        p++;
        arg = '*';
      } else arg = expr();
      op(')');
      return { k: 'agg', fn: t.v as 'COUNT', arg };
    }
    if (t.t === 'id') { p++; return { k: 'col', name: t.v }; }
    if (isOp('(')) { p++; const e = expr(); op(')'); return e; }
    if (isOp('-')) { p++; return { k: 'neg', e: primary() }; }
    return fail('an expression');
  };
  const mul = (): Expr => {
    let l = primary();
    while (isOp('*') || isOp('/') || isOp('%')) { const o = toks[p++].v; l = { k: 'bin', op: o, l, r: primary() }; }
    return l;
  };
  const add = (): Expr => {
    let l = mul();
    while (isOp('+') || isOp('-')) { const o = toks[p++].v; l = { k: 'bin', op: o, l, r: mul() }; }
    return l;
  };
  const cmp = (): Expr => {
    const l = add();
    if (isKw('IS')) {
      p++;
      const not = isKw('NOT') ? (p++, true) : false;
      kw('NULL');
      return { k: 'isnull', e: l, not };
    }
    for (const o of ['=', '!=', '<', '<=', '>', '>=']) if (isOp(o)) { p++; return { k: 'bin', op: o, l, r: add() }; }
    return l;
  };
  const not = (): Expr => (isKw('NOT') ? (p++, { k: 'not', e: not() }) : cmp());
  const and = (): Expr => {
    let l = not();
    while (isKw('AND')) { p++; l = { k: 'bin', op: 'AND', l, r: not() }; }
    return l;
  };
  const expr = (): Expr => {
    let l = and();
    while (isKw('OR')) { p++; l = { k: 'bin', op: 'OR', l, r: and() }; }
    return l;
  };
  const end = () => {
    if (isOp(';')) p++;
    if (peek().t !== 'eof') fail('end of statement');
  };

  let st: Statement;
  if (isKw('CREATE')) {
    p++; kw('TABLE');
    const table = ident('a table name');
    op('(');
    const columns: { name: string; type: ColumnType }[] = [];
    let primaryKey = '';
    do {
      if (columns.length) op(',');
      const name = ident('a column name');
      const t = peek();
      if (!(t.t === 'kw' && ['INTEGER', 'INT', 'REAL', 'TEXT'].includes(t.v))) fail('a column type (INTEGER, REAL or TEXT)');
      p++;
      columns.push({ name, type: t.v === 'INT' ? 'INTEGER' : t.v as ColumnType });
      if (isKw('PRIMARY')) { p++; kw('KEY'); if (primaryKey) throw new SqlError(`table ${table} has two primary keys`); primaryKey = name; }
    } while (isOp(','));
    op(')');
    if (!primaryKey) throw new SqlError(`table ${table} needs a PRIMARY KEY column (rows are partitioned over shards by it)`);
    const seen = new Set<string>();
    for (const c of columns) { if (seen.has(c.name)) throw new SqlError(`column ${c.name} appears twice in table ${table}`); seen.add(c.name); }
    st = { type: 'create', table, columns, primaryKey };
  } else if (isKw('DROP')) {
    p++; kw('TABLE');
    st = { type: 'drop', table: ident('a table name') };
  } else if (isKw('INSERT')) {
    p++; kw('INTO');
    const table = ident('a table name');
    const columns: string[] = [];
    if (isOp('(')) {
      p++;
      do { if (columns.length) op(','); columns.push(ident('a column name')); } while (isOp(','));
      op(')');
    }
    kw('VALUES');
    const rows: Expr[][] = [];
    do {
      if (rows.length) op(',');
      op('(');
      const row: Expr[] = [];
      do { if (row.length) op(','); row.push(expr()); } while (isOp(','));
      op(')');
      rows.push(row);
    } while (isOp(','));
    st = { type: 'insert', table, columns, rows };
  } else if (isKw('SELECT')) {
    p++;
    const items: SelectItem[] = [];
    do {
      if (items.length) op(',');
      if (isOp('*')) { p++; items.push({ expr: '*' }); continue; }
      const e = expr();
      let alias: string | undefined;
      if (isKw('AS')) { p++; alias = ident('an alias'); } else if (peek().t === 'id') alias = toks[p++].v;
      items.push({ expr: e, alias });
    } while (isOp(','));
    kw('FROM');
    const table = ident('a table name');
    let where: Expr | undefined;
    if (isKw('WHERE')) { p++; where = expr(); }
    const groupBy: string[] = [];
    if (isKw('GROUP')) { p++; kw('BY'); do { if (groupBy.length) op(','); groupBy.push(ident('a column name')); } while (isOp(',')); }
    const orderBy: OrderItem[] = [];
    if (isKw('ORDER')) {
      p++; kw('BY');
      do {
        if (orderBy.length) op(',');
        const e = expr();
        let desc = false;
        if (isKw('ASC')) p++; else if (isKw('DESC')) { p++; desc = true; }
        orderBy.push({ expr: e, desc });
      } while (isOp(','));
    }
    let limit: number | undefined;
    if (isKw('LIMIT')) {
      p++;
      const t = peek();
      if (t.t !== 'num' || !/^\d+$/.test(t.v)) fail('a whole number');
      p++;
      limit = Number(t.v);
    }
    st = { type: 'select', table, items, where, groupBy, orderBy, limit };
  } else if (isKw('UPDATE')) {
    p++;
    const table = ident('a table name');
    kw('SET');
    const set: { column: string; expr: Expr }[] = [];
    do { if (set.length) op(','); const column = ident('a column name'); op('='); set.push({ column, expr: expr() }); } while (isOp(','));
    let where: Expr | undefined;
    if (isKw('WHERE')) { p++; where = expr(); }
    st = { type: 'update', table, set, where };
  } else if (isKw('DELETE')) {
    p++; kw('FROM');
    const table = ident('a table name');
    let where: Expr | undefined;
    if (isKw('WHERE')) { p++; where = expr(); }
    st = { type: 'delete', table, where };
  } else {
    return fail('CREATE, DROP, INSERT, SELECT, UPDATE or DELETE');
  }
  end();
  return st;
}

export function hasAggregate(e: Expr | '*'): boolean {
  if (e === '*') return false;
  switch (e.k) {
    case 'agg': return true;
    case 'bin': return hasAggregate(e.l) || hasAggregate(e.r);
    case 'not': case 'neg': case 'isnull': return hasAggregate(e.e);
    default: return false;
  }
}

export function columnsOf(e: Expr | '*', out = new Set<string>()): Set<string> {
  if (e === '*') return out;
  switch (e.k) {
    case 'col': out.add(e.name); break;
    case 'bin': columnsOf(e.l, out); columnsOf(e.r, out); break;
    case 'not': case 'neg': case 'isnull': columnsOf(e.e, out); break;
    case 'agg': if (e.arg !== '*') columnsOf(e.arg, out); break;
    default: break;
  }
  return out;
}

/** Text of an expression, for column headers (like SQLite's). */
export function exprText(e: Expr | '*'): string {
  if (e === '*') return '*';
  switch (e.k) {
    case 'lit': return e.v === null ? 'NULL' : typeof e.v === 'string' ? `'${e.v}'` : String(e.v);
    case 'col': return e.name;
    case 'bin': return `${exprText(e.l)} ${e.op} ${exprText(e.r)}`;
    case 'not': return `NOT ${exprText(e.e)}`;
    case 'neg': return `-${exprText(e.e)}`;
    case 'isnull': return `${exprText(e.e)} IS ${e.not ? 'NOT ' : ''}NULL`;
    case 'agg': return `${e.fn}(${e.arg === '*' ? '*' : exprText(e.arg)})`;
  }
}
