// What restarts an instance and what does not: a change of the update strategy or of a tunable's
// range is a new version that replaces nothing (as a Deployment's strategy, or Nomad's update
// block); instances an older coordinator created (their records carrying its hash) are current
// for a coordinator of this version, and stay so through such a change. Real etcd, a coordinator
// restarted on the same address, an agent and busybox containers.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';
import type { AdminClient } from '../../common/admin-client';
import { createEtcdClient } from '../../common/etcd';
import { olderComponentHashes, type InstanceRecord, type VersionRecord } from '../../coordinator/apps/records';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { oneNodeCluster, type OneNodeCluster } from '../helpers/suite';

describe('instance hashes: what rolls an app', function () {
  this.timeout(120_000);
  let etcd: OneNodeCluster['etcd'];
  let admin: AdminClient;
  let c1: OneNodeCluster['coordinator'];
  const comp = (over: Record<string, unknown> = {}) => ({
    name: 'worker', image: 'tessera/busybox:local', command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 2, stopGraceMs: 100,
    env: { WORKERS: '4' }, tunables: [{ env: 'WORKERS', min: 1, max: 8 }], update: { maxParallel: 1, minHealthyMs: 200 }, ...over,
  });
  const running = async () => (await admin.listInstances('steady')).instances.filter((i) => i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING').map((i) => i.id).sort();
  /** The app at its latest version, running on every instance, and which instances those are. */
  async function settled(version: number): Promise<string[]> {
    await waitFor(`version ${version} running`, async () => { const a = await admin.getApp('steady'); return Number(a.version) === version && a.status === 'running'; }, 30_000, 200);
    return running();
  }

  const k = oneNodeCluster({ prefix: 'h', portRange: '30620-30639' });
  before(() => ({ admin, coordinator: c1, etcd } = k));

  it('replaces nothing when only the update strategy or a tunable\'s range changes, and rolls the app when what runs changes', async () => {
    await admin.applyApp({ name: 'steady', components: [comp()] });
    await waitFor('2 running', async () => (await running()).length === 2, 30_000, 200);
    const first = await settled(1);
    const v2 = await admin.applyApp({ name: 'steady', components: [comp({ update: { maxParallel: 2, minHealthyMs: 0, autoRevert: true, order: 'stop-first' }, tunables: [{ env: 'WORKERS', min: 2, max: 16 }] })] });
    expect(Number(v2.app?.version)).to.equal(2);
    // Its plan (nomad job plan) said so: in place, field by field against version 1.
    expect(v2.plan.map((p) => [p.component, p.action, p.instancesFrom, p.instancesTo])).to.deep.equal([['worker', 'PLAN_ACTION_IN_PLACE', 2, 2]]);
    expect(v2.plan[0].changes).to.deep.include.members([
      { field: 'update.maxParallel', from: '1', to: '2' },
      { field: 'update.order', from: '', to: '"stop-first"' },
      { field: 'tunables[WORKERS].max', from: '8', to: '16' },
    ]);
    expect(await settled(2)).to.deep.equal(first);
    // A reconcile or two later, still the same instances, and none was asked to stop.
    await new Promise((r) => setTimeout(r, 1_500));
    expect(await running()).to.deep.equal(first);
    expect((await pastEvents(admin, ['instance.'])).filter((e) => /stop|replac/.test(e.kind ?? ''))).to.deep.equal([]);
    // What the instances run (their env) is a rollout, by the strategy just set: so says a dry
    // run first (the CLI's lines too), which stores nothing.
    const v3spec = { name: 'steady', components: [comp({ env: { WORKERS: '5' }, update: { maxParallel: 2, minHealthyMs: 0 } })] };
    const dry = await admin.applyApp(v3spec, true);
    expect(dry.plan.map((p) => [p.component, p.action])).to.deep.equal([['worker', 'PLAN_ACTION_REPLACE']]);
    expect(dry.plan[0].changes).to.deep.include({ field: 'env.WORKERS', from: '"4"', to: '"5"' });
    expect(Number((await admin.getApp('steady')).version)).to.equal(2);
    const file = path.join(os.tmpdir(), `tessera-steady-${process.pid}.json`);
    fs.writeFileSync(file, JSON.stringify(v3spec));
    try {
      const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', c1.address, ...args], { encoding: 'utf8' });
      const dryCli = cli('apply', '-f', file, '--dry-run', '--detailed-exitcode');
      // Something would change: 2 (terraform plan -detailed-exitcode), with the plan printed.
      expect(dryCli.status, dryCli.stderr).to.equal(2);
      expect(dryCli.stdout).to.contain('against version 2:');
      expect(dryCli.stdout).to.contain('~ worker: its instances are replaced by its update strategy');
      expect(dryCli.stdout).to.match(/\n {4}env\.WORKERS +"4" => "5"\n/);
      // Version 2's own spec: nothing would change, 0; the option alone is a usage error.
      fs.writeFileSync(file, JSON.stringify({ name: 'steady', components: [comp({ update: { maxParallel: 2, minHealthyMs: 0, autoRevert: true, order: 'stop-first' }, tunables: [{ env: 'WORKERS', min: 2, max: 16 }] })] }));
      const same = cli('apply', '-f', file, '--dry-run', '--detailed-exitcode');
      expect(same.status, same.stderr).to.equal(0);
      expect(same.stdout).to.contain('no change against version 2');
      const alone = cli('apply', '-f', file, '--detailed-exitcode');
      expect(alone.status).to.equal(1);
      expect(alone.stderr).to.contain('--detailed-exitcode goes with --dry-run');
    } finally {
      fs.rmSync(file, { force: true });
    }
    await admin.applyApp(v3spec);
    const third = await waitFor('both replaced', async () => { const r = await running(); return r.length === 2 && r.every((id) => !first.includes(id)) ? r : undefined; }, 30_000, 200);
    expect(await settled(3)).to.deep.equal(third);
    // A rollback's plan (PlanRollback, kubectl rollout undo --dry-run=server): back to version 2's
    // spec would replace them again; nothing is stored, the CLI exits 2 with the lines.
    const back = await admin.planRollback('steady');
    expect(Number(back.version)).to.equal(3);
    expect(back.statusReason).to.equal('dry run: a rollback would make version 4 with the spec of version 2');
    expect(back.plan.map((p) => [p.component, p.action])).to.deep.equal([['worker', 'PLAN_ACTION_REPLACE']]);
    expect(back.plan[0].changes).to.deep.include({ field: 'env.WORKERS', from: '"5"', to: '"4"' });
    const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', c1.address, ...args], { encoding: 'utf8' });
    const dryBack = cli('rollback', 'steady', '--to', '2', '--dry-run', '--detailed-exitcode');
    expect(dryBack.status, dryBack.stderr).to.equal(2);
    expect(dryBack.stdout).to.match(/^dry run: a rollback would make version 4 with the spec of version 2 \(app steady is at version 3\):\n~ worker: its instances are replaced by its update strategy\n/);
    expect(dryBack.stdout).to.match(/\n {4}env\.WORKERS +"5" => "4"\n/);
    expect(cli('rollback', 'steady', '--to', '9', '--dry-run').stderr).to.match(/version: version 9 of "steady" is not kept \(kept: 1, 2, 3\)/);
    expect(cli('rollback', 'steady', '--dry-run', '--wait', '5').stderr).to.contain('--wait does not go with --dry-run');
    expect(Number((await admin.getApp('steady')).version)).to.equal(3);
    expect((await admin.appHistory('steady')).versions.map((v) => Number(v.version)).sort()).to.deep.equal([1, 2, 3]);
    // Each kept version against the one before it (nomad job history -p), as the plans said.
    const hist = cli('app', 'history', 'steady', '-p');
    expect(hist.status, hist.stderr).to.equal(0);
    expect(hist.stdout).to.match(/\nversion 3 against version 2:\n~ worker: its instances are replaced by its update strategy\n(.*\n)* {4}env\.WORKERS +"4" => "5"\n/);
    expect(hist.stdout).to.match(/\nversion 2 against version 1:\n~ worker: changed in place, no instance restarts\n(.*\n)* {4}update\.maxParallel +1 => 2\n/);
  });

  it('keeps the instances an older coordinator created (its hash in their records), through an upgrade and a strategy change after it', async () => {
    const before = await running();
    // The coordinator stops; its records are rewritten as session 10-16's coordinators wrote
    // them (the "s" hash of the version each instance was created for); this version takes over.
    await c1.kill('SIGTERM');
    const etc = createEtcdClient({ endpoints: etcd.endpoints });
    try {
      const versions = new Map<number, VersionRecord>();
      for (const v of Object.values(await etc.getAll().prefix('/tessera/appversions/steady/').strings())) {
        const r = JSON.parse(v) as VersionRecord;
        versions.set(r.version, r);
      }
      const records = await etc.getAll().prefix('/tessera/instances/steady/').strings();
      let rewritten = 0;
      for (const [k, v] of Object.entries(records)) {
        const i = JSON.parse(v) as InstanceRecord;
        if (i.desired !== 'run') continue;
        const created = versions.get(i.version)!.spec.components[0];
        expect(i.specHash, 'this version\'s hash').to.match(/^u[0-9a-f]{12}$/);
        await etc.put(k).value(JSON.stringify({ ...i, specHash: olderComponentHashes(created, created.instances)[0] }));
        rewritten++;
      }
      expect(rewritten).to.equal(2);
    } finally {
      etc.close();
    }
    c1.start();
    await waitForLeader([c1.address]);
    // The agent attaches to the restarted coordinator and reports its instances (on a loaded
    // machine that took over 2 s once: CI saw none RUNNING yet, not any replaced); then a few
    // reconciles, after which the same two still run.
    await waitFor('the instances reported to the restarted coordinator', async () => (await running()).length === 2, 20_000, 200);
    await new Promise((r) => setTimeout(r, 2_000));
    expect(await running(), 'none replaced by the upgrade').to.deep.equal(before);
    const v4 = await admin.applyApp({ name: 'steady', components: [comp({ env: { WORKERS: '5' }, update: { maxParallel: 1, minHealthyMs: 100 } })] });
    expect(await settled(Number(v4.app?.version))).to.deep.equal(before);
    await new Promise((r) => setTimeout(r, 1_500));
    expect(await running(), 'none replaced by the strategy change').to.deep.equal(before);
    // And what they run changing still rolls them.
    await admin.applyApp({ name: 'steady', components: [comp({ env: { WORKERS: '6' }, update: { maxParallel: 2, minHealthyMs: 0 } })] });
    await waitFor('both replaced', async () => { const r = await running(); return r.length === 2 && r.every((id) => !before.includes(id)); }, 30_000, 200);
  });
});
