// The database's catalog: table schemas (with a row-count estimate for the planner), the shard
// count and each shard's address. Kept in /data/catalog.json, written atomically with fsync.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { serveComponent } from '../../../common/component';
import { InvalidArgumentError } from '../../../common/errors';
import type { TableSchema } from '../engine';

const dir = process.env.DATA_DIR || '/data';
const file = path.join(dir, 'catalog.json');
fs.mkdirSync(dir, { recursive: true });
const state: { tables: Record<string, TableSchema>; shards: number; shardEndpoints: string[] } =
  fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : { tables: {}, shards: Number(process.env.SHARDS ?? 1), shardEndpoints: [] };

function save(): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  fs.writeSync(fd, JSON.stringify(state));
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

let pendingRows = 0;
void serveComponent({
  kind: 'sql-catalog',
  version: '1.0.0',
  operations: {
    get: async () => JSON.stringify(state),
    create: async (input) => {
      const s = JSON.parse(input.toString('utf8')) as TableSchema;
      if (state.tables[s.name]) throw InvalidArgumentError.field('', `table ${s.name} already exists`);
      state.tables[s.name] = { ...s, rows: 0 };
      save();
      return 'null';
    },
    drop: async (input) => {
      const { table } = JSON.parse(input.toString('utf8')) as { table: string };
      delete state.tables[table];
      save();
      return 'null';
    },
    rows: async (input) => {
      // An estimate for the planner: saved with the next schema change or every 100 updates.
      const { table, delta } = JSON.parse(input.toString('utf8')) as { table: string; delta: number };
      const t = state.tables[table];
      if (t) t.rows = Math.max(0, (t.rows ?? 0) + delta);
      if (++pendingRows >= 100) { pendingRows = 0; save(); }
      return 'null';
    },
    register: async (input) => {
      const r = JSON.parse(input.toString('utf8')) as { shard: number; shards: number; endpoint: string };
      if (r.shards !== state.shards && Object.keys(state.tables).length) throw InvalidArgumentError.field('', `the catalog has ${state.shards} shards with data; a shard says ${r.shards}`);
      state.shards = r.shards;
      state.shardEndpoints[r.shard] = r.endpoint;
      save();
      return 'null';
    },
  },
});
