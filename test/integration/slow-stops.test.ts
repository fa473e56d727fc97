// Containers that take long to stop (a TERM handler winding down for seconds, as a worker
// draining its queue does). Such a stop holds up nothing else on its node: another app's instance
// starts (on another port than the one the stopping container still serves on), and a crashed
// one is restarted, meanwhile (the agent's pass waited for every stop). And a stop-first
// replacement across a change of leader: the leader dies right after it asked a slot's old
// instance to stop, while that container is still stopping; the next leader must not start the
// slot's new instance on the same volume before the old one is gone, though it has not yet heard
// from the agent (which re-attaches seconds after the election, and then gets the new
// instance's RUN and the old one's STOP at once). What holds that: the leader takes an instance
// it asked to stop as still stopping until its node has reported to this leader, and stop-first
// waits that out. Real etcd, a coordinator killed and restarted, an agent, busybox containers
// logging their start and stop into the slot's volume.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import type { AdminClient } from '../../common/admin-client';
import { execOutput } from '../helpers/cluster';
import { containers, httpGet } from '../helpers/docker';
import { waitFor } from '../helpers/ports';
import { oneNodeCluster, type OneNodeCluster } from '../helpers/suite';

describe('slow stops', function () {
  this.timeout(120_000);
  let admin: AdminClient;
  let c1: OneNodeCluster['coordinator'];
  const spec = (marker: string, app = 'slow') => ({ name: app, components: [{
    name: 'keeper', image: 'tessera/busybox:local', command: ['sh', '-c'],
    // Its start, and on SIGTERM (after 8 s of winding down) its stop, in the slot's volume.
    args: [`echo "start ${marker}" >> /data/log; trap 'sleep 8; echo "stop ${marker}" >> /data/log; exit 0' TERM; while true; do sleep 0.1; done`],
    volumes: [{ name: 'data', path: '/data' }], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, health: { type: 'none' },
    update: { maxParallel: 1, minHealthyMs: 200, healthyDeadlineMs: 30_000 }, stopGraceMs: 15_000,
  }] });
  const exec = (instanceId: string, command: string[]) => execOutput(admin, instanceId, command);

  // A grace longer than the agent's reconnect backoff (up to 5 s): the leader's restart must not take the node DOWN.
  const k = oneNodeCluster({ prefix: 'f', portRange: '30720-30739', coordinator: { failoverGraceMs: 15_000, extra: ['--reconcile-interval-ms', '200'] } });
  before(() => ({ admin, coordinator: c1 } = k));

  it('starts another app\'s instance and restarts a crashed one while a container takes seconds to stop', async () => {
    const quick = (name: string) => ({ name, components: [{
      name: 'web', image: 'tessera/busybox:local', command: ['sh', '-c'], args: ['mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:$PORT_HTTP -h /tmp/www'],
      ports: [{ name: 'http' }], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 500,
      health: { type: 'http', port: 'http', intervalMs: 300, timeoutMs: 200, failureThreshold: 1 },
      restart: { attempts: 5, windowMs: 60_000, delayMs: 100 },
    }] });
    const healthy = async (app: string) => (await admin.listInstances(app)).instances.find((i) => i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING' && i.health === 'healthy');
    // It serves on its port until it has wound down (httpd in the background, 8 s after TERM).
    await admin.applyApp({ name: 'drainer', components: [{
      name: 'web', image: 'tessera/busybox:local', command: ['sh', '-c'],
      args: ['mkdir -p /tmp/www && echo old > /tmp/www/index.html && httpd -p 127.0.0.1:$PORT_HTTP -h /tmp/www; trap \'sleep 8; exit 0\' TERM; while true; do sleep 0.1; done'],
      ports: [{ name: 'http' }], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 15_000, health: { type: 'none' },
    }] });
    await admin.applyApp(quick('steady'));
    await waitFor('both running', async () => (await admin.listInstances('drainer')).instances.some((i) => i.state === 'INSTANCE_STATE_RUNNING') && (await healthy('steady')), 30_000, 200);
    const steady = (await healthy('steady'))!;
    const drainerPort = (await admin.listInstances('drainer')).instances[0].ports.http;
    await admin.deleteApp('drainer');
    await waitFor('the slow one stopping', async () => (await admin.listInstances('drainer').catch(() => ({ instances: [] }))).instances.every((i) => i.desired !== 'run'), 10_000, 50);
    // Its container winds down for 8 s. Within that: a new app's instance runs and passes its
    // check, and the steady one, killed, is restarted.
    const t0 = Date.now();
    await admin.applyApp(quick('fresh'));
    execFileSync('docker', ['kill', containers(`tessera.instance=${steady.id}`)[0].id]);
    const fresh = await waitFor('fresh healthy', () => healthy('fresh'), 6_000, 100);
    // Not on the port the stopping one still listens on (the lowest free one, had it been let go).
    expect(fresh.ports.http).to.not.equal(drainerPort);
    expect(await httpGet(drainerPort)).to.equal('old\n');
    await waitFor('steady restarted', async () => { const i = await healthy('steady'); return i && i.id === steady.id && i.restarts > 0; }, 6_000, 100);
    expect(Date.now() - t0).to.be.below(6_000);
    expect(containers('tessera.app=drainer').filter((c) => c.state === 'running'), 'the slow one still stopping').to.have.length(1);
    await waitFor('slow gone', async () => containers('tessera.app=drainer').length === 0 && !(await admin.listApps()).apps.some((a) => a.name === 'drainer'), 20_000, 200);
    await admin.deleteApp('fresh');
    await admin.deleteApp('steady');
    await waitFor('apps gone', async () => (await admin.listApps()).apps.length === 0, 20_000, 200);
  });

  it('waits for the old instance to be gone, as the agent reports it after re-attaching, before the new one starts', async () => {
    await admin.applyApp(spec('v1'));
    const first = await waitFor('v1 running', async () => (await admin.listInstances('slow')).instances.find((i) => i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING'), 30_000, 200);
    await waitFor('v1 logged', async () => (await exec(first.id, ['cat', '/data/log'])) === 'start v1\n', 10_000, 200);
    await admin.applyApp(spec('v2'));
    // The old one asked to stop (its record no longer desired): the leader dies there.
    await waitFor('v1 asked to stop', async () => (await admin.listInstances('slow')).instances.some((i) => i.id === first.id && i.desired !== 'run'), 10_000, 50);
    await c1.kill('SIGKILL');
    c1.start();
    const second = await waitFor('v2 running', async () => (await admin.listInstances('slow').catch(() => ({ instances: [] }))).instances.find((i) => i.desired === 'run' && Number(i.version) === 2 && i.state === 'INSTANCE_STATE_RUNNING'), 60_000, 200);
    expect(await exec(second.id, ['cat', '/data/log'])).to.equal('start v1\nstop v1\nstart v2\n');
  });
});
