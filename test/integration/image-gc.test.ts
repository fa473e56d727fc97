// Image garbage collection on the agent: unused images it pulled are removed when the image
// filesystem is over the high threshold; images in use, and images it did not pull, stay. Real etcd, coordinator and agent processes, the real Docker Engine pulling
// from a registry on 127.0.0.1 (test/helpers/registry.ts). The thresholds are set to 0 so that
// this machine's disk is always "full": every unused image the agent ran is collected.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { removeContainers, removeImage } from '../helpers/docker';
import { TestRegistry } from '../helpers/registry';
import { laneRange } from '../helpers/lane';

const BASE = 'tessera/busybox:local';

function imageId(ref: string): string | undefined {
  try {
    return execFileSync('docker', ['image', 'inspect', '-f', '{{.Id}}', ref], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  } catch {
    return undefined;
  }
}

describe('image garbage collection', function () {
  this.timeout(120_000);
  const tag = randomBytes(3).toString('hex');
  const node = `gc${tag}`;
  // Images of its own (BASE with a label): their IDs are shared with no other test's image. The
  // collector counts an image in use when any container on the host runs its ID, and other
  // tests (the other lane of a CI run) run BASE: an image served from BASE stayed in use while
  // they ran (CI run 2 of session 30: the second image never removed).
  const distinct = `tessera-test/gc:${tag}`;
  const distinctKept = `tessera-test/gc-kept-base:${tag}`;
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let admin: AdminClient;
  let registry: TestRegistry;
  let stateDir: string;
  const refs: string[] = [];

  const app = (name: string, image: string) => ({
    name, components: [{ name: 'web', image, command: ['sh', '-c', 'sleep 3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100 }],
  });
  const running = async (name: string) => (await admin.listInstances(name)).instances.some((i) => i.state === 'INSTANCE_STATE_RUNNING');

  before(async () => {
    const cid = execFileSync('docker', ['create', BASE, 'true']).toString().trim();
    execFileSync('docker', ['commit', '-c', `LABEL tessera.test=gc-${tag}`, cid, distinct], { stdio: 'ignore' });
    execFileSync('docker', ['commit', '-c', `LABEL tessera.test=gc-kept-${tag}`, cid, distinctKept], { stdio: 'ignore' });
    execFileSync('docker', ['rm', cid], { stdio: 'ignore' });
    refs.push(distinct, distinctKept);
    registry = await TestRegistry.start();
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints });
    await waitForLeader([c1.address]);
    const agent = fleet.agent({
      coordinators: [c1.address], nodeId: node,
      extra: ['--port-range', laneRange('30400-30449'), '--image-gc-high-percent', '0', '--image-gc-low-percent', '0', '--image-gc-min-age-ms', '0', '--image-gc-interval-ms', '300'],
    });
    stateDir = agent.stateDir;
    admin = new AdminClient([c1.address]);
    await waitFor('node READY', async () => (await admin.listNodes()).nodes.some((n) => n.state === 'NODE_STATE_READY'), 20_000, 200);
  });

  after(async () => {
    admin?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${node}`);
    for (const r of refs) removeImage(r);
    await registry?.stop();
  });

  it('keeps the images in use, removes one once no container uses it, and leaves the images it did not pull', async () => {
    const own = registry.publish(distinct, 'tessera/gc-own', tag);
    const kept = registry.publish(distinctKept, 'tessera/gc-kept', tag);
    refs.push(own, kept);
    await admin.applyApp(app('gc-own', own));
    await admin.applyApp(app('gc-kept', kept));
    // An image the host has already (IfNotPresent: not pulled): the operator's, never collected.
    await admin.applyApp(app('gc-local', distinct));
    await waitFor('all three RUNNING', async () => (await running('gc-own')) && (await running('gc-kept')) && (await running('gc-local')), 60_000, 200);
    // The record of what the agent pulled, in the state dir (it outlives an agent restart).
    await waitFor('both images recorded', async () => {
      const rec = JSON.parse(fs.readFileSync(path.join(stateDir, 'images.json'), 'utf8')) as Record<string, number>;
      return own in rec && kept in rec;
    }, 10_000, 100);
    // Several sweeps (every 300 ms, the disk "over" the threshold): both are in use and stay.
    await new Promise((r) => setTimeout(r, 1_500));
    expect(imageId(own), 'in use').to.be.a('string');
    expect(imageId(kept), 'in use').to.be.a('string');

    await admin.deleteApp('gc-own');
    await admin.deleteApp('gc-local');
    await waitFor('the unused image removed', async () => imageId(own) === undefined, 30_000, 200);
    // Removal is by the reference the instance named: the image the operator made themselves
    // (the one the registry served; the agent did not pull it) is still there, and so is the one in use.
    expect(imageId(distinct), 'an image the agent did not pull').to.be.a('string');
    expect(imageId(kept), 'in use').to.be.a('string');
    const rec = JSON.parse(fs.readFileSync(path.join(stateDir, 'images.json'), 'utf8')) as Record<string, number>;
    expect(rec).to.not.have.property(own);
    expect(rec).to.not.have.property(distinct);
    await waitFor('gc-local\'s container removed', async () => execFileSync('docker', ['ps', '-aq', '--filter', 'label=tessera.app=gc-local', '--filter', `label=tessera.node=${node}`]).toString().trim() === '', 30_000, 200);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(imageId(distinct), 'its instance gone, several sweeps later').to.be.a('string');

    // The other image shares its ID with a local one (the registry served it): removing the
    // pulled reference only untags it; the local image, which the agent did not pull, stays.
    await admin.deleteApp('gc-kept');
    await waitFor('the second image removed', async () => imageId(kept) === undefined, 30_000, 200);
    expect(imageId(distinctKept), 'the local image it was pulled from').to.be.a('string');
  });
});
