// Deployments end to end: real etcd, real coordinator and agent processes, the real Docker
// Engine. The Docker CLI is the independent witness of what runs.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from '../../common/version';
import { AdminClient } from '../../common/admin-client';
import type { Instance__Output } from '../../common/generated/tessera/v1/Instance';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { execOutput, pastEvents, waitForLeader, statusOf } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { containers, dockerKill, httpGet, removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';

const RUN = randomBytes(3).toString('hex');

function webSpec(name: string, over: Record<string, unknown> = {}, marker = 'v1') {
  return {
    name,
    components: [{
      name: 'web',
      image: 'tessera/busybox:local',
      command: ['sh', '-c'],
      args: [`mkdir -p /tmp/www && echo "${marker} $TESSERA_INSTANCE_ID" > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:$PORT_HTTP -h /tmp/www`],
      ports: [{ name: 'http' }],
      resources: { cpuMillis: 100, memoryMib: 32 },
      instances: 3,
      health: { type: 'http', port: 'http', intervalMs: 500, timeoutMs: 300, graceMs: 3000, failureThreshold: 2 },
      restart: { attempts: 2, windowMs: 30_000, delayMs: 300 },
      update: { maxParallel: 1, minHealthyMs: 500, healthyDeadlineMs: 8_000, autoRevert: true },
      stopGraceMs: 1000,
      ...over,
    }],
  };
}

describe('deployments on the real Docker Engine', function () {
  this.timeout(180_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let coords: Awaited<ReturnType<Fleet['coordinator']>>[];
  let agents: ReturnType<Fleet['agent']>[];
  let admin: AdminClient;
  const nodeIds = [`d${RUN}a`, `d${RUN}b`];
  const addrs = () => coords.filter((c) => c.running).map((c) => c.address);

  const startAgent = (i: number) => fleet.agent({ coordinators: coords.map((c) => c.address), nodeId: nodeIds[i], extra: ['--port-range', laneRange(`${24000 + i * 1000}-${24000 + i * 1000 + 999}`)] });
  const ps = async (app: string): Promise<Instance__Output[]> => (await admin.listInstances(app)).instances;
  const running = async (app: string, version?: number) => (await ps(app)).filter((i) => i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING' && i.health === 'healthy' && (!version || Number(i.version) === version));
  /** The CLI against the running coordinators: its exit code, stdout and stderr. */
  const cli = (...args: string[]) => promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', addrs().join(','), ...args])
    .then(({ stdout, stderr }) => ({ code: 0, stdout, stderr }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }));
  const appContainers = (app: string) => containers(`tessera.app=${app}`).filter((c) => nodeIds.includes(c.node));
  const waitStable = (app: string, version: number, ms = 40_000, n = 3) => waitFor(`${app} v${version} stable`, async () => {
    const a = await admin.getApp(app);
    // Instances keep the version they were created with: a version with an unchanged component spec (a revert) does not restart them.
    return Number(a.stableVersion) === version && a.status === 'running' && (await running(app)).length === n && (await ps(app)).filter((i) => i.desired === 'run').length === n;
  }, ms, 200).catch(async (err) => {
    const a = await admin.getApp(app).catch(() => undefined);
    console.log('app:', JSON.stringify({ ...a, spec: undefined }), '\ninstances:', JSON.stringify((await ps(app).catch(() => [])).map((i) => [i.id, i.version, i.nodeId, i.state, i.health, i.desired, i.message])));
    throw err;
  });

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    coords = [];
    for (let i = 0; i < 2; i++) coords.push(await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: 3_000, failoverGraceMs: 3_000, extra: ['--reconcile-interval-ms', '200'] }));
    await waitForLeader(addrs());
    agents = [startAgent(0), startAgent(1)];
    admin = new AdminClient(addrs(), { timeoutMs: 8_000 });
    await waitFor('both nodes READY', async () => (await statusOf(coords[0].address))?.nodesByState.READY === 2, 20_000);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });
  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    for (const n of nodeIds) removeContainers(`tessera.node=${n}`);
  });

  it('refuses an invalid spec with every problem by field path, and stores nothing', async () => {
    const bad = webSpec('broken', { resources: { cpuMillis: 100, memoryMib: 0 }, health: { type: 'http', port: 'nope' } });
    const err = await admin.applyApp(bad).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(err.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(err.details).to.contain('components[0].resources.memoryMib: must be > 0');
    expect(err.details).to.contain('components[0].health.port');
    expect((await admin.listApps()).apps.map((a) => a.name)).to.not.include('broken');
    const nf = await admin.getApp('broken').catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(nf.code).to.equal(grpc.status.NOT_FOUND);
  });

  it('deploys 3 instances over 2 agents; Docker runs exactly them, and each answers on its loopback port', async () => {
    const res = await admin.applyApp(webSpec('web'));
    expect(res.changed).to.equal(true);
    expect(res.unplaced).to.have.length(0);
    await waitStable('web', 1);
    const inst = await running('web');
    expect(new Set(inst.map((i) => i.nodeId)).size, 'spread over both nodes').to.equal(2);
    const ctrs = appContainers('web').filter((c) => c.state === 'running');
    expect(ctrs.map((c) => c.instance).sort()).to.deep.equal(inst.map((i) => i.id).sort());
    for (const i of inst) expect(await httpGet(i.ports.http)).to.equal(`v1 ${i.id}\n`);
    // Listed in pages (limit, next_page_token) in the list's order; a page keeps the filter of the first.
    const whole = (await admin.listInstances('web')).instances.map((i) => i.id);
    const first = await admin.listInstances('web', '', { limit: 2 });
    const second = await admin.listInstances('web', '', { limit: 2, pageToken: first.nextPageToken });
    expect([first.instances.length, first.nextPageToken !== '', second.instances.length, second.nextPageToken]).to.deep.equal([2, true, 1, '']);
    expect([...first.instances, ...second.instances].map((i) => i.id)).to.deep.equal(whole);
    expect(await admin.allInstances('web', '', 1).then((l) => l.map((i) => i.id))).to.deep.equal(whole);
    const refusal = (p: Promise<unknown>) => p.then(() => 'answered', (e: grpc.ServiceError) => `${grpc.status[e.code]} ${e.details}`);
    expect(await refusal(admin.listInstances('web', inst[0].nodeId, { limit: 2, pageToken: first.nextPageToken }))).to.match(/^INVALID_ARGUMENT .*pageToken: was given for app "web" and node "", not app "web" and node /);
    expect(await refusal(admin.listInstances('web', '', { limit: 2, pageToken: 'x' }))).to.match(/^INVALID_ARGUMENT .*pageToken: is not a token ListInstances gave/);
    expect(await refusal(admin.listInstances('web', '', { limit: 10_001 }))).to.match(/^INVALID_ARGUMENT .*limit: must be 0\.\.10000/);
    const ps = (await promisify(execFile)(process.execPath, [path.join(repoRoot(), 'dist/coordinator/cli/main.js'), '-c', addrs().join(','), '--json', 'ps', 'web', '--all', '--chunk-size', '1'])).stdout;
    expect((JSON.parse(ps) as { id: string }[]).map((i) => i.id), 'tessera ps --chunk-size 1').to.deep.equal(whole);
    // Applying the same spec again changes nothing.
    const again = await admin.applyApp(webSpec('web'));
    expect(again.changed).to.equal(false);
  });

  it('runs containers with every capability dropped, no privilege escalation, and a read-only root on request', async () => {
    await admin.applyApp({ name: 'hard', components: [{
      name: 'x', image: 'tessera/busybox:local', command: ['sh', '-c'], args: ['(touch /probe && echo writable || echo read-only) > /dev/stderr; exec sleep 3600'],
      resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, readOnlyRoot: true, capabilities: ['NET_BIND_SERVICE'], stopGraceMs: 100,
    }] });
    await waitFor('hard running', async () => appContainers('hard').some((c) => c.state === 'running'), 20_000, 200);
    const id = appContainers('hard')[0].id;
    const info = JSON.parse(execFileSync('docker', ['inspect', id]).toString())[0];
    expect(info.HostConfig.Privileged).to.equal(false);
    expect(info.HostConfig.CapDrop).to.deep.equal(['ALL']);
    expect(info.HostConfig.CapAdd).to.deep.equal(['NET_BIND_SERVICE']);
    expect(info.HostConfig.SecurityOpt).to.include('no-new-privileges');
    expect(info.HostConfig.ReadonlyRootfs).to.equal(true);
    await waitFor('the probe result in the log', () => execFileSync('docker', ['logs', id], { stdio: ['ignore', 'pipe', 'pipe'] }).toString().length >= 0 && /read-only/.test(execFileSync('sh', ['-c', `docker logs ${id} 2>&1`]).toString()), 10_000, 200);
    const bad = await admin.applyApp({ name: 'hard2', components: [{ name: 'x', image: 'i', resources: { cpuMillis: 10, memoryMib: 16 }, capabilities: ['ALL'] }] }).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(bad.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(bad.details).to.match(/^components\[0\]\.capabilities\[0\]: /);
    await admin.deleteApp('hard');
    await waitFor('hard gone', () => appContainers('hard').length === 0, 20_000, 200);
  });

  it('caps CPU with a CFS quota only when the spec asks (cpuHardLimit); otherwise CPU is a weight; each instance\'s CPU and memory read from its cgroup', async () => {
    // The capped one spins: held to a quarter of a core by its quota, which its figures show.
    const sleeper = (name: string, cpuHardLimit: boolean) => ({
      name, image: 'tessera/busybox:local', command: cpuHardLimit ? ['sh', '-c', 'while :; do :; done'] : ['sleep', '3600'], resources: { cpuMillis: 250, memoryMib: 16 }, instances: 1, stopGraceMs: 100, cpuHardLimit,
    });
    await admin.applyApp({ name: 'cpu', components: [sleeper('cpu-capped', true), sleeper('cpu-shared', false)] });
    await waitFor('both running', async () => appContainers('cpu').filter((c) => c.state === 'running').length === 2, 20_000, 200);
    const hostConfig = (component: string) => {
      const c = containers(`tessera.component=${component}`).find((x) => nodeIds.includes(x.node))!;
      return JSON.parse(execFileSync('docker', ['inspect', c.id]).toString())[0].HostConfig;
    };
    expect(hostConfig('cpu-capped').NanoCpus).to.equal(250_000_000); // a quarter of a core, hard
    expect(hostConfig('cpu-shared').NanoCpus).to.equal(0);
    expect(hostConfig('cpu-capped').CpuShares).to.equal(256);
    expect(hostConfig('cpu-shared').CpuShares).to.equal(256);
    const app = await admin.getApp('cpu');
    expect(app.spec!.components!.find((c) => c.name === 'cpu-capped')!.cpuHardLimit).to.equal(true);
    // Figures from the containers' cgroup files (not a Docker stats stream each): the spinner about
    // 25% of a core, the sleeper about none, both with some memory.
    const figures = async (component: string) => (await ps('cpu')).find((i) => i.component === component);
    await waitFor('the spinner at its quota', async () => Math.abs(Number((await figures('cpu-capped'))?.cpuPercent) - 25) <= 5, 15_000, 250);
    expect(Number((await figures('cpu-shared'))!.cpuPercent)).to.be.below(5);
    for (const c of ['cpu-capped', 'cpu-shared']) expect(Number((await figures(c))!.memoryUsedMib), c).to.be.at.least(1);
    const said = agents.map((a) => fs.readFileSync(a.logFile, 'utf8')).join('\n');
    expect(said).to.match(/"source":"cgroup v[12] files".*instance CPU and memory: read from cgroup v[12] files/);
    expect(said).not.to.include('read from the Docker Engine\'s stats stream');
    await admin.deleteApp('cpu');
    await waitFor('cpu gone', () => appContainers('cpu').length === 0, 20_000, 200);
  });

  it('runs a component written for Node.js from the tessera/node image', async () => {
    await admin.applyApp({ name: 'nodeapp', components: [{
      name: 'api', image: 'tessera/node:local', command: ['node', '-e'],
      args: ["require('http').createServer((q, r) => r.end('node ' + process.version + ' ' + process.env.TESSERA_INSTANCE_ID)).listen(+process.env.PORT_HTTP, '127.0.0.1')"],
      ports: [{ name: 'http' }], resources: { cpuMillis: 100, memoryMib: 64 }, instances: 1,
      health: { type: 'tcp', port: 'http', intervalMs: 500, timeoutMs: 300 },
    }] });
    await waitFor('the node component healthy', async () => (await running('nodeapp')).length === 1, 30_000, 200);
    const [i] = await running('nodeapp');
    expect(await httpGet(i.ports.http)).to.equal(`node ${process.version} ${i.id}`);
    await admin.deleteApp('nodeapp');
    await waitFor('nodeapp deleted and its container gone', async () => !(await admin.listApps()).apps.some((a) => a.name === 'nodeapp') && appContainers('nodeapp').length === 0, 20_000, 200);
  });

  it('restarts a killed container', async () => {
    const [victim] = await running('web');
    const ctr = appContainers('web').find((c) => c.instance === victim.id)!;
    dockerKill(ctr.id);
    await waitFor('the instance restarted and healthy', async () => {
      const i = (await ps('web')).find((x) => x.id === victim.id);
      return i && i.restarts >= 1 && i.state === 'INSTANCE_STATE_RUNNING' && i.health === 'healthy';
    }, 20_000, 200);
    expect(await httpGet(victim.ports.http)).to.contain(victim.id);
  });

  it('gives a restarted container its health grace again: one slow to listen survives being killed (its old failures and first start do not count)', async () => {
    // httpd listens 2 s after the process starts; the grace (5 s) covers that, the threshold (2 checks, 0.5 s apart) does not.
    const slow = webSpec('slowstart', { instances: 1, args: ['sleep 2 && mkdir -p /tmp/www && echo "slow $TESSERA_INSTANCE_ID" > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:$PORT_HTTP -h /tmp/www'],
      health: { type: 'http', port: 'http', intervalMs: 500, timeoutMs: 300, graceMs: 5000, failureThreshold: 2 } });
    await admin.applyApp(slow);
    await waitStable('slowstart', 1, 40_000, 1);
    // Past the first start's grace, so that only a grace counted from the restart covers the next start.
    await new Promise((r) => setTimeout(r, 5_500));
    const [victim] = await running('slowstart');
    for (let n = 1; n <= 2; n++) {
      dockerKill(appContainers('slowstart').find((c) => c.instance === victim.id)!.id);
      await waitFor(`restart ${n} healthy`, async () => {
        const i = (await ps('slowstart')).find((x) => x.id === victim.id);
        return i && i.restarts >= n && i.state === 'INSTANCE_STATE_RUNNING' && i.health === 'healthy';
      }, 20_000, 200);
    }
    // The same instance, restarted twice, and no health failure killed it meanwhile.
    const kills = (await pastEvents(admin, ['instance.health_failed', 'instance.failed'])).filter((e) => e.subject === victim.id);
    expect(kills.map((e) => e.message)).to.deep.equal([]);
    await admin.deleteApp('slowstart');
  });

  it('adopts running containers when an agent is SIGKILLed and restarted: none duplicated, none restarted', async () => {
    // The restarted agent's containers: running before and after, the same ones. (The other
    // node's are counted by id only: under a loaded CI host its health checks may restart one,
    // which keeps its id but is not "running" for a moment; seen once.)
    const mine = () => appContainers('web').filter((c) => c.node === nodeIds[0] && c.state === 'running').map((c) => c.id).sort();
    const before = mine();
    const all = appContainers('web').map((c) => c.id).sort();
    expect(before.length, 'containers on the agent to kill').to.be.greaterThan(0);
    await agents[0].kill('SIGKILL');
    agents[0] = startAgent(0);
    await waitFor('the agent back and reporting', async () => (await admin.getNode(nodeIds[0])).connectedTo !== '' && (await running('web')).length === 3, 20_000, 200);
    await new Promise((r) => setTimeout(r, 1_500));
    expect(mine(), 'adopted, none restarted').to.deep.equal(before);
    expect(appContainers('web').map((c) => c.id).sort(), 'none duplicated or replaced').to.deep.equal(all);
  });

  it('shows an instance FAILED with its reason when the image does not exist, and leaves other apps alone', async () => {
    const webBefore = appContainers('web').map((c) => c.id).sort();
    await admin.applyApp({ name: 'ghost', components: [{ name: 'x', image: 'tessera/does-not-exist:1', imagePullPolicy: 'Never', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1 }] });
    await waitFor('ghost FAILED with the reason', async () => (await ps('ghost')).some((i) => i.state === 'INSTANCE_STATE_FAILED' && /image tessera\/does-not-exist:1 is not on this host and its imagePullPolicy is Never/.test(i.message)), 20_000, 200);
    expect(appContainers('web').map((c) => c.id).sort()).to.deep.equal(webBefore);
    await admin.deleteApp('ghost');
    await waitFor('ghost deleted', async () => !(await admin.listApps()).apps.some((a) => a.name === 'ghost'), 20_000, 200);
  });

  it('replaces a crash-looping instance in its own slot after a growing delay, not at once through other slots', async () => {
    await admin.applyApp({ name: 'loop', components: [{
      // Runs (healthy: no check) for 2 s, then exits; restarted once, then FAILED.
      name: 'x', image: 'tessera/busybox:local', command: ['sh', '-c'], args: ['sleep 2; exit 3'],
      resources: { cpuMillis: 10, memoryMib: 16 }, instances: 2, restart: { attempts: 1, windowMs: 30_000, delayMs: 1_000 }, stopGraceMs: 500,
      update: { minHealthyMs: 200 },
    }] });
    // Every instance record seen (tombstones included) and the app's status, for 12 s.
    const seen = new Map<string, Instance__Output>();
    const reasons = new Set<string>();
    const until = Date.now() + 12_000;
    while (Date.now() < until) {
      for (const i of await ps('loop')) seen.set(i.id, i);
      const a = await admin.getApp('loop');
      reasons.add(`${a.status}: ${a.statusReason}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    // The app says which slots wait, as a pod's status says CrashLoopBackOff.
    expect([...reasons].some((r) => /^degraded: .*backing off: x slot [01] after [1-9]\d* failures? \(\d+(\.\d+)? s\)/.test(r)), [...reasons].join(' | ')).to.equal(true);
    const all = [...seen.values()];
    expect(all.filter((i) => i.state === 'INSTANCE_STATE_FAILED').length, 'some failed').to.be.greaterThan(1);
    // Two slots, each waiting 1 s, then 2 s after its failures: a handful of instances,
    // never a third slot (borrowing free slots restarted the loop at once: ~n+2 per delay).
    expect([...new Set(all.map((i) => i.slot))].sort(), JSON.stringify(all.map((i) => [i.id, i.slot, i.state]))).to.deep.equal([0, 1]);
    expect(all.length, JSON.stringify(all.map((i) => [i.id, i.slot, i.state, Number(i.createdAtMs)]))).to.be.at.most(10);
    // A slot's replacement goes to the other node (of two) than the one its instance failed on.
    for (const slot of [0, 1]) {
      const bySlot = all.filter((i) => i.slot === slot).sort((a, b) => Number(a.createdAtMs) - Number(b.createdAtMs));
      expect(bySlot.length, `slot ${slot}`).to.be.at.least(2);
      expect(bySlot[1].nodeId, JSON.stringify(bySlot.map((i) => [i.id, i.nodeId, i.state]))).to.not.equal(bySlot[0].nodeId);
    }
    await admin.deleteApp('loop');
    await waitFor('loop deleted', async () => !(await admin.listApps()).apps.some((a) => a.name === 'loop'), 20_000, 200);
  });

  it('rolls out a good version one at a time, keeping the app answering', async () => {
    let served = 0;
    let missed = 0;
    const ports = new Set((await running('web')).map((i) => i.ports.http));
    // Once version 2 is applied, each wanted instance's version and whether it is outdated (the
    // old spec's, which the rollout replaces), as ListInstances says.
    let applied = false;
    const seen = new Set<string>();
    const probe = setInterval(async () => {
      if (applied) for (const i of await ps('web').catch(() => [])) if (i.desired === 'run') seen.add(`v${i.version} ${i.outdated ? 'outdated' : 'updated'}`);
      const live = (await running('web').catch(() => [])).map((i) => i.ports.http);
      for (const p of live) ports.add(p);
      const answers = await Promise.all(live.map(httpGet));
      if (answers.some(Boolean)) served++;
      else missed++;
    }, 250);
    try {
      await admin.applyApp(webSpec('web', {}, 'v2'));
      applied = true;
      await waitStable('web', 2);
    } finally {
      clearInterval(probe);
    }
    expect([...seen].sort()).to.deep.equal(['v1 outdated', 'v2 updated']);
    expect(missed, `${missed} probes found no healthy instance answering`).to.equal(0);
    expect(served).to.be.greaterThan(0);
    for (const i of await running('web')) expect(await httpGet(i.ports.http)).to.equal(`v2 ${i.id}\n`);
    await waitFor('old containers removed', () => appContainers('web').length === 3, 15_000, 200);
  });

  it('auto-reverts a version whose instances fail, without touching the healthy ones', async () => {
    const healthyBefore = appContainers('web').filter((c) => c.state === 'running').map((c) => c.id).sort();
    const bad = webSpec('web', { args: ['echo "cannot start"; exit 3'] }, 'v3');
    await admin.applyApp(bad);
    await waitFor('version 3 failed and a revert rolled out', async () => {
      const h = (await admin.appHistory('web')).versions;
      return h.find((v) => Number(v.version) === 3)?.status === 'failed' && h.some((v) => Number(v.version) === 4);
    }, 40_000, 200);
    await waitStable('web', 4);
    const h = (await admin.appHistory('web')).versions;
    expect(h.find((v) => Number(v.version) === 3)!.reason).to.match(/exit(ed with)? (code )?3/);
    expect(h.find((v) => Number(v.version) === 4)!.reason).to.match(/auto-revert/);
    await waitFor('only the good containers left', () => appContainers('web').length === 3, 15_000, 200);
    expect(appContainers('web').map((c) => c.id).sort()).to.deep.equal(healthyBefore);
  });

  it('rolls back to a kept version on request', async () => {
    const res = await admin.rollbackApp('web', 1);
    expect(Number(res.version)).to.equal(5);
    await waitStable('web', 5);
    for (const i of await running('web')) expect(await httpGet(i.ports.http)).to.equal(`v1 ${i.id}\n`);
    const err = await admin.rollbackApp('web', 99).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(err.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(err.details).to.match(/^version: version 99 of "web" is not kept/);
  });

  it('restarts an app by rolling out its instances anew with the spec unchanged; applying the same spec after it changes nothing', async () => {
    const before = (await running('web')).map((i) => i.id).sort();
    const from = Number((await admin.getApp('web')).version);
    const res = await admin.restartApp('web');
    expect(Number(res.version)).to.equal(from + 1);
    await waitStable('web', from + 1);
    const after = await running('web');
    expect(after.map((i) => i.id).filter((id) => before.includes(id))).to.deep.equal([]);
    for (const i of after) expect(await httpGet(i.ports.http)).to.equal(`v1 ${i.id}\n`); // same spec: still v1
    const h = await admin.appHistory('web');
    expect(h.versions[0].reason).to.equal('restart of every component requested');
    // The spec an operator applies again (without the restart mark) is the running one.
    const again = await admin.applyApp(webSpec('web', {}, 'v1'));
    expect(again.changed).to.equal(false);
    // `tessera app get --spec`: the running spec alone, as YAML that apply takes back unchanged.
    const shown = await cli('app', 'get', 'web', '--spec');
    expect(shown.code, shown.stderr).to.equal(0);
    expect(shown.stdout).to.match(/^name: web\ncomponents:\n {2}- name: web\n/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-spec-'));
    try {
      fs.writeFileSync(path.join(dir, 'web.yaml'), shown.stdout);
      const planned = await cli('apply', '-f', path.join(dir, 'web.yaml'), '--dry-run', '--detailed-exitcode');
      expect(planned.code, planned.stdout + planned.stderr).to.equal(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const refusals: [string, string, number, RegExp][] = [
      ['nope', '', grpc.status.NOT_FOUND, /nope/],
      ['web', 'db', grpc.status.INVALID_ARGUMENT, /^component: app "web" has no component "db" \(it has web\)/],
    ];
    for (const [name, component, code, text] of refusals) {
      const err = await admin.restartApp(name, component).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
      expect(err.code).to.equal(code);
      expect(err.details).to.match(text);
    }
  });

  it('restarts a component with a volume stop-first: each slot\'s old instance gone before its new one starts, on the node that holds the slot\'s data', async () => {
    // Each instance notes its start and its stop (on SIGTERM) in the slot's volume.
    await admin.applyApp({ name: 'keeper', components: [{
      name: 'keeper', image: 'tessera/busybox:local', command: ['sh', '-c'],
      args: ['echo "start $TESSERA_INSTANCE_ID" >> /data/log; trap \'echo "stop $TESSERA_INSTANCE_ID" >> /data/log; exit 0\' TERM; while true; do sleep 0.1; done'],
      volumes: [{ name: 'data', path: '/data' }], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 2, health: { type: 'none' },
      update: { maxParallel: 1, minHealthyMs: 300, healthyDeadlineMs: 8_000 }, stopGraceMs: 3_000,
    }] });
    await waitStable('keeper', 1, 40_000, 2);
    const before = await running('keeper');
    await admin.restartApp('keeper');
    await waitStable('keeper', 2, 40_000, 2);
    const after = await running('keeper');
    for (const b of before) {
      const a = after.find((x) => x.slot === b.slot)!;
      expect(a.nodeId, `slot ${b.slot} back on the node with its volume`).to.equal(b.nodeId);
      const log = await execOutput(admin, a.id, ['cat', '/data/log']);
      // Start-first would read start old, start new (or only start new, on the other node), stop old.
      expect(log).to.equal(`start ${b.id}\nstop ${b.id}\nstart ${a.id}\n`);
    }
    const stops = (await pastEvents(admin, ['instance.replaced'])).filter((e) => before.some((b) => b.id === e.subject));
    expect(stops.map((e) => e.message)).to.satisfy((m: string[]) => m.length === 2 && m.every((x) => x.endsWith('replaced by version 2 (stop-first: the new one starts once it is gone)')));
    // Its node cordoned, a slot replaced goes elsewhere, with empty volumes: an event says so.
    const home = after[0];
    await admin.cordonNode({ nodeId: home.nodeId, reason: 'volumes test' });
    try {
      await admin.replaceInstance(home.id, 'move it');
      const moved = await waitFor('slot moved', async () => (await running('keeper')).find((x) => x.slot === home.slot && x.nodeId !== home.nodeId), 30_000, 200);
      const asked = (await pastEvents(admin, ['instance.replace_requested'])).find((e) => e.subject === home.id);
      expect(asked?.message).to.match(/; it stops first, then a new one starts on its node \(stop-first\)$/);
      const left = (await pastEvents(admin, ['instance.volumes_left'])).find((e) => e.subject === moved.id);
      expect(left?.message).to.equal(`keeper/keeper[${home.slot}] placed on ${moved.nodeId}, not on ${home.nodeId}, which holds the slot's volumes but cannot take it now: it starts with empty volumes; the data stays on ${home.nodeId}`);
    } finally {
      await admin.cordonNode({ nodeId: home.nodeId, undo: true });
    }
    await admin.deleteApp('keeper');
  });

  it('replaces one instance on request (tessera instance replace): a new one in its slot first, then the old one stopped; the others and the version untouched', async () => {
    const before = await running('web');
    const version = Number((await admin.getApp('web')).version);
    const old = before[0];
    const r = await cli('instance', 'replace', old.id, '--reason', 'wedged worker');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal(`instance ${old.id} (web/web[${old.slot}] on ${old.nodeId}) is being replaced (wedged worker): a new instance takes slot ${old.slot}, before it stops (start-first) or after (stop-first: a component with volumes); follow with tessera ps web\n`);
    // Asked again while it is being replaced: nothing more happens. (The new one takes a second
    // or more to start and pass its health check.)
    expect((await admin.replaceInstance(old.id, 'again')).replacing).to.equal('wedged worker');
    // ps shows the reason while it is replaced, or once replaced (the CLI's start can take longer
    // than the new instance's on a busy host: a CI run saw it STOPPING already).
    const shown = (await cli('ps', 'web', '--all')).stdout;
    expect(shown, shown).to.match(new RegExp(`^${old.id} .* (replacing: wedged worker|replaced as requested: wedged worker)$`, 'm'));
    await waitFor('a new instance healthy in its slot, the old one stopped', async () => {
      const now = await ps('web');
      const o = now.find((i) => i.id === old.id);
      return (!o || o.desired === 'stop') && (await running('web')).filter((i) => i.slot === old.slot && i.id !== old.id).length === 1;
    }, 40_000, 200);
    const after = await running('web');
    expect(after.filter((i) => i.slot !== old.slot).map((i) => i.id).sort(), 'the others untouched').to.deep.equal(before.filter((i) => i.slot !== old.slot).map((i) => i.id).sort());
    expect(Number((await admin.getApp('web')).version), 'no new version').to.equal(version);
    const events = await pastEvents(admin, ['instance.replace_requested', 'instance.replaced']);
    const asked = events.filter((e) => e.kind === 'instance.replace_requested' && e.subject === old.id);
    expect(asked.map((e) => e.message)).to.deep.equal([`web/web instance ${old.id} on ${old.nodeId}: a replacement asked for (wedged worker); it stops once the new one is healthy`]);
    const stopped = events.find((e) => e.kind === 'instance.replaced' && e.subject === old.id);
    expect(stopped?.message).to.match(/: replaced as requested: wedged worker$/);
    await waitStable('web', version);
    // Once stopped, ps leaves it out unless asked (--all, as docker ps -a), and says so.
    await waitFor('the old one STOPPED', async () => (await ps('web')).find((i) => i.id === old.id)?.state === 'INSTANCE_STATE_STOPPED', 20_000, 200);
    const plain = (await cli('ps', 'web')).stdout;
    expect(plain, plain).to.not.contain(old.id);
    expect(plain).to.match(/\n\(\d+ stopped instances? not shown: --all\)\n$/);
    expect((await cli('ps', 'web', '-a')).stdout).to.match(new RegExp(`^${old.id} .* STOPPED\\* .*replaced as requested: wedged worker$`, 'm'));
    // The events about it, its app and its node (as kubectl events --for, and describe's list).
    const about = (await cli('events', '--for', old.id, '-n', '50')).stdout.trim().split('\n');
    expect(about.map((l) => l.split(/\s+/)[1])).to.include.members(['instance.placed', 'instance.replace_requested', 'instance.replaced']);
    expect(about.every((l) => l.split(/\s+/)[2] === old.id), about.join('\n')).to.equal(true);
    const appShown = (await cli('app', 'get', 'web')).stdout;
    expect(appShown).to.match(/\nevents \(the last \d+; tessera events --for web\):\n/);
    expect(appShown).to.match(new RegExp(`\\binstance\\.replaced +${old.id} `));
    const nodeShown = (await cli('node', 'get', old.nodeId)).stdout;
    // What its instances reserve (web's 100m and 32 MiB among them), as ListNodes gives it.
    const [one, listed] = [await admin.getNode(old.nodeId), (await admin.listNodes()).nodes.find((n) => n.id === old.nodeId)!];
    expect(Number(one.allocated?.cpuMillis)).to.be.at.least(100);
    expect(Number(one.allocated?.memoryMib)).to.be.at.least(32);
    expect(one.allocated, 'GetNode as ListNodes').to.deep.equal(listed.allocated);
    expect(nodeShown, nodeShown).to.contain(`\nallocated:    CPU ${one.allocated!.cpuMillis}m of ${one.capacity!.cpuMillis}m (`);
    expect(nodeShown).to.match(new RegExp(`\nevents \\(the last \\d+; tessera events --for ${old.nodeId}\\):\n`));
    expect(nodeShown).to.match(new RegExp(`\\binstance\\.replaced +${old.id} `));
    // Its table leaves the stopped one out, as ps does, and says so.
    expect(nodeShown).to.match(new RegExp(`\\n\\(\\d+ stopped not shown: tessera ps --node ${old.nodeId} -a\\)\\n`));
    expect(nodeShown.split('\nevents (')[0]).to.not.match(new RegExp(`^${old.id} `, 'm'));
    const other = nodeIds.find((n) => n !== old.nodeId)!;
    expect((await cli('events', '--for', other, '-n', '50')).stdout).to.not.contain(old.id);
    // Refusals: the old one (stopped), an unknown one, none named, an external one.
    const gone = await admin.replaceInstance(old.id).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    if (gone.code !== grpc.status.NOT_FOUND) { // its tombstone may be gone already
      expect(gone.code).to.equal(grpc.status.FAILED_PRECONDITION);
      expect(gone.details).to.match(new RegExp(`^instance ${old.id} is already stopped or stopping \\(replaced as requested: wedged worker\\): nothing to replace$`));
    }
    const refusals: [string, number, string][] = [
      ['no-such', grpc.status.NOT_FOUND, 'instance "no-such" not found'],
      ['', grpc.status.INVALID_ARGUMENT, 'instanceId: is required'],
    ];
    for (const [id, code, text] of refusals) {
      const err = await admin.replaceInstance(id).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
      expect([err.code, err.details]).to.deep.equal([code, text]);
    }
    await admin.registerComponent({ instanceId: 'ext-r', kind: 'outside', endpoint: '127.0.0.1:1', ttlMs: 60_000 });
    const ext = await admin.replaceInstance('ext-r').catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(ext.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(ext.details).to.match(/cannot replace it \(deregister it instead\)$/);
    await admin.deregisterComponent('ext-r');
  });

  it('follows a rollout from the CLI with --wait: exit 0 once it runs everywhere, 2 when the version fails', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-wait-'));
    try {
      const good = path.join(dir, 'good.json');
      fs.writeFileSync(good, JSON.stringify(webSpec('waited', { instances: 2 }, 'v1')));
      const ok = await cli('apply', '-f', good, '--wait', '60');
      expect(ok.code, ok.stderr).to.equal(0);
      expect(ok.stdout).to.match(/^app waited version 1 is running on every instance \(2 healthy\) after [0-9.]+ s\n$/);
      expect(ok.stderr).to.match(/app waited version 1 applied; rolling out\n\+ web: new, 2 instances to place\nwaiting: version 1 of waited: /);
      expect(await running('waited', 1)).to.have.length(2);
      // A version whose instances exit at once: it fails after the restart policy's attempts.
      const bad = path.join(dir, 'bad.json');
      fs.writeFileSync(bad, JSON.stringify(webSpec('waited', { instances: 2, args: ['exit 3'] }, 'v2')));
      const failed = await cli('apply', '-f', bad, '--wait', '60');
      expect(failed.code, failed.stdout + failed.stderr).to.equal(2);
      expect(failed.stderr, failed.stderr).to.match(/error: version 2 of waited failed after [0-9.]+ s: .*exit.*(; now version 3: .*)?\n$/);
      const slow = await cli('app', 'restart', 'waited', '--wait', 'soon');
      expect(slow.code).to.not.equal(0);
      expect(slow.stderr).to.include('--wait takes whole seconds, 1 or more');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      await admin.deleteApp('waited').catch(() => undefined);
    }
  });

  it('scales a component up and down (tessera scale), keeping the instances that run', async () => {
    const before = (await running('web')).map((i) => i.id);
    expect(before).to.have.length(3);
    const up = await cli('scale', 'web', 'web', '5', '--wait', '40');
    expect(up.code, up.stderr).to.equal(0);
    const upVersion = Number((await admin.getApp('web')).version);
    expect(up.stdout).to.match(new RegExp(`^app web version ${upVersion} is running on every instance \\(5 healthy\\) after [0-9.]+ s\n$`));
    // The three it kept are up to date, if made under the version before (same spec): the wait
    // counts them so (before session 32: "0 of 0 new instance(s) ..., 3 old left"), and so does
    // ListInstances.
    expect(up.stderr).to.match(/^waiting: version \d+ of web: [0-4] of 5 updated instance\(s\) running and healthy, 0 old left$/m);
    expect(up.stderr).to.not.match(/[1-9]\d* old left/);
    await waitStable('web', upVersion, 40_000, 5);
    const five = (await running('web')).map((i) => i.id);
    expect(five).to.include.members(before);
    for (const i of await running('web')) {
      expect(i.outdated, i.id).to.equal(false);
      if (before.includes(i.id)) expect(Number(i.version)).to.be.lessThan(upVersion);
    }
    expect((await admin.appHistory('web')).versions[0].reason).to.equal('scaled web from 3 to 5');
    const down = await admin.scaleApp('web', 'web', 3);
    await waitStable('web', Number(down.app!.version), 40_000, 3);
    expect(five).to.include.members((await running('web')).map((i) => i.id));
    expect((await admin.scaleApp('web', 'web', 3)).changed).to.equal(false);
    const refusals: [string, string, number, number, RegExp][] = [
      ['nope', 'web', 2, grpc.status.NOT_FOUND, /nope/],
      ['web', 'db', 2, grpc.status.INVALID_ARGUMENT, /^component: app "web" has no component "db"/],
      ['web', 'web', -1, grpc.status.INVALID_ARGUMENT, /^instances: must be an integer from 0 to 1000, got -1/],
    ];
    for (const [name, component, n, code, text] of refusals) {
      const err = await admin.scaleApp(name, component, n).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
      expect(err.code).to.equal(code);
      expect(err.details).to.match(text);
    }
    // A request without the count (grpcurl -d '{"name":"web","component":"web"}') stops nothing.
    const missing = await admin.scaleApp('web', 'web', undefined).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    expect(missing.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(missing.details).to.match(/^instances: is required \(0 stops every instance of the component\)/);
    expect(await running('web')).to.have.length(3);
  });

  it('marks a version replaced before it finished rolling out as superseded in the history', async () => {
    const a = await admin.scaleApp('web', 'web', 4);
    const b = await admin.scaleApp('web', 'web', 3); // at once: version a never runs everywhere
    await waitStable('web', Number(b.app!.version), 40_000, 3);
    const h = (await admin.appHistory('web')).versions;
    const va = h.find((v) => Number(v.version) === Number(a.app!.version))!;
    expect(va.status).to.equal('superseded');
    expect(va.reason).to.match(new RegExp(`^scaled web from 3 to 4; replaced by version ${Number(b.app!.version)} before it finished rolling out$`));
    expect(h.filter((v) => v.status === 'deploying' || v.status === 'pending').map((v) => Number(v.version))).to.deep.equal([]);
  });

  it('moves instances off a drained node, then back onto it when made eligible and needed', async () => {
    await admin.drainNode({ nodeId: nodeIds[0], reason: 'test' });
    await waitFor('no instance of web on the drained node', async () => {
      const r = await running('web');
      return r.length === 3 && r.every((i) => i.nodeId === nodeIds[1]);
    }, 40_000, 200);
    await waitFor('containers gone from the drained node', () => !appContainers('web').some((c) => c.node === nodeIds[0]), 15_000, 200);
    await admin.drainNode({ nodeId: nodeIds[0], undo: true });
  });

  it('stops what cannot move off a drained node once its deadline passes (nomad node drain -deadline), and follows the drain from the CLI with --wait', async () => {
    // Two instances on distinct hosts, and two hosts: the one on a drained node has nowhere to go.
    await admin.applyApp(webSpec('pinned', { instances: 2, distinctHosts: true }, 'p1'));
    await waitStable('pinned', 1, 40_000, 2);
    const onA = (await running('pinned')).filter((i) => i.nodeId === nodeIds[0]).map((i) => i.id);
    expect(onA).to.have.length(1);
    try {
      // Without a deadline it stays: --wait runs out (exit 1), saying what is left.
      const stuck = await cli('node', 'drain', nodeIds[0], '--reason', 'kernel update', '--wait', '3');
      expect(stuck.code, stuck.stderr).to.equal(1);
      expect(stuck.stderr).to.contain(`waiting: node ${nodeIds[0]}: 1 instance(s) left (${onA[0]})`);
      expect(stuck.stderr).to.contain(`error: node ${nodeIds[0]} still runs 1 instance(s) after 3 s`);
      expect((await running('pinned')).map((i) => i.id)).to.include(onA[0]);
      // With one: stopped once it passes, and the drain is done (exit 0).
      const t0 = Date.now();
      const done = await cli('node', 'drain', nodeIds[0], '--reason', 'kernel update', '--deadline', '2s', '--wait', '30');
      expect(done.code, done.stderr).to.equal(0);
      expect(done.stderr).to.match(/is DRAINING \(instances still here at \S+ are stopped then\)/);
      expect(done.stdout).to.match(new RegExp(`^node ${nodeIds[0]} is drained: no instance runs on it \\(after [0-9.]+ s\\)\n$`));
      expect(Date.now() - t0).to.be.at.least(2_000);
      expect(appContainers('pinned').filter((c) => c.node === nodeIds[0])).to.deep.equal([]);
      const ev = (await pastEvents(admin, ['instance.drained'])).filter((e) => e.subject === onA[0]);
      expect(ev.map((e) => e.message)).to.deep.equal([`pinned/web instance ${onA[0]} on ${nodeIds[0]}: node ${nodeIds[0]}'s drain deadline passed`]);
      expect(Number((await admin.getNode(nodeIds[0])).drainDeadlineAtMs)).to.be.greaterThan(0);
      // Refusals: a deadline below 0 or over 7 days, or given to an undo.
      for (const [req, text] of [[{ deadlineMs: -1 }, /^deadlineMs: must be a whole number of ms from 0 \(none\) to 604800000/], [{ deadlineMs: 8 * 86_400_000 }, /^deadlineMs: must be/], [{ undo: true, deadlineMs: 5 }, /^deadlineMs: is for a drain, not for undoing one/]] as const) {
        const err = await admin.drainNode({ nodeId: nodeIds[0], ...req }).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
        expect(err.code).to.equal(grpc.status.INVALID_ARGUMENT);
        expect(err.details).to.match(text);
      }
    } finally {
      await admin.drainNode({ nodeId: nodeIds[0], undo: true });
    }
    // Eligible again: its slot is placed back, and the deadline is gone with the drain.
    await waitStable('pinned', 1, 40_000, 2);
    expect(Number((await admin.getNode(nodeIds[0])).drainDeadlineAtMs)).to.equal(0);
    await admin.deleteApp('pinned');
  });

  it('places the app again elsewhere when a node stops for good', async () => {
    // Put one instance on node a by scaling up, then stop a for good. (Three healthy to begin
    // with: an instance's check may be failing for a moment on a busy host, and a CI run once
    // began with two.)
    const before = (await waitFor('three instances of web healthy', async () => { const r = await running('web'); return r.length === 3 ? r : undefined; }, 20_000, 200)).map((i) => i.id);
    const spec = webSpec('web', { instances: 4 }, 'v1');
    const scaled = await admin.applyApp(spec);
    await waitFor('an instance on node a', async () => (await running('web')).some((i) => i.nodeId === nodeIds[0]), 30_000, 200);
    // A new count is not a new spec: once the version is stable, the three still run beside one more.
    await waitStable('web', Number(scaled.app!.version), 40_000, 4);
    expect((await running('web')).map((i) => i.id)).to.include.members(before);
    await agents[0].kill('SIGKILL');
    removeContainers(`tessera.node=${nodeIds[0]}`); // the host is gone, and its containers with it
    await waitFor('all 4 instances running on node b', async () => {
      const r = await running('web');
      return r.length === 4 && r.every((i) => i.nodeId === nodeIds[1]);
    }, 40_000, 200);
    const events = (await pastEvents(admin, ['instance.lost', 'node.down'])).map((e) => e.kind);
    expect(events).to.include('node.down');
    expect(events).to.include('instance.lost');
    // Drained now, the DOWN node has nothing left to wait for (no agent reports its containers
    // stopping any more): --wait ends at once.
    const d = await cli('node', 'drain', nodeIds[0], '--reason', 'gone', '--wait', '10');
    expect(d.code, `${d.stderr}${d.stdout}`).to.equal(0);
    expect(d.stdout).to.match(/^node \S+ is drained: no instance runs on it \(after [0-9.]+ s\)\n$/);
  });
});
