// Canary deployments (update.canary, as Nomad's canary and `nomad deployment promote`): a new
// version first starts its canaries beside the old instances and replaces nothing until it is
// promoted; a failing canary fails the version (and reverts it) without touching the old ones;
// autoPromote promotes once the canaries are healthy; a scale while they hold keeps holding (and a
// restarted leader too), a rollback drops them. Real etcd, a coordinator, an agent, busybox httpd containers, the CLI.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { pastEvents } from '../helpers/cluster';
import { containers, dockerKill, httpGet } from '../helpers/docker';
import { waitFor } from '../helpers/ports';
import { oneNodeCluster, type OneNodeCluster } from '../helpers/suite';

describe('canary deployments', function () {
  this.timeout(180_000);
  let node: string;
  let admin: AdminClient;
  let address: string;
  let c1: OneNodeCluster['coordinator'];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-canary-'));

  const spec = (marker: string, update: Record<string, unknown> = {}, over: Record<string, unknown> = {}) => ({
    name: 'web',
    components: [{
      name: 'web', image: 'tessera/busybox:local', command: ['sh', '-c'],
      args: [`mkdir -p /tmp/www && echo "${marker} $TESSERA_INSTANCE_ID" > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:$PORT_HTTP -h /tmp/www`],
      ports: [{ name: 'http' }], resources: { cpuMillis: 50, memoryMib: 16 }, instances: 3, stopGraceMs: 300,
      health: { type: 'http', port: 'http', intervalMs: 300, timeoutMs: 200, graceMs: 3000, failureThreshold: 2 },
      restart: { attempts: 1, windowMs: 30_000, delayMs: 300 },
      update: { maxParallel: 1, minHealthyMs: 300, healthyDeadlineMs: 6_000, autoRevert: true, ...update },
      ...over,
    }],
  });
  const cli = (...args: string[]) => promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', address, ...args])
    .then(({ stdout, stderr }) => ({ code: 0, stdout, stderr }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }));
  const applyFile = (s: object, ...flags: string[]) => {
    const f = path.join(dir, `spec-${randomBytes(3).toString('hex')}.json`);
    fs.writeFileSync(f, JSON.stringify(s));
    return cli('apply', '-f', f, ...flags);
  };
  const live = async () => (await admin.listInstances('web')).instances.filter((i) => i.desired === 'run');
  /** What each running instance answers: "<marker> <id>". */
  const answers = async () => Promise.all((await live()).map(async (i) => (await httpGet(i.ports.http))?.trim() ?? `none ${i.id}`));
  const markers = async () => (await answers()).map((a) => a.split(' ')[0]).sort();
  const stableAt = (v: number) => waitFor(`version ${v} running`, async () => { const a = await admin.getApp('web'); return Number(a.stableVersion) === v && a.status === 'running'; }, 60_000, 200);

  // A grace longer than the agent's reconnect backoff (up to 5 s): the leader's restart below must not take the node DOWN.
  const k = oneNodeCluster({ prefix: 'k', portRange: '30700-30719', coordinator: { failoverGraceMs: 15_000, extra: ['--reconcile-interval-ms', '200'] }, agentExtra: ['--cpu-millis', '4000'] });
  before(() => {
    ({ admin, coordinator: c1, node } = k);
    address = c1.address;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  afterEach(async function () {
    if (this.currentTest?.state !== 'failed') return;
    console.log(k.fleet.dump());
    console.log((await pastEvents(admin, ['instance.', 'rollout.']).catch(() => [])).map((e) => `${e.kind} ${e.subject}: ${e.message}`).join('\n'));
  });

  it('starts the canary beside the old instances and replaces nothing until promoted; then rolls the rest', async () => {
    await admin.applyApp(spec('v1'));
    await stableAt(1);
    const v1 = (await live()).map((i) => i.id).sort();
    expect(v1).to.have.length(3);

    const held = await applyFile(spec('v2', { canary: 1 }), '--wait', '60');
    expect(held.code, held.stderr).to.equal(0);
    expect(held.stdout).to.match(/^app web version 2: 1 canary healthy after [0-9.]+ s, 3 old instance\(s\) still serving; promote with: tessera app promote web \(or roll back: tessera rollback web\)\n$/);
    // Rounds later (every 200 ms), still the three old ones and the canary, which serves the new
    // version. (Read until all four answer: on a loaded CI machine a health check of 200 ms can
    // fail twice and the canary is replaced, whose successor answers a moment later; CI run 4 of
    // session 30 read it between the two. The old ones' ids are checked below.)
    await new Promise((r) => setTimeout(r, 1_500));
    await waitFor('the three old ones and the canary answering', async () => JSON.stringify(await markers()) === JSON.stringify(['v1', 'v1', 'v1', 'v2']), 15_000, 250)
      .catch(async (e) => { throw new Error(`${(e as Error).message}: ${JSON.stringify(await markers())}`); });
    const canary = (await live()).find((i) => Number(i.version) === 2)!;
    expect(canary.slot).to.equal(0);
    expect((await live()).filter((i) => Number(i.version) === 1).map((i) => i.id).sort()).to.deep.equal(v1);
    expect((await live()).filter((i) => i.canary).map((i) => i.id)).to.deep.equal([canary.id]);
    expect((await cli('ps', 'web')).stdout).to.match(new RegExp(`^${canary.id} .* canary: waiting for promotion$`, 'm'));
    const a = await admin.getApp('web');
    expect(a.status).to.equal('deploying');
    expect(a.statusReason).to.equal('version 2: 1 canary healthy; waiting for promotion (tessera app promote web)');
    expect(a.canary).to.include({ version: 2, wanted: 1, healthy: 1, promotedAtMs: 0, promotedBy: '' });
    expect((await cli('app', 'get', 'web')).stdout).to.contain('canaries of version 2: 1 of 1 healthy, waiting for promotion');
    expect((await pastEvents(admin, ['rollout.canaries_healthy'])).map((e) => e.message)).to.deep.equal(['version 2 of web: 1 canary healthy, waiting for promotion (tessera app promote web) or a rollback']);

    // An old instance past the canary asked to be replaced while it holds (as one on a draining
    // node): its slot's new instance runs the stable version (1), and the old one stops once that
    // is healthy (before session 31 it got version 2's spec: the unpromoted version in service
    // beyond the canary).
    /** The one instance of `slot` once `gone` has left it: the stable version's (1), not a canary; and all four answer as before. */
    const stableInSlot = async (slot: number, gone: string, what: string) => {
      await waitFor(`slot ${slot} ${what}`, async () => { const l = await live(); return !l.some((i) => i.id === gone) && l.filter((i) => i.slot === slot).length === 1; }, 30_000, 200);
      const x = (await live()).find((i) => i.slot === slot)!;
      expect(Number(x.version), `slot ${slot}`).to.equal(1);
      expect(x.canary).to.equal(false);
      await waitFor(`three of version 1 and the canary answering (slot ${slot} ${what})`, async () => JSON.stringify(await markers()) === JSON.stringify(['v1', 'v1', 'v1', 'v2']), 15_000, 250)
        .catch(async (e) => { throw new Error(`${(e as Error).message}: ${JSON.stringify(await markers())}`); });
      return x;
    };
    const moved = (await live()).find((i) => i.slot === 2)!;
    const rep = await cli('instance', 'replace', moved.id, '--reason', 'host maintenance');
    expect(rep.code, rep.stderr).to.equal(0);
    const heir = await stableInSlot(2, moved.id, 'taken over');
    expect((await pastEvents(admin, ['instance.'])).find((e) => e.subject === moved.id && e.kind === 'instance.replaced')?.message).to.match(/replaced as requested.*host maintenance/);
    expect((await admin.getApp('web')).canary).to.include({ version: 2, promotedAtMs: 0 });

    // An old instance past the canary that fails for good while it holds (killed twice: its one
    // restart in the window spent): its slot is filled again by the stable version (1) as well.
    const failing = (await live()).find((i) => i.slot === 1)!;
    const killRunning = async () => dockerKill((await waitFor(`${failing.id}'s container running`, async () => containers(`tessera.instance=${failing.id}`).find((x) => x.state === 'running'), 15_000, 100)).id);
    await killRunning();
    await waitFor(`${failing.id} restarted`, async () => { const x = (await live()).find((i) => i.id === failing.id); return x?.restarts === 1 && x.state === 'INSTANCE_STATE_RUNNING'; }, 15_000, 100);
    await killRunning();
    await stableInSlot(1, failing.id, 'filled again');
    expect((await admin.getApp('web')).canary).to.include({ version: 2, promotedAtMs: 0 });
    expect((await admin.getApp('web')).status).to.equal('deploying');

    // Refusals: an unknown app, a version that is not the one rolling out.
    const err = (p: Promise<unknown>) => p.then(() => undefined, (e: grpc.ServiceError) => e);
    expect((await err(admin.promoteApp('nope')))?.code).to.equal(grpc.status.NOT_FOUND);
    const wrong = await err(admin.promoteApp('web', 1));
    expect(wrong?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(wrong?.details).to.equal('app web is at version 2, not 1: nothing promoted');
    expect((await err(admin.promoteApp('', 0)))?.details).to.match(/name: is required/);

    const promoted = await cli('app', 'promote', 'web', '--expect-version', '2', '--wait', '60');
    expect(promoted.code, promoted.stderr).to.equal(0);
    expect(promoted.stdout).to.match(/^app web version 2 is running on every instance \(3 healthy\) after [0-9.]+ s\n$/);
    expect((await live()).map((i) => i.id)).to.not.include(heir.id);
    expect(await markers()).to.deep.equal(['v2', 'v2', 'v2']);
    // The canary stays: it is one of the version's instances (no longer a canary).
    expect((await live()).map((i) => i.id)).to.include(canary.id);
    expect((await live()).filter((i) => i.canary)).to.deep.equal([]);
    expect((await cli('app', 'get', 'web')).stdout).to.match(/^canaries of version 2: 1 of 1 healthy, promoted \d+s ago$/m);
    const ev = await pastEvents(admin, ['rollout.promoted']);
    expect(ev.map((e) => e.message)).to.deep.equal(['version 2 of web promoted: its 1 canary is healthy; the other instances are replaced now']);
    const again = await err(admin.promoteApp('web'));
    expect(again?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(again?.details).to.equal('version 2 of web was promoted already');
  });

  it('fails a version whose canary fails and reverts it, never stopping an old instance', async () => {
    const before = (await live()).map((i) => i.id).sort();
    await admin.applyApp(spec('v3', { canary: 1 }, { args: ['exit 3'] }));
    // The revert is version 4, with version 2's spec: the old instances are current again.
    await stableAt(4);
    expect((await live()).map((i) => i.id).sort()).to.deep.equal(before);
    const failedEv = (await pastEvents(admin, ['rollout.failed'])).map((e) => e.message);
    expect(failedEv).to.have.length(1);
    expect(failedEv[0]).to.match(/^version 3 of web failed: instance web-web-\w+ of the new version failed: /);
    const stops = (await pastEvents(admin, ['instance.'])).filter((e) => /replaced|scaled-down|drained/.test(e.kind ?? '') && before.includes(e.subject ?? ''));
    expect(stops).to.deep.equal([]);
  });

  it('promotes by itself with autoPromote; a scale while canaries hold keeps holding, and a rollback drops them', async () => {
    await admin.applyApp(spec('v5', { canary: 1, autoPromote: true }));
    await stableAt(5);
    expect(await markers()).to.deep.equal(['v5', 'v5', 'v5']);
    const auto = (await pastEvents(admin, ['rollout.promoted'])).filter((e) => e.fields?.version === '5');
    expect(auto.map((e) => e.message)).to.deep.equal(['version 5 of web promoted (autoPromote): its 1 canary is healthy; the other instances are replaced now']);

    const five = (await live()).map((i) => i.id).sort();
    await admin.applyApp(spec('v6', { canary: 2 }));
    await waitFor('2 canaries healthy', async () => (await admin.getApp('web')).canary?.healthy === 2, 30_000, 200);
    // Past their healthy deadline (6 s) before the leader is killed below.
    await new Promise((r) => setTimeout(r, 6_000));
    // kubectl-scale-like: a new version (7) that holds as 6 did; the fourth slot is filled with
    // the stable version (5), not the unpromoted one (before session 30 it got version 7's spec,
    // so a scale-up put the canaries' code in service beyond the canaries).
    const scaled = await admin.scaleApp('web', 'web', 4);
    expect(Number(scaled.app?.version)).to.equal(7);
    await waitFor('4 slots', async () => (await live()).length === 6 && (await admin.getApp('web')).canary?.healthy === 2, 30_000, 200);
    const a7 = await admin.getApp('web');
    expect(a7.canary).to.include({ version: 7, wanted: 2, promotedAtMs: 0 });
    expect((await live()).filter((i) => five.includes(i.id))).to.have.length(3);
    const fourth = (await live()).filter((i) => i.slot === 3);
    expect(fourth.map((i) => Number(i.version))).to.deep.equal([5]);
    await waitFor('the fourth slot answering', async () => !!(await httpGet(fourth[0].ports.http)), 20_000, 200);
    expect((await markers()).sort()).to.deep.equal(['v5', 'v5', 'v5', 'v5', 'v6', 'v6']);
    // The hold is in the app record: a leader killed and back (the next leader) keeps it.
    await c1.kill('SIGKILL');
    const back = Date.now();
    c1.start();
    await waitFor('the agent attached again', async () => (await admin.listNodes().catch(() => ({ nodes: [] }))).nodes.some((n) => n.id === node && Number(n.lastSeenMs) > back + 1_000), 30_000, 200);
    // The new leader counts health from the agents' reports again; the canaries, created more than
    // healthyDeadlineMs before it took over, do not fail the version meanwhile.
    await waitFor('canaries healthy again', async () => (await admin.getApp('web')).canary?.healthy === 2, 30_000, 200);
    await new Promise((r) => setTimeout(r, 1_000));
    const after = await admin.getApp('web');
    expect(after.status, after.statusReason).to.equal('deploying');
    expect(after.canary).to.include({ version: 7, wanted: 2, healthy: 2, promotedAtMs: 0 });
    expect((await pastEvents(admin, ['rollout.failed'])).filter((e) => e.fields?.version === '7')).to.deep.equal([]);
    expect((await live()).filter((i) => five.includes(i.id))).to.have.length(3);
    expect(await live()).to.have.length(6);
    // Rolled back to version 5's spec: the canaries and the fourth slot's instance go, the old ones stay.
    const rb = await cli('rollback', 'web', '--to', '5', '--wait', '60');
    expect(rb.code, rb.stderr).to.equal(0);
    // Its plan on stderr, as an apply's: version 5's spec over version 7's.
    expect(rb.stderr).to.match(/^app web: version 8 rolling out \(rollback to version 5 requested\)\n~ web: its instances are replaced by its update strategy \(4 -> 3 instances\)\n/);
    expect((await live()).map((i) => i.id).sort()).to.deep.equal(five);
    expect(await markers()).to.deep.equal(['v5', 'v5', 'v5']);
  });
});
