// The component database against SQLite: queries per second for point lookups and for an
// aggregate scan over 100,000 rows, with 2 and 4 storage shards, and where a query's time goes
// (routing: Tessera's planning, relays and records; components: the steps themselves).
//
//   Tessera  the examples/db app in containers on one agent (catalog, N shards, 2 parsers,
//            2 planners, 2 row executors, 1 vector executor), statements as jobs over a
//            SubmitJobs stream with wait
//   SQLite   better-sqlite3 in this process, the same rows and the same statements (prepared):
//            the single-process reference
//
//   node dist/scripts/bench/db.js [--rows 100000] [--seconds 8]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import YAML from 'yaml';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { table } from '../../common/table';
import type { Job__Output } from '../../common/generated/tessera/v1/Job';
import { EtcdCluster } from '../../test/helpers/etcd';
import { Fleet } from '../../test/helpers/processes';
import { waitForLeader } from '../../test/helpers/cluster';
import { freePort, waitFor } from '../../test/helpers/ports';
import { removeContainers } from '../../test/helpers/docker';
import { fmt, median, p99, progress } from './stats';

const args = process.argv.slice(2);
const arg = (n: string, d: number) => (args.includes(`--${n}`) ? Number(args[args.indexOf(`--${n}`) + 1]) : d);
const ROWS = arg('rows', 100_000);
const SECONDS = arg('seconds', 8);
const BATCH = 1_000;
const GROUPS = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];
type Spec = { name: string; components: { name: string; env?: Record<string, string>; ports?: { name: string; port?: number }[]; instances: number; resources?: { memoryMib: number } }[] };

const rowSql = (i: number) => `(${i}, '${GROUPS[i % GROUPS.length]}', ${(i * 7919) % 1000}, ${((i * 31) % 10000) / 100})`;
const POINT = (k: number) => `SELECT g, v, w FROM t WHERE id = ${k}`;
const AGG = 'SELECT g, COUNT(*), SUM(v), AVG(w) FROM t GROUP BY g ORDER BY g';

interface Stat { qps: number; p50: number; p99: number; routingMs: number; componentMs: number; n: number }

async function measure(inflight: number, seconds: number, one: () => Promise<Job__Output | undefined>): Promise<Stat> {
  const lat: number[] = [];
  const routing: number[] = [];
  const comp: number[] = [];
  const end = Date.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: inflight }, async () => {
    while (Date.now() < end) {
      const t = performance.now();
      const j = await one();
      lat.push(performance.now() - t);
      if (j) {
        const steps = j.steps.reduce((a, s) => a + Number(s.durationMs), 0);
        comp.push(steps);
        routing.push(Math.max(0, Number(j.durationMs) - steps));
      }
    }
  }));
  const s = (performance.now() - t0) / 1000;
  const avg = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
  return { qps: lat.length / s, p50: median(lat), p99: p99(lat), routingMs: avg(routing), componentMs: avg(comp), n: lat.length };
}

async function main(): Promise<void> {
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  const rows: (string | number)[][] = [];
  const split: (string | number)[][] = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-dbbench-'));
  try {
    const c = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--reconcile-interval-ms', '200'], env: { TESSERA_LOG_LEVEL: 'warn' } });
    await waitForLeader([c.address]);
    fleet.agent({ coordinators: [c.address], nodeId: 'dbbench', extra: ['--port-range', '26000-26999', '--cpu-millis', '64000'], env: { TESSERA_LOG_LEVEL: 'warn' } });
    const admin = new AdminClient([c.address], { timeoutMs: 60_000 });
    await waitFor('node', async () => (await admin.listNodes()).nodes.length === 1, 20_000);
    await admin.applyPipeline(YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/db/pipeline.yaml'), 'utf8')));

    // SQLite, the reference: the same rows, the same statements.
    progress(`SQLite: loading ${ROWS} rows`);
    const lite = new Database(path.join(tmp, 'ref.db'));
    lite.pragma('journal_mode = WAL');
    lite.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, g TEXT, v INTEGER, w REAL)');
    for (let b = 0; b < ROWS; b += BATCH) lite.exec(`INSERT INTO t VALUES ${Array.from({ length: Math.min(BATCH, ROWS - b) }, (_, i) => rowSql(b + i)).join(', ')}`);
    const point = lite.prepare('SELECT g, v, w FROM t WHERE id = ?');
    const agg = lite.prepare(AGG);
    const liteRun = async (fn: () => void) => measure(1, SECONDS, async () => { fn(); return undefined; });
    progress('SQLite: point lookups, aggregate scan');
    const litePoint = await liteRun(() => point.get(Math.floor(Math.random() * ROWS)));
    const liteAgg = await liteRun(() => agg.all());
    const expectedAgg = JSON.stringify(agg.raw(true).all().map((r) => (r as unknown[]).map((x) => (typeof x === 'number' ? Math.round(x * 1e6) / 1e6 : x))));

    for (const shards of [2, 4]) {
      const name = `db${shards}`;
      progress(`Tessera, ${shards} shards: deploying`);
      const spec = YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/db/app.yaml'), 'utf8')) as Spec;
      spec.components.push(YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/db/executor-vector.yaml'), 'utf8'))[0]);
      spec.name = name;
      const catalogPort = await freePort();
      for (const comp of spec.components) {
        comp.env = { ...(comp.env ?? {}), CATALOG_ENDPOINT: `127.0.0.1:${catalogPort}` };
        if (comp.name === 'catalog') comp.ports = [{ name: 'grpc', port: catalogPort }];
        if (comp.name === 'storage') { comp.instances = shards; comp.env.SHARDS = String(shards); comp.resources = { ...comp.resources!, memoryMib: 512 }; }
        if (comp.name.startsWith('executor')) comp.resources = { ...comp.resources!, memoryMib: 512 };
      }
      await admin.applyApp(spec);
      await waitFor('registered', async () => {
        const l = (await admin.listComponents()).instances.filter((i) => i.app === name);
        return l.filter((i) => i.kind === 'storage').length === shards && l.some((i) => i.kind === 'executor-vector') && l.filter((i) => i.kind === 'executor-row').length === 2 ? l : undefined;
      }, 180_000, 500);
      const stream = new AdminClient([c.address]).jobStream();
      const sql = (s: string) => stream.submit({ pipeline: 'sql', payload: Buffer.from(s), wait: true, timeoutMs: 60_000 });
      await waitFor('catalog ready', async () => (await sql('CREATE TABLE t (id INTEGER PRIMARY KEY, g TEXT, v INTEGER, w REAL)')).state === 'JOB_STATE_SUCCEEDED', 60_000, 500);
      progress(`Tessera, ${shards} shards: loading ${ROWS} rows (${ROWS / BATCH} INSERT jobs)`);
      for (let b = 0; b < ROWS; b += BATCH * 4) {
        await Promise.all([0, 1, 2, 3].map(async (k) => {
          const from = b + k * BATCH;
          if (from >= ROWS) return;
          const j = await sql(`INSERT INTO t VALUES ${Array.from({ length: Math.min(BATCH, ROWS - from) }, (_, i) => rowSql(from + i)).join(', ')}`);
          if (j.state !== 'JOB_STATE_SUCCEEDED') throw new Error(`load failed: ${j.reason}`);
        }));
      }
      const check = await sql(AGG);
      const got = JSON.stringify((JSON.parse(check.result.toString()) as { rows: unknown[][] }).rows.map((r) => r.map((x) => (typeof x === 'number' ? Math.round(x * 1e6) / 1e6 : x))));
      if (got !== expectedAgg) throw new Error(`the aggregate differs from SQLite's: ${got} vs ${expectedAgg}`);
      progress(`Tessera, ${shards} shards: point lookups (16 in flight), aggregate scans (2 in flight)`);
      const ok = (j: Job__Output) => { if (j.state !== 'JOB_STATE_SUCCEEDED') throw new Error(j.reason); return j; };
      const tPoint = await measure(16, SECONDS, async () => ok(await sql(POINT(Math.floor(Math.random() * ROWS)))));
      const tAgg = await measure(2, SECONDS, async () => ok(await sql(AGG)));
      rows.push([`${shards}`, 'point lookup', fmt(tPoint.qps), fmt(tPoint.p50, 1), fmt(tPoint.p99, 1), fmt(litePoint.qps), (tPoint.qps / litePoint.qps).toFixed(4)]);
      rows.push([`${shards}`, 'aggregate scan', fmt(tAgg.qps, 2), fmt(tAgg.p50, 0), fmt(tAgg.p99, 0), fmt(liteAgg.qps, 1), (tAgg.qps / liteAgg.qps).toFixed(4)]);
      split.push([`${shards}`, 'point lookup', fmt(tPoint.routingMs, 2), fmt(tPoint.componentMs, 2), `${fmt((100 * tPoint.routingMs) / (tPoint.routingMs + tPoint.componentMs))}%`]);
      split.push([`${shards}`, 'aggregate scan', fmt(tAgg.routingMs, 1), fmt(tAgg.componentMs, 1), `${fmt((100 * tAgg.routingMs) / (tAgg.routingMs + tAgg.componentMs))}%`]);
      stream.close();
      await admin.deleteApp(name);
      await waitFor('deleted', async () => !(await admin.listApps()).apps.some((a) => a.name === name), 120_000, 500);
    }
    lite.close();
    console.log(`\nThe component database against SQLite: ${ROWS} rows, ${SECONDS} s per measure (${os.cpus().length} cores, ${os.cpus()[0]?.model ?? ''})`);
    console.log('Tessera: statements as jobs (parse -> plan -> execute), every one recorded; SQLite: better-sqlite3 in process, prepared statements, 1 at a time');
    console.log(table(['SHARDS', 'QUERY', 'TESSERA QPS', 'P50 MS', 'P99 MS', 'SQLITE QPS', 'RATIO'], rows));
    console.log('\nWhere a Tessera query\'s time goes (mean per job): components = the three steps as the relays timed them, routing = the rest (admission, planning the path, records, relays)');
    console.log(table(['SHARDS', 'QUERY', 'ROUTING MS', 'COMPONENTS MS', 'ROUTING SHARE'], split));
    admin.close();
  } finally {
    await fleet.stop();
    removeContainers('tessera.node=dbbench');
    await etcd.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
