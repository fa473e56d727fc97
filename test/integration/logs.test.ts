// Instance logs (Admin.InstanceLogs, `tessera logs`): an instance's container output, read from
// the agent that runs it (AgentLogs), through the leader or relayed by a follower; and commands
// run in an instance (Admin.ExecInstance, `tessera exec`) the same way (AgentExec). Real etcd,
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
import type { ExecInstanceRequest } from '../../common/generated/tessera/v1/ExecInstanceRequest';
import type { ExecChunk__Output } from '../../common/generated/tessera/v1/ExecChunk';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';

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
/** Runs a command through ExecInstance: its output by stream and its exit code (-1: the stream ended without one). */
function exec(admin: AdminClient, req: ExecInstanceRequest, cancelAfterMs?: number): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  return new Promise((resolve, reject) => {
    const out = { stdout: '', stderr: '', exitCode: -1 };
    const s = admin.execInstance(req);
    if (cancelAfterMs) setTimeout(() => s.cancel(), cancelAfterMs);
    s.on('data', (c: ExecChunk__Output) => {
      if (c.exited) out.exitCode = c.exitCode;
      else out[c.stream as 'stdout' | 'stderr'] += c.data.toString();
    });
    s.on('end', () => resolve(out));
    s.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? resolve(out) : reject(err)));
  });
}
const text = (chunks: LogChunk__Output[], stream?: string) => chunks.filter((c) => !stream || c.stream === stream).map((c) => c.data.toString()).join('');

const HEARTBEAT_MS = 8_000;

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
    // A heartbeat timeout longer than a frozen exec's deadline (500 ms and 5 s): the exec test sees
    // the deadline, not the node going DOWN (the describe below sees that).
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: HEARTBEAT_MS });
    await waitForLeader([c1.address]);
    const c2 = await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: HEARTBEAT_MS });
    coords = [c1.address, c2.address];
    agent = fleet.agent({ coordinators: coords, nodeId: node, extra: ['--port-range', laneRange('30200-30299')] });
    leader = new AdminClient([c1.address]);
    follower = new AdminClient([c2.address]);
    await waitFor('node READY', async () => (await leader.listNodes()).nodes.length === 1, 20_000);
    await leader.applyApp({ name: 'chatty', components: [{
      name: 'talker', image: 'tessera/busybox:local', command: ['sh', '-c'],
      args: ['echo first line; echo to stderr >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done'],
      resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
    }] });
    id = await waitFor('running', async () => (await leader.listInstances('chatty')).instances.find((i) => i.state === 'INSTANCE_STATE_RUNNING')?.id, 30_000, 200);
    // The follower up and following c1 (the tests read through it as well as through the leader).
    await waitFor('the follower follows c1', async () => (await follower.getClusterStatus()).leader?.address === c1.address, 20_000, 200);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
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

  it('runs a command in the instance: its output by stream and its exit code, from the leader and through a follower', async () => {
    for (const admin of [leader, follower]) {
      const r = await exec(admin, { instanceId: id, command: ['sh', '-c', 'echo out; echo err >&2; echo "$0"; exit 3', 'arg zero'] });
      expect(r).to.deep.equal({ stdout: 'out\narg zero\n', stderr: 'err\n', exitCode: 3 });
    }
    // Standard input, then its end (cat ends when its input does).
    const cat = await exec(follower, { instanceId: id, command: ['cat'], stdin: Buffer.from('line one\nline two\n') });
    expect(cat).to.deep.equal({ stdout: 'line one\nline two\n', stderr: '', exitCode: 0 });
    // A program that does not exist: the runtime's answer, as docker exec gives it.
    const missing = await exec(leader, { instanceId: id, command: ['no-such-program'] });
    expect(missing.exitCode).to.be.oneOf([126, 127]); // runc's answer varies by version
    expect(missing.stdout + missing.stderr).to.match(/no-such-program/);
  });

  it('records each command as an instance.exec event', async () => {
    await exec(leader, { instanceId: id, command: ['echo', 'audited', 'two words'] });
    const events = await pastEvents(leader, ['instance.exec']);
    const e = events.find((x) => x.fields.command === JSON.stringify(['echo', 'audited', 'two words']));
    expect(e, JSON.stringify(events)).to.not.equal(undefined);
    expect(e!.subject).to.equal(id);
    expect(e!.message).to.equal(`command run in instance ${id} on node ${node}: echo audited "two words"`);
    expect([e!.fields.node, e!.fields.app, e!.fields.component]).to.deep.equal([node, 'chatty', 'talker']);
  });

  it('kills a command past its timeout (DEADLINE_EXCEEDED) or when the caller leaves', async () => {
    const err = await exec(leader, { instanceId: id, command: ['sleep', '41'], timeoutMs: 500 }).then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err?.code).to.equal(grpc.status.DEADLINE_EXCEEDED);
    expect(err?.details).to.equal('the command ran past its timeout of 500 ms and was killed');
    // The caller cancels through a follower: the leader's call to the agent is cancelled too.
    const left = await exec(follower, { instanceId: id, command: ['sleep', '42'] }, 1_000);
    expect(left.exitCode).to.equal(-1);
    const ps = async () => (await exec(leader, { instanceId: id, command: ['ps', '-o', 'args'] })).stdout;
    await waitFor('both sleeps killed', async () => !/sleep 4[12]/.test(await ps()), 5_000, 200);
  });

  it('refuses bad requests with the field named, and a stopped or external instance', async () => {
    const fails = (admin: AdminClient, req: ExecInstanceRequest) => exec(admin, req).then(() => undefined, (e: grpc.ServiceError) => e);
    for (const admin of [leader, follower]) {
      const noCmd = await fails(admin, { instanceId: id });
      expect([noCmd?.code, noCmd?.details]).to.deep.equal([grpc.status.INVALID_ARGUMENT, 'command: is required: the program to run and its arguments']);
      const empty = await fails(admin, { instanceId: id, command: [''] });
      expect(empty?.details).to.equal('command[0]: is empty: name the program to run');
      const long = await fails(admin, { instanceId: id, command: ['true'], timeoutMs: 3_600_001 });
      expect([long?.code, long?.details]).to.deep.equal([grpc.status.INVALID_ARGUMENT, 'timeout_ms: is 3600001; at most 3600000 (an hour)']);
      const big = await fails(admin, { instanceId: id, command: ['true'], stdin: Buffer.alloc(1024 * 1024 + 1) });
      expect(big?.details).to.equal('stdin: is 1048577 bytes; at most 1048576');
      const nf = await fails(admin, { instanceId: 'no-such-instance', command: ['true'] });
      expect([nf?.code, nf?.details]).to.deep.equal([grpc.status.NOT_FOUND, 'instance "no-such-instance" not found']);
    }
    await leader.registerComponent({ instanceId: 'ext-2', kind: 'outside', endpoint: '127.0.0.1:1', ttlMs: 60_000 });
    const ext = await fails(follower, { instanceId: 'ext-2', command: ['true'] });
    expect([ext?.code, ext?.details]).to.deep.equal([grpc.status.FAILED_PRECONDITION, 'instance ext-2 is external (a outside at 127.0.0.1:1, registered through the Admin API): Tessera does not run it and cannot run commands in it']);
    await leader.deregisterComponent('ext-2');
    // The agent asked directly for a container that exists but does not run.
    const endpoint = (await leader.listNodes()).nodes[0].endpoint;
    const stopped = `i-stopped-${randomBytes(3).toString('hex')}`;
    await promisify(execFile)('docker', ['create', '--name', `tessera-${stopped}`, '--label', `tessera.node=${node}`, 'tessera/busybox:local', 'true']);
    const direct = new (tesseraProto().AgentExec)(endpoint, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError | undefined>((resolve) => {
        const s = direct.execInstance({ instanceId: stopped, command: ['true'] });
        s.on('data', () => {});
        s.on('end', () => resolve(undefined));
        s.on('error', resolve);
      });
      expect([err?.code, err?.details]).to.deep.equal([grpc.status.FAILED_PRECONDITION, `the container of instance ${stopped} is not running: a command runs only in a running container`]);
    } finally {
      direct.close();
      await promisify(execFile)('docker', ['rm', '-f', `tessera-${stopped}`]);
    }
  });

  it('runs it with the CLI: output on stdout and stderr, the exit code passed on, stdin with -i', async () => {
    const cli = path.join(repoRoot(), 'dist/coordinator/cli/main.js');
    const r = await promisify(execFile)(process.execPath, [cli, '-c', coords[1], 'exec', id, '--', 'sh', '-c', 'echo hi; echo there >&2']);
    expect([r.stdout, r.stderr]).to.deep.equal(['hi\n', 'there\n']);
    const seven = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], 'exec', id, '--', 'sh', '-c', 'exit 7']).then(() => undefined, (e: { code: number }) => e);
    expect(seven?.code).to.equal(7);
    const piped = await new Promise<string>((resolve, reject) => {
      const child = execFile(process.execPath, [cli, '-c', coords[0], 'exec', '-i', id, '--', 'wc', '-l'], (err, stdout) => (err ? reject(err) : resolve(stdout)));
      child.stdin!.end('a\nb\nc\n');
    });
    expect(piped.trim()).to.equal('3');
    // -it: a shell in a terminal, fed line by line (standard input here is a pipe, not a terminal).
    const shell = await new Promise<{ code: number; stdout: string }>((resolve) => {
      const child = execFile(process.execPath, [cli, '-c', coords[1], 'exec', '-it', id, '--', 'sh'], (err, stdout) => resolve({ code: err ? Number((err as { code?: number }).code) : 0, stdout }));
      child.stdin!.end('echo x-$((2+2))\nexit 4\n');
    });
    expect(shell.code).to.equal(4);
    expect(shell.stdout).to.match(/x-4\r?\n/);
    const json = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], '--json', 'exec', id, '--', 'echo', 'x']);
    expect(json.stdout.trim().split('\n').map((l) => JSON.parse(l))).to.deep.equal([{ stream: 'stdout', data: 'x\n' }, { exitCode: 0 }]);
    const timeout = await promisify(execFile)(process.execPath, [cli, '-c', coords[0], 'exec', '--command-timeout', '0', id, '--', 'true']).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(timeout?.stderr).to.match(/--command-timeout takes whole seconds, 1 to 3600/);
  });

  it('runs an interactive command (ExecInteractive, kubectl exec -i -t): input as it is typed, a terminal with its size, through a follower too', async () => {
    /** An interactive session: send() writes a message, until() waits for output, done gives the exit code. */
    const session = (admin: AdminClient, start: Record<string, unknown>) => {
      let out = '';
      let exitCode = -1;
      const s = admin.execInteractive();
      const done = new Promise<number>((resolve, reject) => {
        s.on('data', (c: ExecChunk__Output) => { if (c.exited) exitCode = c.exitCode; else out += c.data.toString(); });
        s.on('end', () => resolve(exitCode));
        s.on('error', reject);
      });
      s.write({ start });
      return {
        send: (m: Record<string, unknown>) => s.write(m),
        until: (re: RegExp) => waitFor(`output matching ${re}`, async () => re.test(out), 10_000, 50).catch((e: Error) => { throw new Error(`${e.message}; the output: ${JSON.stringify(out)}`); }),
        output: () => out,
        done,
        end: () => s.end(),
      };
    };
    // Without a terminal, through the follower: each line runs as it is sent.
    const plain = session(follower, { instanceId: id, command: ['sh'] });
    plain.send({ stdin: Buffer.from('echo hi-$((1+2))\n') });
    await plain.until(/hi-3\n/);
    plain.send({ stdin: Buffer.from('exit 7\n') });
    expect(await plain.done).to.equal(7);
    expect(plain.output()).to.equal('hi-3\n');
    // With a terminal of 30 x 90, then resized to 40 x 100.
    const tty = session(leader, { instanceId: id, command: ['sh'], tty: true, size: { rows: 30, cols: 90 } });
    tty.send({ stdin: Buffer.from('stty size; tty\n') });
    await tty.until(/30 90\r?\n\/dev\/pts\/\d+/);
    tty.send({ resize: { rows: 40, cols: 100 } });
    tty.send({ stdin: Buffer.from('stty size\n') });
    await tty.until(/40 100/);
    tty.send({ stdin: Buffer.from('exit 3\n') });
    expect(await tty.done).to.equal(3);
    // The end of input ends a command that reads it.
    const eof = session(leader, { instanceId: id, command: ['wc', '-c'] });
    eof.send({ stdin: Buffer.from('12345') });
    eof.send({ stdinClosed: true });
    expect(await eof.done).to.equal(0);
    expect(eof.output().trim()).to.equal('5');
    const ev = (await pastEvents(leader, ['instance.exec'])).filter((e) => e.subject === id).map((e) => e.message);
    expect(ev).to.include(`interactive command (terminal) run in instance ${id} on node ${node}: sh`);
    // A stream that does not start by naming the command.
    const bad = session(leader, {});
    const err = await bad.done.then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err?.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(err?.details).to.match(/^instance_id: is required/);
    const none = leader.execInteractive();
    const noStart = new Promise<grpc.ServiceError | undefined>((resolve) => { none.on('data', () => {}); none.on('end', () => resolve(undefined)); none.on('error', resolve); });
    none.write({ stdin: Buffer.from('x') });
    expect((await noStart)?.details).to.match(/^start: the first message names the command/);
  });

  it('runs exec health checks in the container: healthy once the command exits 0, restarted when it fails; a check past its timeout killed, not piled up', async () => {
    const checked = (name: string, command: string[], intervalMs: number, timeoutMs: number, graceMs = 60_000, failureThreshold = 1) => ({
      name, image: 'tessera/busybox:local', command: ['sleep', '3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
      health: { type: 'exec', command, intervalMs, timeoutMs, graceMs, failureThreshold },
    });
    // blip: no grace (0: before session 24 it read as the default, 10 s) and a high threshold, so its failed checks show in its message without a restart.
    // file and blip get a second: a check through the Engine's exec can take more than 250 ms on a busy host.
    await leader.applyApp({ name: 'probed', components: [checked('file', ['test', '-f', '/tmp/ready'], 1000, 900), checked('hung', ['sleep', '31'], 400, 300), checked('blip', ['test', '-f', '/tmp/ready'], 1000, 900, 0, 1000)] });
    expect((await leader.getApp('probed')).spec!.components.map((c) => [c.name, c.health!.graceMs])).to.deep.equal([['file', 60_000], ['hung', 60_000], ['blip', 0]]);
    const inst = async (c: string) => (await leader.listInstances('probed')).instances.find((i) => i.component === c && i.desired === 'run' && i.state === 'INSTANCE_STATE_RUNNING');
    const file = await waitFor('file running', () => inst('file'), 30_000, 200);
    const hung = await waitFor('hung running', () => inst('hung'), 30_000, 200);
    expect(file.health).to.not.equal('healthy');
    await exec(leader, { instanceId: file.id, command: ['touch', '/tmp/ready'] });
    await waitFor('healthy once the check passes', async () => (await inst('file'))?.health === 'healthy', 10_000, 200);
    await exec(leader, { instanceId: file.id, command: ['rm', '/tmp/ready'] });
    await waitFor('restarted once it fails', async () => ((await leader.listInstances('probed')).instances.find((i) => i.id === file.id)?.restarts ?? 0) >= 1, 10_000, 200);
    // A check that passes after failed ones (under the threshold) clears their message.
    const blip = await waitFor('blip failing its checks', async () => {
      const b = await inst('blip');
      return b?.message.startsWith('health check failed: ') ? b : undefined;
    }, 10_000, 200);
    await exec(leader, { instanceId: blip.id, command: ['touch', '/tmp/ready'] });
    const passed = await waitFor('blip healthy', async () => {
      const b = await inst('blip');
      return b?.health === 'healthy' ? b : undefined;
    }, 10_000, 200);
    expect(passed.restarts).to.equal(0);
    await waitFor('its old failure gone from its message', async () => (await inst('blip'))?.message === '', 3_000, 200);
    // Seven checks or more of the hung one have run (each killed at 300 ms): never more than one at a time.
    await new Promise((r) => setTimeout(r, 3_000));
    const ps = (await exec(leader, { instanceId: hung.id, command: ['ps', '-o', 'args'] })).stdout;
    expect(ps.split('\n').filter((l) => l.trim() === 'sleep 31').length, ps).to.be.at.most(1);
    expect((await inst('hung'))?.health).to.not.equal('healthy');
    await leader.deleteApp('probed');
  });

  it('asks for an upgrade when the instance\'s agent predates ExecInstance (FAILED_PRECONDITION)', async () => {
    // An agent whose advertised relay address is a gRPC server without AgentExec (as an older agent's).
    const bare = new grpc.Server();
    const port = await new Promise<number>((resolve, reject) => bare.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    const oldNode = `${node}-old`;
    const old = fleet.agent({ coordinators: coords, nodeId: oldNode, extra: ['--port-range', laneRange('30300-30399'), '--labels', 'generation=old', '--relay-advertise', `127.0.0.1:${port}`] });
    try {
      await waitFor('two nodes READY', async () => (await leader.listNodes()).nodes.filter((n) => n.state === 'NODE_STATE_READY').length === 2, 20_000);
      await leader.applyApp({ name: 'oldhost', components: [{
        name: 'sleeper', image: 'tessera/busybox:local', command: ['sleep', '3600'], constraints: [{ label: 'generation', op: '=', value: 'old' }],
        resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
      }] });
      const oldId = await waitFor('running on the old node', async () => (await leader.listInstances('oldhost')).instances.find((i) => i.state === 'INSTANCE_STATE_RUNNING' && i.nodeId === oldNode)?.id, 30_000, 200);
      const err = await exec(follower, { instanceId: oldId, command: ['true'] }).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code).to.equal(grpc.status.FAILED_PRECONDITION);
      expect(err?.details).to.match(/the agent predates ExecInstance; upgrade it$/);
      await leader.deleteApp('oldhost');
    } finally {
      await old.kill('SIGTERM');
      bare.forceShutdown();
      removeContainers(`tessera.node=${oldNode}`);
    }
  });

  it('ends a command whose agent stops answering (frozen) with DEADLINE_EXCEEDED soon after its timeout, naming the agent', async () => {
    agent.pause(); // SIGSTOP: its connections stay open, it answers nothing
    try {
      const t0 = Date.now();
      const err = await exec(follower, { instanceId: id, command: ['true'], timeoutMs: 500 }).then(() => undefined, (e: grpc.ServiceError) => e);
      // Or UNAVAILABLE naming the node: when the leader's connection to the agent sent its
      // keepalive ping (every 10 s, given 5 s) just before or after the freeze, it gives up on the
      // agent first; on a busy host the node may go DOWN (8 s) first. (Two runs of a few dozen,
      // two files at a time, ended with UNAVAILABLE; their text was not kept.)
      if (err?.code === grpc.status.UNAVAILABLE) {
        expect(err.details).to.match(new RegExp(`^the agent of node ${node} \\(127\\.0\\.0\\.1:\\d+\\) did not answer: |^node ${node} went DOWN \\(its agent stopped reporting\\)`));
      } else {
        expect(err?.code, err?.details).to.equal(grpc.status.DEADLINE_EXCEEDED);
        expect(err?.details).to.match(new RegExp(`^the agent of node ${node} \\(127\\.0\\.0\\.1:\\d+\\) did not answer within the command's timeout \\(500 ms\\) and 5 s more`));
      }
      expect(Date.now() - t0).to.be.below(10_000);
    } finally {
      agent.resume();
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

describe('streams from a frozen agent', function () {
  this.timeout(60_000);
  const node = `f${randomBytes(3).toString('hex')}`;
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let leader: AdminClient;
  let follower: AdminClient;
  let id = '';
  let agent: ReturnType<Fleet['agent']>;

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    // A heartbeat timeout (3 s) shorter than the gRPC keepalive's (10 s pings, 5 s to answer):
    // the node goes DOWN before the connection to the frozen agent is given up.
    const c1 = await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: 3_000 });
    await waitForLeader([c1.address]);
    const c2 = await fleet.coordinator({ etcd: etcd.endpoints, heartbeatTimeoutMs: 3_000 });
    // The follower serving too (a full run once opened the follower's stream before it listened).
    await waitForLeader([c1.address, c2.address]);
    agent = fleet.agent({ coordinators: [c1.address, c2.address], nodeId: node, extra: ['--port-range', laneRange('30640-30659')] });
    leader = new AdminClient([c1.address]);
    follower = new AdminClient([c2.address]);
    await waitFor('node READY', async () => (await leader.listNodes()).nodes.length === 1, 20_000);
    await leader.applyApp({ name: 'ticker', components: [{
      name: 'talker', image: 'tessera/busybox:local', command: ['sh', '-c'], args: ['while true; do echo tick; sleep 0.2; done'],
      resources: { cpuMillis: 10, memoryMib: 16 }, instances: 1, stopGraceMs: 100,
    }] });
    id = await waitFor('running', async () => (await leader.listInstances('ticker')).instances.find((i) => i.state === 'INSTANCE_STATE_RUNNING')?.id, 30_000, 200);
  });

  after(async () => {
    leader?.close();
    follower?.close();
    agent?.resume();
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${node}`);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  it('ends a followed log whose agent stops answering (frozen) once its node goes DOWN, with UNAVAILABLE naming it, through a follower too', async () => {
    const errorOf = (admin: AdminClient) => new Promise<grpc.ServiceError | undefined>((resolve) => {
      const s = admin.instanceLogs({ instanceId: id, tailLines: 1, follow: true });
      s.on('data', () => {});
      s.on('end', () => resolve(undefined));
      s.on('error', (e: grpc.ServiceError) => resolve(e));
    });
    const viaLeader = errorOf(leader);
    const viaFollower = errorOf(follower);
    await new Promise((r) => setTimeout(r, 500));
    agent.pause(); // SIGSTOP: its connections stay open, it answers nothing
    try {
      const t0 = Date.now();
      for (const err of await Promise.all([viaLeader, viaFollower])) {
        expect(err?.code).to.equal(grpc.status.UNAVAILABLE);
        expect(err?.details).to.equal(`node ${node} went DOWN (its agent stopped reporting) during the stream from instance ${id}: its agent cannot be asked now`);
      }
      // The heartbeat timeout (3 s) and the watch's half second.
      expect(Date.now() - t0).to.be.within(2_000, 4_900);
    } finally {
      agent.resume();
    }
  });

});
