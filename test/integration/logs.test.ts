// Instance logs (Admin.InstanceLogs, `tessera logs`): an instance's container output, read from
// the agent that runs it (AgentLogs), through the leader or relayed by a follower. Real etcd,
// coordinator and agent processes, a real container writing to stdout and stderr.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { repoRoot } from '../../common/version';
import { tesseraProto } from '../../common/proto';
import type { LogChunk__Output } from '../../common/generated/tessera/v1/LogChunk';
import type { InstanceLogsRequest } from '../../common/generated/tessera/v1/InstanceLogsRequest';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';

/** Reads a logs stream to its end (or until `until` says so, then cancels it). */
function read(admin: AdminClient, req: InstanceLogsRequest, until?: (chunks: LogChunk__Output[]) => boolean): Promise<LogChunk__Output[]> {
  return new Promise((resolve, reject) => {
    const chunks: LogChunk__Output[] = [];
    const s = admin.instanceLogs(req);
    s.on('data', (c: LogChunk__Output) => {
      chunks.push(c);
      if (until?.(chunks)) {
        s.cancel();
        resolve(chunks);
      }
    });
    s.on('end', () => resolve(chunks));
    s.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? resolve(chunks) : reject(err)));
  });
}
const text = (chunks: LogChunk__Output[], stream?: string) => chunks.filter((c) => !stream || c.stream === stream).map((c) => c.data.toString()).join('');

describe('instance logs', function () {
  this.timeout(120_000);
  const node = `l${randomBytes(3).toString('hex')}`;
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let leader: AdminClient;
  let follower: AdminClient;
  let coords: string[];
  let id = '';
  let agent: ReturnType<Fleet['agent']>;

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints });
    await waitForLeader([c1.address]);
    const c2 = await fleet.coordinator({ etcd: etcd.endpoints });
    coords = [c1.address, c2.address];
    agent = fleet.agent({ coordinators: coords, nodeId: node, extra: ['--port-range', '30200-30299'] });
    leader = new AdminClient([c1.address]);
    follower = new AdminClient([c2.address]);
    await waitFor('node READY', async () => (await leader.listNodes()).nodes.length === 1, 20_000);
    await leader.applyApp({ name: 'chatty', components: [{
      name: 'talker', image: 'tessera/busybox:local', command: ['sh', '-c'],
      args: ['echo first line; echo to stderr >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done'],
      resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
    }] });
    id = await waitFor('running', async () => (await leader.listInstances('chatty')).instances.find((i) => i.state === 'INSTANCE_STATE_RUNNING')?.id, 30_000, 200);
  });

  after(async () => {
    leader?.close();
    follower?.close();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${node}`);
  });

  it('reads the whole log, stdout and stderr apart, from the leader and through a follower', async () => {
    await waitFor('a few ticks', async () => text(await read(leader, { instanceId: id })).includes('tick 3'), 10_000, 200);
    for (const admin of [leader, follower]) {
      const chunks = await read(admin, { instanceId: id });
      expect(text(chunks, 'stdout')).to.match(/^first line\ntick 1\ntick 2\n/);
      expect(text(chunks, 'stderr')).to.equal('to stderr\n');
    }
  });

  it('keeps the last lines with tail, and timestamps them when asked', async () => {
    const last = text(await read(leader, { instanceId: id, tailLines: 2 }));
    expect(last.trimEnd().split('\n')).to.have.length(2);
    expect(last).to.match(/^tick \d+\ntick \d+\n$/);
    const stamped = text(await read(leader, { instanceId: id, tailLines: 1, timestamps: true }));
    expect(stamped).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z tick \d+\n$/);
  });

  it('follows what the instance writes next, until the caller leaves', async () => {
    const start = Number(/tick (\d+)/.exec(text(await read(leader, { instanceId: id, tailLines: 1 })))![1]);
    // Through the follower: the relayed stream carries new lines as they come.
    const chunks = await read(follower, { instanceId: id, tailLines: 1, follow: true }, (cs) => (text(cs).match(/tick \d+/g) ?? []).length >= 4);
    const ticks = text(chunks).match(/tick (\d+)/g)!.map((t) => Number(t.slice(5)));
    expect(ticks[ticks.length - 1]).to.be.at.least(start + 3);
  });

  it('prints it with the CLI, stderr on stderr', async () => {
    const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [cli, '-c', coords.join(','), 'logs', id, '--tail', '3']);
    expect(stdout.trimEnd().split('\n')).to.have.length.within(1, 3);
    expect(stdout).to.match(/tick \d+\n$/);
    const all = await promisify(execFile)(process.execPath, [cli, '-c', coords[1], 'logs', id]);
    expect(all.stdout).to.match(/^first line\n/);
    expect(all.stderr).to.equal('to stderr\n');
    const bad = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], 'logs', id, '--tail', 'ten']).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(bad?.code).to.not.equal(0);
    expect(bad?.stderr).to.match(/--tail takes a whole number of lines, 1 or more/);
    const zero = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], 'logs', id, '--tail', '0']).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(zero?.stderr).to.match(/1 or more \(without it: the whole log\)/);
    // Every running instance of an app (as kubectl logs -l), each line prefixed with its instance.
    const byApp = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], 'logs', '--app', 'chatty', '--component', 'talker', '--tail', '2']);
    expect(byApp.stdout).to.match(new RegExp(`^\\[${id}\\] tick \\d+\n\\[${id}\\] tick \\d+\n$`));
    const none = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], 'logs', '--app', 'chatty', '--component', 'nope']).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(none?.code).to.equal(1);
    expect(none?.stderr).to.equal('error: app chatty has no running instances of component nope\n');
    const both = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], 'logs', id, '--app', 'chatty']).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(both?.stderr).to.match(/give an instance id, or --app/);
  });

  it('refuses an external instance with FAILED_PRECONDITION: Tessera does not run it', async () => {
    await leader.registerComponent({ instanceId: 'ext-1', kind: 'outside', endpoint: '127.0.0.1:1', ttlMs: 60_000 });
    const err = await read(follower, { instanceId: 'ext-1' }).then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err?.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(err?.details).to.match(/instance ext-1 is external \(a outside at 127\.0\.0\.1:1, registered through the Admin API\)/);
    await leader.deregisterComponent('ext-1');
  });

  it('refuses an unknown instance with NOT_FOUND and a missing id with INVALID_ARGUMENT', async () => {
    for (const admin of [leader, follower]) {
      const nf = await read(admin, { instanceId: 'no-such-instance' }).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(nf?.code).to.equal(grpc.status.NOT_FOUND);
      expect(nf?.details).to.equal('instance "no-such-instance" not found');
      const missing = await read(admin, { instanceId: '' }).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(missing?.code).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(missing?.details).to.match(/instance_id/);
    }
  });

  it('says NOT_FOUND when the node has no container for the instance (removed outside Tessera)', async () => {
    // Asked directly (as the leader asks it), the agent answers from the Docker Engine's 404;
    // the leader passes any status but UNAVAILABLE on as it is (relayStream).
    const endpoint = (await leader.listNodes()).nodes[0].endpoint;
    const direct = new (tesseraProto().AgentLogs)(endpoint, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError | undefined>((resolve) => {
        const s = direct.instanceLogs({ instanceId: 'i-removed-outside' });
        s.on('data', () => {});
        s.on('end', () => resolve(undefined));
        s.on('error', resolve);
      });
      expect(err?.code).to.equal(grpc.status.NOT_FOUND);
      expect(err?.details).to.equal('container of instance "i-removed-outside" not found');
    } finally {
      direct.close();
    }
  });

  it('says UNAVAILABLE when the instance\'s node is down', async () => {
    await agent.kill('SIGKILL');
    // At once, before the node is marked DOWN: the agent does not answer.
    const early = await read(leader, { instanceId: id }).then(() => undefined, (e: grpc.ServiceError) => e);
    expect(early?.code).to.equal(grpc.status.UNAVAILABLE);
    expect(early?.details).to.match(new RegExp(`the agent of node ${node} \\(127\\.0\\.0\\.1:\\d+\\) did not answer|on node ${node}, which is DOWN`));
    await waitFor('node DOWN', async () => (await leader.listNodes()).nodes[0].state === 'NODE_STATE_DOWN', 30_000, 300);
    const err = await read(leader, { instanceId: id }).then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err?.code).to.equal(grpc.status.UNAVAILABLE);
    expect(err?.details).to.match(new RegExp(`on node ${node}, which is DOWN`));
  });
});
