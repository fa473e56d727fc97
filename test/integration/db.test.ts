// The component database deployed by Tessera and queried through jobs: real containers, real
// agents. A storage shard SIGKILLed after acknowledged INSERTs loses nothing; an executor
// SIGKILLed in the middle of a SELECT is retried on another instance with the right rows; adding
// executor-vector changes the paths aggregates take.
import { expect } from 'chai';
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import YAML from 'yaml';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import type { Job__Output } from '../../common/generated/tessera/v1/Job';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { containers, dockerKill, removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';

const RUN = randomBytes(3).toString('hex');
type Spec = { name: string; components: { name: string; kind?: string; env?: Record<string, string>; ports?: { name: string; port?: number }[]; instances: number }[] };

describe('the component database through Tessera', function () {
  this.timeout(240_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let spec: Spec;
  let coordinator = '';
  const node = `d${RUN}`;

  const sql = (statement: string, wait = true) => admin.submitJob({ pipeline: 'sql', payload: Buffer.from(statement), wait, timeoutMs: 30_000 });
  const rows = (j: Job__Output) => {
    expect(j.state, j.reason).to.equal('JOB_STATE_SUCCEEDED');
    return JSON.parse(j.result.toString()) as { columns: string[]; rows: unknown[][]; changed?: number; executor: string };
  };
  const registered = async (kind: string, n: number) => waitFor(`${n} ${kind}`, async () => (await admin.listComponents(kind)).instances.length === n, 90_000, 300);

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const c = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--reconcile-interval-ms', '200'] });
    coordinator = c.address;
    await waitForLeader([c.address]);
    const base = 25_000 + Math.floor(Math.random() * 40) * 100;
    fleet.agent({ coordinators: [c.address], nodeId: node, extra: ['--port-range', laneRange(`${base}-${base + 99}`), '--cpu-millis', '8000'] });
    admin = new AdminClient([c.address], { timeoutMs: 30_000 });
    await waitFor('node', async () => (await admin.listNodes()).nodes.length === 1, 20_000);
    // The example app, with the catalog on a free port (the example's 7600 may be taken here).
    spec = YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/db/app.yaml'), 'utf8')) as Spec;
    const catalogPort = await freePort();
    for (const comp of spec.components) {
      comp.env = { ...(comp.env ?? {}), CATALOG_ENDPOINT: `127.0.0.1:${catalogPort}` };
      if (comp.name === 'catalog') comp.ports = [{ name: 'grpc', port: catalogPort }];
      if (comp.name === 'executor-row') comp.env.DELAY_MS = '0';
    }
    await admin.applyApp(spec);
    await admin.applyPipeline(YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/db/pipeline.yaml'), 'utf8')));
    await registered('storage', 2);
    await registered('executor-row', 2);
    await registered('sql-planner', 2);
  });
  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${node}`);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  it('creates, inserts and queries through parse -> plan -> execute jobs', async () => {
    await waitFor('catalog knows both shards', async () => (await sql('CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER)')).state === 'JOB_STATE_SUCCEEDED', 30_000, 500);
    for (let b = 0; b < 4; b++) {
      const values = Array.from({ length: 50 }, (_, i) => `(${b * 50 + i}, 'p${b * 50 + i}', ${20 + ((b * 50 + i) % 40)})`).join(', ');
      expect(rows(await sql(`INSERT INTO people VALUES ${values}`)).changed).to.equal(50);
    }
    expect(rows(await sql('SELECT COUNT(*), MIN(age), MAX(age) FROM people')).rows).to.deep.equal([[200, 20, 59]]);
    const j = await sql('SELECT name FROM people WHERE id = 123');
    expect(rows(j).rows).to.deep.equal([['p123']]);
    expect(j.path.map((p) => p.stage)).to.deep.equal(['parse', 'plan', 'execute']);
    const bad = await sql('SELECT name FORM people');
    expect(bad.state).to.equal('JOB_STATE_FAILED');
    expect(bad.failedStage).to.equal('parse');
    expect(bad.reason).to.match(/syntax error at line 1, column 18: expected FROM, found people/);
    const mismatch = await sql("INSERT INTO people VALUES (999, 'x', 'old')");
    expect(mismatch.reason).to.match(/type mismatch: column age is INTEGER/);
    expect((await sql('SELECT * FROM nobody')).reason).to.match(/no such table: nobody/);
    // tessera sql prints the rows as a table, and with --explain the plan and the path.
    const cli = (...a: string[]) => spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', coordinator, 'sql', ...a]);
    const ok = cli('--explain', 'SELECT name, age FROM people WHERE id = 5');
    expect(ok.status, ok.stderr.toString()).to.equal(0);
    expect(ok.stdout.toString()).to.match(/NAME\s+AGE\np5\s+25\n\(1 row, \d+ ms\)/);
    expect(ok.stdout.toString()).to.match(/POINT LOOKUP people ON SHARD \d \(id = 5\)/);
    expect(ok.stdout.toString()).to.match(/execute\s+executor-row/);
    // The REPL: statements end with ";" and may span lines.
    const repl = spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', coordinator, 'sql'], { input: 'SELECT COUNT(*) AS n\nFROM people;\nSELECT name FROM people WHERE id = 9;\n' });
    expect(repl.status, repl.stderr.toString()).to.equal(0);
    expect(repl.stdout.toString()).to.match(/N\n200\n/);
    expect(repl.stdout.toString()).to.match(/NAME\np9\n/);
    const err = cli('SELECT * FROM people WHERE name = 5');
    expect(err.status).to.equal(1);
    expect(err.stderr.toString()).to.match(/stage plan: INVALID_ARGUMENT: type mismatch: column name is TEXT, compared with 5/);
  });

  it('a storage shard SIGKILLed after acknowledged INSERTs is restarted with every acknowledged row', async () => {
    for (let i = 0; i < 10; i++) expect(rows(await sql(`INSERT INTO people VALUES (${1000 + i}, 'late${i}', 30)`)).changed).to.equal(1);
    const victim = (await admin.listComponents('storage')).instances[0];
    const ctr = containers(`tessera.instance=${victim.instanceId}`).find((c) => c.state === 'running')!;
    dockerKill(ctr.id);
    await waitFor('the shard back', async () => {
      const c = containers(`tessera.instance=${victim.instanceId}`).find((x) => x.state === 'running');
      return c && c.id === ctr.id && (await admin.listComponents('storage')).instances.length === 2 ? c : undefined;
    }, 60_000, 300).catch(async () => waitFor('the shard back', async () => (await admin.listComponents('storage')).instances.length === 2, 60_000, 300));
    const all = await waitFor('counted', async () => {
      const j = await sql('SELECT COUNT(*) FROM people');
      return j.state === 'JOB_STATE_SUCCEEDED' ? rows(j).rows : undefined;
    }, 30_000, 500);
    expect(all).to.deep.equal([[210]]);
    expect(rows(await sql('SELECT name FROM people WHERE id >= 1000 ORDER BY id')).rows.map((r) => r[0])).to.deep.equal(Array.from({ length: 10 }, (_, i) => `late${i}`));
  });

  it('an executor SIGKILLed in the middle of a SELECT: retried on another instance, the right rows', async () => {
    // Slow executors (1.5 s a statement) so the kill lands while one runs the query.
    const slow = JSON.parse(JSON.stringify(spec)) as Spec;
    slow.components.find((c) => c.name === 'executor-row')!.env!.DELAY_MS = '1500';
    const applied = await admin.applyApp(slow);
    await waitFor('slow executors', async () => {
      const inst = (await admin.listInstances('db')).instances.filter((i) => i.component === 'executor-row' && i.desired === 'run');
      const reg = (await admin.listComponents('executor-row')).instances.map((i) => i.instanceId);
      return inst.length === 2 && inst.every((i) => i.version === applied.app!.version && reg.includes(i.id));
    }, 120_000, 300);
    const job = await sql('SELECT COUNT(*), SUM(age) FROM people WHERE age > 30', false);
    const running = await waitFor('the execute step started', async () => {
      const j = await admin.getJob(job.id);
      const exec = j.path.find((p) => p.stage === 'execute');
      return exec && Date.now() - Number(j.submittedAtMs) > 700 ? exec : undefined;
    }, 10_000, 50);
    const ctr = containers(`tessera.instance=${running.instanceId}`).find((c) => c.state === 'running')!;
    dockerKill(ctr.id);
    const done = await waitFor('the job ended', async () => {
      const j = await admin.getJob(job.id);
      return j.state === 'JOB_STATE_SUCCEEDED' || j.state === 'JOB_STATE_FAILED' ? j : undefined;
    }, 30_000, 200);
    const r = rows(done);
    expect(r.rows).to.deep.equal([[145, 6525]]);
    const failed = done.steps.filter((s) => !s.ok);
    expect(failed.map((s) => [s.stage, s.instanceId])).to.deep.equal([['execute', running.instanceId]]);
    expect(done.steps.filter((s) => s.ok && s.stage === 'execute')[0].instanceId).to.not.equal(running.instanceId);
    // The same query, on a healthy executor, gives the same answer.
    expect(rows(await sql('SELECT COUNT(*), SUM(age) FROM people WHERE age > 30')).rows).to.deep.equal(r.rows);
  });

  it('adding executor-vector while it runs moves aggregates to it; point lookups stay on executor-row', async () => {
    const before = await sql('SELECT age, COUNT(*) FROM people GROUP BY age');
    expect(before.steps.find((s) => s.stage === 'execute' && s.ok)!.kind).to.equal('executor-row');
    const withVector = JSON.parse(JSON.stringify(spec)) as Spec;
    const vec = YAML.parse(fs.readFileSync(path.join(repoRoot(), 'examples/db/executor-vector.yaml'), 'utf8'))[0];
    vec.env = { ...vec.env, CATALOG_ENDPOINT: spec.components[0].env!.CATALOG_ENDPOINT };
    withVector.components.push(vec);
    await admin.applyApp(withVector);
    await registered('executor-vector', 1);
    const after = await sql('SELECT age, COUNT(*) FROM people GROUP BY age');
    expect(after.steps.find((s) => s.stage === 'execute' && s.ok)!.kind).to.equal('executor-vector');
    expect(rows(after).rows.length).to.equal(rows(before).rows.length);
    const point = await sql('SELECT name FROM people WHERE id = 7');
    expect(point.steps.find((s) => s.stage === 'execute' && s.ok)!.kind).to.equal('executor-row');
  });
});
