// Mutual TLS: etcd with client certificates, coordinators and agents with certificates from one
// CA. An agent without a valid certificate is refused; an agent cannot report as another node;
// agent certificates cannot call Admin; without certificates a process refuses to start unless
// told --insecure-dev.
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tlsSocket from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { clientCredentials } from '../../common/grpc';
import { tesseraProto } from '../../common/proto';
import { LiveTls, loadTls } from '../../common/tls';
import { KEY_ACTIVATE_MS } from '../../common/relay-ticket';
import { repoRoot } from '../../common/version';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { freePort, waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { pastEvents } from '../helpers/cluster';
import { startEcho } from '../helpers/echo';
import { TcpProxy } from '../helpers/tcp-proxy';
import type { ChildProcess } from 'node:child_process';
import { laneRange } from '../helpers/lane';
import { scrapeText } from '../helpers/scrape';

describe('mutual TLS', function () {
  this.timeout(90_000);
  const certs = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
  const other = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-other-ca-'));
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let address = '';
  let coord: { pid: number; logFile: string };
  let tn1: { logFile: string } | undefined;
  let tn1Metrics = 0;
  let echo: ChildProcess | undefined;
  const f = (n: string) => path.join(certs, n);
  const material = (name: string, dir = certs) => loadTls({ tlsCa: path.join(certs, 'ca.pem'), tlsCert: path.join(dir, `${name}.pem`), tlsKey: path.join(dir, `${name}-key.pem`) });
  /** Certificates from the cluster's CA, reissued with make-certs.sh --days in a copy of the CA dir. */
  const reissue = (days: string, node: string) => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
    for (const n of ['ca.pem', 'ca-key.pem']) fs.copyFileSync(f(n), path.join(d, n));
    execFileSync('bash', [path.join(repoRoot(), 'scripts/make-certs.sh'), d, '--nodes', node, '--days', days]);
    return d;
  };
  /** An app of one echo instance (in a container) and a 2-stage pipeline through it, registered. */
  const echoPipeline = async (a: AdminClient, app: string, kind: string, pipeline: string, onNode?: string) => {
    await a.applyApp({ name: app, components: [{
      name: 'e', kind, image: 'tessera/components:local', command: ['node', '/app/echo.js'], env: { KIND: kind }, ports: [{ name: 'grpc' }],
      constraints: onNode ? [{ label: 'keys', op: '=', value: onNode }] : [],
      health: { type: 'tcp', port: 'grpc', intervalMs: 500, timeoutMs: 400 }, resources: { cpuMillis: 10, memoryMib: 64 }, instances: 1, stopGraceMs: 100,
    }] });
    await a.applyPipeline({ name: pipeline, stages: [{ name: 'a', kind }, { name: 'b', kind }] });
    await waitFor(`${kind} registered`, async () => (await a.listComponents(kind)).instances.length === 1, 30_000, 200);
  };
  const admin = (token = 'op-secret') => new AdminClient([address], { tls: material('admin'), timeoutMs: 3_000, metadata: { authorization: `Bearer ${token}` } });

  before(async () => {
    execFileSync('bash', [path.join(repoRoot(), 'scripts/make-certs.sh'), certs, '--nodes', 'tn1,tn2,tn3']);
    execFileSync('bash', [path.join(repoRoot(), 'scripts/make-certs.sh'), other, '--nodes', 'tn1']);
    etcd = await EtcdCluster.start(1, certs);
    fleet = new Fleet();
    const tokens = path.join(certs, 'tokens.yaml');
    fs.writeFileSync(tokens, 'tokens:\n  - { name: ops, role: operator, token: op-secret }\n  - { name: viewer, role: read-only, token: view-secret }\n');
    // relayKeyPush=error(1): the first relay key rotation is not pushed to the agents (the relay key test);
    // relayKeyPushTo@tn3=error(1): the first one while tn3 is attached is not pushed to tn3 (the Welcome test).
    const c = await fleet.coordinator({ etcd: etcd.endpoints, certs, extra: ['--etcd-ca', f('ca.pem'), '--etcd-cert', f('coordinator.pem'), '--etcd-key', f('coordinator-key.pem'), '--tokens-file', tokens],
      env: { TESSERA_FAILPOINTS: 'relayKeyPush=error(1),relayKeyPushTo@tn3=error(1)' } });
    address = c.address;
    coord = { pid: c.pid!, logFile: c.logFile };
    const a = admin();
    await waitFor('a leader over TLS', async () => !!(await a.getClusterStatus()).leader?.id, 20_000, 200);
    a.close();
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });
  after(async () => {
    await fleet?.stop();
    for (const app of ['tlsjobs', 'tlskeys', 'tlswelcome']) removeContainers(`tessera.app=${app}`);
    await etcd?.stop();
    fs.rmSync(certs, { recursive: true, force: true });
    fs.rmSync(other, { recursive: true, force: true });
  });

  it('registers an agent by its certificate (node id = CN), with etcd over TLS too', async () => {
    tn1Metrics = await freePort();
    tn1 = fleet.agent({ coordinators: [address], nodeId: 'tn1', tls: [f('ca.pem'), f('agent-tn1.pem'), f('agent-tn1-key.pem')], extra: ['--metrics-listen', `127.0.0.1:${tn1Metrics}`] });
    const a = admin();
    try {
      await waitFor('tn1 READY', async () => (await a.getNode('tn1')).state === 'NODE_STATE_READY', 20_000, 200);
      const st = await a.getClusterStatus();
      expect(st.etcd[0].healthy).to.equal(true);
    } finally {
      a.close();
    }
  });

  it('with TLS on, a read-only token cannot apply and an operator token can', async () => {
    const spec = { name: 'tlsapp', components: [{ name: 'x', image: 'tessera/busybox:local', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 0 }] };
    const viewer = admin('view-secret');
    const err = await viewer.applyApp(spec).catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    viewer.close();
    expect(err.code).to.equal(grpc.status.PERMISSION_DENIED);
    const ops = admin('op-secret');
    expect((await ops.applyApp(spec)).app!.name).to.equal('tlsapp');
    ops.close();
  });

  it('runs a job through an agent step relay over mTLS, and a direct job from an admin certificate with its lease ticket; the relay refuses other certificates and admin ones without a ticket', async () => {
    const a = admin();
    try {
      await echoPipeline(a, 'tlsjobs', 'tls-echo', 'tlsp');
      const j = await a.submitJob({ pipeline: 'tlsp', payload: Buffer.from('over mTLS'), wait: true });
      expect(j.state, j.reason).to.equal('JOB_STATE_SUCCEEDED');
      expect(j.result.toString()).to.equal('over mTLS');
      const relay = (await a.getNode('tn1')).endpoint;
      type Relayed = { err: grpc.ServiceError | null; res?: { ok: boolean; payload: Buffer; error: string } };
      const call = (m: ReturnType<typeof material>, req: Record<string, unknown> = { jobId: 'x', route: [] }) => new Promise<Relayed>((resolve) => {
        const c = new (tesseraProto().StepRelay)(relay, clientCredentials(m));
        c.Relay(req, { deadline: new Date(Date.now() + 3_000) }, (err: grpc.ServiceError | null, res: Relayed['res']) => { c.close(); resolve({ err, res }); });
      });
      // An etcd certificate may not hand it a route; an admin certificate only with a lease ticket.
      expect((await call(material('etcd'))).err?.code, 'an etcd certificate').to.equal(grpc.status.PERMISSION_DENIED);
      // The agent says so (once a minute at most) and counts it.
      await waitFor('the refusal in the agent\'s log', async () => fs.readFileSync(tn1!.logFile, 'utf8').split('\n').some((l) => l.includes('"msg":"job relay refused for its caller') && l.includes('"reason":"certificate"')), 5_000, 100);
      expect(await scrapeText(tn1Metrics)).to.match(/^tessera_agent_relays_refused_total\{reason="certificate"\} 1$/m);
      const bare = await call(material('admin'));
      expect([bare.err?.code, bare.err?.details], 'an admin certificate without a ticket').to.satisfy(([c, d]: [number, string]) => c === grpc.status.PERMISSION_DENIED && /lease ticket/.test(d));
      const directJobs = a.directJobs();
      try {
        const dj = await directJobs.submit({ pipeline: 'tlsp', payload: Buffer.from('direct over mTLS'), wait: true });
        expect([dj.state, dj.flow, dj.result.toString()], dj.reason).to.deep.equal(['JOB_STATE_SUCCEEDED', 'direct', 'direct over mTLS']);
        // Run by this client along the leased route (the agent took its ticket), not taken over by the leader.
        expect(directJobs.counts).to.deep.include({ direct: 1, takenOver: 0 });
      } finally {
        directJobs.close();
      }
      // A lease's ticket, by hand: it covers the lease's job ids only. A read-only token gets no lease.
      type Answer = { errorCode: number; error: string; lease?: { idPrefix: string; relayTicket: string; routes: { hops: unknown[] }[] }; job?: { state: string; result: Buffer } };
      const rawDirect = (token: string) => {
        const md = new grpc.Metadata();
        md.set('authorization', `Bearer ${token}`);
        const c = new (tesseraProto().Admin)(address, clientCredentials(material('admin')));
        const s = c.DirectJobs(md) as unknown as grpc.ClientDuplexStream<unknown, { answers: (Answer & { callId: string })[] }>;
        const waiting = new Map<number, { resolve: (a: Answer) => void; reject: (e: Error) => void }>();
        s.on('data', (b) => { for (const a of b.answers) waiting.get(Number(a.callId))?.resolve(a); });
        s.on('error', (e: Error) => { for (const w of waiting.values()) w.reject(e); });
        let next = 1;
        return {
          call: (x: Record<string, unknown>) => new Promise<Answer>((resolve, reject) => {
            const id = next++;
            waiting.set(id, { resolve, reject });
            s.write({ calls: [{ ...x, callId: id }] });
          }),
          close: () => { s.cancel(); c.close(); },
        };
      };
      const viewer = rawDirect('view-secret');
      const viewerErr = await viewer.call({ lease: { pipeline: 'tlsp' } }).then(() => undefined, (e: grpc.ServiceError) => e);
      viewer.close();
      expect(viewerErr?.code, 'a read-only token').to.equal(grpc.status.PERMISSION_DENIED);
      const raw = rawDirect('op-secret');
      const l = (await raw.call({ lease: { pipeline: 'tlsp' } })).lease!;
      expect(l.relayTicket).to.match(/^[0-9a-f]{12}\.[0-9a-z]+\.[\w-]+$/);
      const hop = { jobId: `${l.idPrefix}.0`, route: l.routes[0].hops, payload: Buffer.from('ticketed'), budgetMs: 3_000, leaseTicket: l.relayTicket };
      const ticketed = await call(material('admin'), hop);
      expect([ticketed.err?.code, ticketed.res?.ok, ticketed.res?.payload.toString()], ticketed.res?.error).to.deep.equal([undefined, true, 'ticketed']);
      const stolen = await call(material('admin'), { ...hop, jobId: 'j-other-prefix.0' });
      expect([stolen.err?.code, stolen.err?.details]).to.satisfy(([c, d]: [number, string]) => c === grpc.status.PERMISSION_DENIED && /not valid for job ids j-other-prefix/.test(d));
      const forged = await call(material('admin'), { ...hop, leaseTicket: l.relayTicket.replace(/\.[0-9a-z]+\./, `.${(Date.now() + 3_600_000).toString(36)}.`) });
      expect(forged.err?.code, 'a ticket whose expiry was changed').to.equal(grpc.status.PERMISSION_DENIED);
      // On a RelayStream (what a direct client uses) the refusal is a failed relay that carries the
      // job's input, so that the leader can run the job with it; the same stream then takes the
      // lease's own jobs, its ticket given once.
      const streamed = await new Promise<{ ok: boolean; errorCode: number; error: string; failedInput: Buffer; payload: Buffer }[]>((resolve, reject) => {
        const c = new (tesseraProto().StepRelay)(relay, clientCredentials(material('admin')));
        const st = c.RelayStream() as unknown as grpc.ClientDuplexStream<unknown, { results: { callId: string; ok: boolean; errorCode: number; error: string; failedInput: Buffer; payload: Buffer }[] }>;
        const got = new Map<number, { ok: boolean; errorCode: number; error: string; failedInput: Buffer; payload: Buffer }>();
        st.on('data', (b) => {
          for (const r of b.results) got.set(Number(r.callId), r);
          if (got.size === 3) {
            st.cancel();
            c.close();
            resolve([1, 2, 3].map((i) => got.get(i)!));
          }
        });
        st.on('error', (e: grpc.ServiceError) => { if (e.code !== grpc.status.CANCELLED) reject(e); });
        st.write({ requests: [
          { ...hop, callId: 1, jobId: 'j-other-prefix.0', payload: Buffer.from('not yours') },
          { ...hop, callId: 2, jobId: `${l.idPrefix}.5`, payload: Buffer.from('first') },
          { ...hop, callId: 3, jobId: `${l.idPrefix}.6`, payload: Buffer.from('second'), leaseTicket: '' },
        ] });
      });
      expect([streamed[0].ok, grpc.status[streamed[0].errorCode], streamed[0].failedInput.toString()], streamed[0].error).to.deep.equal([false, 'PERMISSION_DENIED', 'not yours']);
      expect(streamed.slice(1).map((r) => [r.ok, r.payload.toString()])).to.deep.equal([[true, 'first'], [true, 'second']]);
      // A relay that refused the client (an agent without the leader's key yet: nothing ran at the
      // failed stage) is run by the leader, not failed as a step would be.
      const started = await raw.call({ start: { jobId: `${l.idPrefix}.1`, pipeline: 'tlsp', route: 0, payload: Buffer.from('refused relay'), budgetMs: 10_000 } });
      expect(started.errorCode, started.error).to.equal(0);
      const ended = await raw.call({ end: { jobId: `${l.idPrefix}.1`, result: { ok: false, failedIndex: 0, errorCode: grpc.status.PERMISSION_DENIED, error: 'lease ticket signed by key x, which this agent has not been given' } } });
      expect([ended.errorCode, ended.job?.state, ended.job?.result.toString()], ended.error).to.deep.equal([0, 'JOB_STATE_SUCCEEDED', 'refused relay']);
      raw.close();
      expect((await call(material('agent-tn1', other))).err?.code, 'a certificate from another CA').to.equal(grpc.status.UNAVAILABLE);
      // Instance logs: the coordinator asks the agent over mTLS; the agent serves them to coordinator certificates only.
      const inst = (await a.listInstances('tlsjobs')).instances[0].id;
      const logs = await new Promise<string>((resolve, reject) => {
        let out = '';
        const s = a.instanceLogs({ instanceId: inst });
        s.on('data', (c: { data: Buffer }) => (out += c.data.toString()));
        s.on('end', () => resolve(out));
        s.on('error', reject);
      });
      // (The echo component writes nothing: the stream ending without an error is the check.)
      expect(logs).to.be.a('string');
      // And a command in it (ExecInstance), the same way; AgentExec serves coordinator certificates only.
      const ran = await new Promise<string>((resolve, reject) => {
        let out = '';
        const s = a.execInstance({ instanceId: inst, command: ['node', '-e', 'process.stdout.write("exec over mTLS")'] });
        s.on('data', (c: { data: Buffer; exited: boolean; exitCode: number }) => (out += c.exited ? ` exit ${c.exitCode}` : c.data.toString()));
        s.on('end', () => resolve(out));
        s.on('error', reject);
      });
      expect(ran).to.equal('exec over mTLS exit 0');
      const direct = (m: ReturnType<typeof material>, exec = false) => new Promise<grpc.ServiceError | undefined>((resolve) => {
        const c = exec ? new (tesseraProto().AgentExec)(relay, clientCredentials(m)) : new (tesseraProto().AgentLogs)(relay, clientCredentials(m));
        const opts = { deadline: new Date(Date.now() + 3_000) };
        const s = exec ? (c as InstanceType<ReturnType<typeof tesseraProto>['AgentExec']>).ExecInstance({ instanceId: inst, command: ['true'] }, opts)
          : (c as InstanceType<ReturnType<typeof tesseraProto>['AgentLogs']>).InstanceLogs({ instanceId: inst }, opts);
        s.on('data', () => {});
        s.on('end', () => { c.close(); resolve(undefined); });
        s.on('error', (e: grpc.ServiceError) => { c.close(); resolve(e); });
      });
      expect((await direct(material('admin')))?.code, 'logs with an admin certificate').to.equal(grpc.status.PERMISSION_DENIED);
      expect((await direct(material('agent-tn1')))?.code, 'logs with an agent certificate').to.equal(grpc.status.PERMISSION_DENIED);
      expect((await direct(material('admin'), true))?.code, 'exec with an admin certificate').to.equal(grpc.status.PERMISSION_DENIED);
      expect((await direct(material('agent-tn1'), true))?.code, 'exec with an agent certificate').to.equal(grpc.status.PERMISSION_DENIED);
      // Interactive, the same: through the coordinators over mTLS; not straight to the agent with an agent certificate.
      const typed = await new Promise<string>((resolve, reject) => {
        let out = '';
        const s = a.execInteractive();
        s.on('data', (c: { data: Buffer; exited: boolean; exitCode: number }) => (out += c.exited ? ` exit ${c.exitCode}` : c.data.toString()));
        s.on('end', () => resolve(out));
        s.on('error', reject);
        s.write({ start: { instanceId: inst, command: ['node', '-e', 'process.stdin.pipe(process.stdout)'] } });
        s.write({ stdin: Buffer.from('typed over mTLS') });
        s.write({ stdinClosed: true });
      });
      expect(typed).to.equal('typed over mTLS exit 0');
      const agentTyped = await new Promise<grpc.ServiceError | undefined>((resolve) => {
        const c = new (tesseraProto().AgentExec)(relay, clientCredentials(material('agent-tn1')));
        const s = c.ExecInteractive({ deadline: new Date(Date.now() + 3_000) });
        s.on('data', () => {});
        s.on('end', () => { c.close(); resolve(undefined); });
        s.on('error', (e: grpc.ServiceError) => { c.close(); resolve(e); });
        s.write({ start: { instanceId: inst, command: ['true'] } });
      });
      expect(agentTyped?.code, 'interactive exec with an agent certificate').to.equal(grpc.status.PERMISSION_DENIED);
      await a.deleteApp('tlsjobs');
    } finally {
      a.close();
    }
  });

  // The relay key tests: a process's JSON log lines; one direct job (its own client) and how it went.
  const logOf = (p: { logFile: string }) => fs.readFileSync(p.logFile, 'utf8').split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return {}; } });
  const directJob = async (a: AdminClient, pipeline: string, payload: string) => {
    const dj = a.directJobs();
    try {
      const j = await dj.submit({ pipeline, payload: Buffer.from(payload), wait: true });
      return { state: j.state, reason: j.reason, result: j.result.toString(), takenOver: dj.counts.takenOver, direct: dj.counts.direct };
    } finally {
      await dj.close();
    }
  };
  /**
   * SIGHUP: the n-th relay key rotation of this file; resolves with its key id once the key signs
   * (the leader logs the key as it pushes it; it signs KEY_ACTIVATE_MS later). `pushed` runs once
   * the push has gone out, before the wait.
   */
  const rotate = async (n: number, pushed?: () => void | Promise<void>) => {
    process.kill(coord.pid, 'SIGHUP');
    const rotating = await waitFor(`rotation ${n}`, async () => logOf(coord).filter((l) => String(l.msg).startsWith('relay ticket key rotating'))[n - 1], 10_000, 50);
    const signsAt = Date.now() + KEY_ACTIVATE_MS + 500;
    await pushed?.();
    await new Promise((r) => setTimeout(r, Math.max(0, signsAt - Date.now())));
    return String(rotating.keyId);
  };

  it('rotates the relay ticket key on SIGHUP: agents get it before it signs and direct jobs go on; an agent that missed it refuses the tickets and the leader runs those jobs', async function () {
    this.timeout(120_000);
    const a = admin();
    const agentLog = () => logOf(tn1!);
    const direct = (payload: string) => directJob(a, 'tlsk', payload);
    const ticketRefusals = async () => Number(/^tessera_agent_relays_refused_total\{reason="ticket"\} (\d+)$/m.exec(await scrapeText(tn1Metrics))?.[1] ?? 0);
    try {
      await echoPipeline(a, 'tlskeys', 'tls-keys', 'tlsk');
      expect(await direct('before'), 'the first key').to.deep.include({ state: 'JOB_STATE_SUCCEEDED', result: 'before', direct: 1, takenOver: 0 });

      // The first rotation's key never reaches the agent (the failpoint): once it signs, the agent
      // refuses the leases' tickets, the client reports the refused relay, and the leader runs the job.
      const missed = await rotate(1);
      expect(logOf(coord).some((l) => l.msg === 'relay ticket key not given to the agents' && l.keyId === missed), 'the push failed').to.equal(true);
      const refusedBefore = await ticketRefusals();
      expect(await direct('missed'), 'a key the agent was not given').to.deep.include({ state: 'JOB_STATE_SUCCEEDED', result: 'missed', direct: 1, takenOver: 1 });
      expect(await ticketRefusals(), 'the agent counts the refusal').to.equal(refusedBefore + 1);

      // The second reaches it before it signs: direct jobs run along the route again, none taken over.
      const given = await rotate(2);
      expect(agentLog().some((l) => String(l.msg).startsWith('relay ticket key received') && l.keyId === given), 'the agent got the key').to.equal(true);
      expect(await direct('after'), 'the rotated key').to.deep.include({ state: 'JOB_STATE_SUCCEEDED', result: 'after', direct: 1, takenOver: 0 });
      const reloaded = logOf(coord).filter((l) => String(l.msg).startsWith('SIGHUP: settings reloaded')).pop()!;
      expect(reloaded.applied).to.include('relayKey');
      await a.deleteApp('tlskeys');
    } finally {
      a.close();
    }
  });

  it('an agent that missed a key gets it with its next Welcome, and one that attaches while a key is pending gets that key before it signs: their direct jobs run along the route', async function () {
    this.timeout(120_000);
    // tn3 reaches the leader through a proxy the test breaks: its stream ends and it attaches
    // again (the agent process keeps running, and so does its instance).
    const proxy = new TcpProxy(Number(address.split(':').pop()));
    await proxy.start();
    const tn3 = fleet.agent({ coordinators: [proxy.address], nodeId: 'tn3', tls: [f('ca.pem'), f('agent-tn3.pem'), f('agent-tn3-key.pem')], extra: ['--labels', 'keys=tn3', '--port-range', laneRange('30490-30499')] });
    const attached = () => logOf(tn3).filter((l) => l.msg === 'attached to leader').length;
    const reattach = async () => {
      const before = attached();
      proxy.breakLink();
      proxy.restore();
      await waitFor('tn3 attached again', async () => attached() > before, 15_000, 100);
    };
    const a = admin();
    const direct = (payload: string) => directJob(a, 'tlsw', payload);
    const routable = () => waitFor('tn3\'s instance routable', async () => (await a.listComponents('tls-welcome')).instances.some((i) => i.nodeId === 'tn3' && i.state === 'routable'), 15_000, 100);
    try {
      await waitFor('tn3 READY', async () => (await a.getNode('tn3')).state === 'NODE_STATE_READY', 20_000, 200);
      await echoPipeline(a, 'tlswelcome', 'tls-welcome', 'tlsw', 'tn3');
      await routable();
      expect(await direct('before'), 'the key tn3 attached with').to.deep.include({ state: 'JOB_STATE_SUCCEEDED', result: 'before', direct: 1, takenOver: 0 });

      // Rotation 3 goes to tn1 but not to tn3 (relayKeyPushTo@tn3): tn3 refuses the new key's tickets.
      const missed = await rotate(3);
      expect(logOf(coord).some((l) => l.msg === 'relay ticket key not given to the agent' && l.node === 'tn3' && l.keyId === missed), 'withheld from tn3').to.equal(true);
      expect(await direct('missed'), 'a key tn3 was not given').to.deep.include({ state: 'JOB_STATE_SUCCEEDED', result: 'missed', direct: 1, takenOver: 1 });

      // Its stream breaks and it attaches again: the Welcome carries the key that signs.
      await reattach();
      await waitFor('the key with the Welcome', async () => logOf(tn3).some((l) => String(l.msg).startsWith('relay ticket key received with the leader\'s welcome') && l.keyId === missed), 5_000, 100);
      await routable();
      expect(await direct('welcomed'), 'the key from the Welcome').to.deep.include({ state: 'JOB_STATE_SUCCEEDED', result: 'welcomed', direct: 1, takenOver: 0 });

      // Rotation 4 is pushed while tn3 is away (its stream broken, the leader has let it go); it
      // attaches again within the 5 s before the key signs and gets the key right after its
      // Welcome (which still carries the key that signs until then).
      const away = attached();
      proxy.breakLink();
      await waitFor('tn3 let go', async () => !(await a.getNode('tn3')).connectedTo, 5_000, 50);
      const pending = await rotate(4, async () => {
        proxy.restore();
        await waitFor('tn3 attached again', async () => attached() > away, 4_000, 50);
      });
      expect(logOf(tn3).some((l) => String(l.msg).startsWith('relay ticket key received (the leader rotated it)') && l.keyId === pending), 'the pending key after the Welcome').to.equal(true);
      await routable();
      expect(await direct('pending'), 'the key given while pending').to.deep.include({ state: 'JOB_STATE_SUCCEEDED', result: 'pending', direct: 1, takenOver: 0 });
      await a.deleteApp('tlswelcome');
    } finally {
      await tn3.kill('SIGKILL');
      await proxy.stop();
      // tn3 leaves the fleet: the later tests place on tn1.
      await waitFor('tn3 DOWN', async () => (await a.getNode('tn3')).state === 'NODE_STATE_DOWN', 20_000, 200).catch(() => undefined);
      await a.removeNode('tn3', 'test over').catch(() => undefined);
      a.close();
    }
  });

  it('refuses an agent without a certificate, or with one from another CA', async () => {
    const gw = (creds: grpc.ChannelCredentials) => new (tesseraProto().AgentGateway)(address, creds);
    const tryHello = (creds: grpc.ChannelCredentials) => new Promise<grpc.ServiceError>((resolve) => {
      const c = gw(creds);
      const call = c.Connect({ deadline: Date.now() + 3_000 });
      call.on('error', (e: grpc.ServiceError) => { c.close(); resolve(e); });
      call.on('data', () => {});
      call.write({ hello: { nodeId: 'tn1', hostname: 'h' } });
    });
    const plain = await tryHello(grpc.credentials.createInsecure());
    expect(plain.code).to.equal(grpc.status.UNAVAILABLE);
    const foreign = await tryHello(clientCredentials(loadTls({ tlsCa: f('ca.pem'), tlsCert: path.join(other, 'agent-tn1.pem'), tlsKey: path.join(other, 'agent-tn1-key.pem') })));
    expect(foreign.code).to.equal(grpc.status.UNAVAILABLE);
  });

  it('refuses an agent that reports as another node', async () => {
    const c = new (tesseraProto().AgentGateway)(address, clientCredentials(material('agent-tn2')));
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      const call = c.Connect();
      call.on('error', resolve);
      call.on('data', () => {});
      call.write({ hello: { nodeId: 'tn1', hostname: 'h' } });
    });
    c.close();
    expect(err.code).to.equal(grpc.status.PERMISSION_DENIED);
    expect(err.details).to.equal('the certificate is for node "tn2"; it cannot report as "tn1"');
  });

  it('does not let agent certificates call Admin', async () => {
    const c = new AdminClient([address], { tls: material('agent-tn1') });
    const err = await c.listNodes().catch((e: grpc.ServiceError) => e) as grpc.ServiceError;
    c.close();
    expect(err.code).to.equal(grpc.status.PERMISSION_DENIED);
    expect(err.details).to.match(/agent certificates cannot call Admin/);
  });

  it('without tokens names the admin certificate (its CN) as who made a write, through a follower too, whatever the client claims', async () => {
    // A second cluster on the same etcd (its own prefix), without a tokens file.
    const extra = ['--etcd-ca', f('ca.pem'), '--etcd-cert', f('coordinator.pem'), '--etcd-key', f('coordinator-key.pem'), '--etcd-prefix', '/tessera-cn/'];
    const lead = await fleet.coordinator({ etcd: etcd.endpoints, certs, id: 'cn-1', extra });
    const claim = { 'tessera-caller': 'mallory' };
    const direct = new AdminClient([lead.address], { tls: material('admin'), timeoutMs: 3_000, metadata: claim });
    await waitFor('cn-1 leads', async () => (await direct.getClusterStatus().catch(() => undefined))?.leader?.id === 'cn-1', 20_000, 200);
    const follower = await fleet.coordinator({ etcd: etcd.endpoints, certs, id: 'cn-2', extra });
    const forwarded = new AdminClient([follower.address], { tls: material('admin'), timeoutMs: 3_000, metadata: claim });
    try {
      await waitFor('cn-2 answering', async () => (await forwarded.getClusterStatus().catch(() => undefined))?.leader?.id === 'cn-1', 20_000, 200);
      const app = (name: string) => ({ name, components: [{ name: 'x', image: 'tessera/busybox:local', resources: { cpuMillis: 10, memoryMib: 16 }, instances: 0 }] });
      await direct.applyApp(app('cn-direct'));
      await forwarded.applyApp(app('cn-forwarded'));
      const by = new Map((await pastEvents(direct, ['app.applied'])).map((e) => [e.subject, e.fields?.by]));
      expect(by.get('cn-direct')).to.equal('admin');
      expect(by.get('cn-forwarded')).to.equal('admin');
      // A SubmitJobs stream on the follower, forwarded over mTLS on the follower's own stream:
      // the job runs on the leader and names the admin certificate as its submitter.
      const started = await startEcho('cn-echo');
      echo = started.proc;
      await direct.registerComponent({ instanceId: 'cn-echo-1', kind: 'cn-echo', endpoint: `127.0.0.1:${started.port}`, ttlMs: 60_000 });
      await direct.applyPipeline({ name: 'cn-p', stages: [{ name: 'echo', kind: 'cn-echo' }] });
      const raw = new (tesseraProto().Admin)(follower.address, clientCredentials(material('admin')));
      try {
        const stream = raw.submitJobs(new grpc.Metadata({}), {});
        const outcome = await new Promise<{ job?: { state?: string; submittedBy?: string }; error?: string }>((resolve, reject) => {
          stream.on('data', (m: { outcomes: { job?: { state?: string; submittedBy?: string }; error?: string }[] }) => resolve(m.outcomes[0]));
          stream.on('error', reject);
          stream.write({ submissions: [{ callId: 1, request: { pipeline: 'cn-p', payload: Buffer.from('x'), wait: true } }] });
        });
        stream.cancel();
        expect(outcome.job?.state, JSON.stringify(outcome)).to.equal('JOB_STATE_SUCCEEDED');
        expect(outcome.job?.submittedBy).to.equal('admin');
      } finally {
        raw.close();
      }
    } finally {
      echo?.kill('SIGKILL');
      direct.close();
      forwarded.close();
      await follower.kill('SIGTERM');
      await lead.kill('SIGTERM');
    }
  });

  it('refuses to start with an expired certificate (exit 2, saying which and when); one near its end starts with a warning and its expiry as a metric', async () => {
    const expired = reissue('-1', 'tn8');
    const soon = reissue('10', 'tn7');
    try {
      for (const [bin, cert, other] of [['agent', 'agent-tn8', '--coordinators'], ['coordinator', 'coordinator', '--etcd-endpoints']]) {
        const r = spawnSync(process.execPath, [path.join(repoRoot(), `dist/${bin}/main.js`), '--tls-ca', f('ca.pem'), '--tls-cert', path.join(expired, `${cert}.pem`),
          '--tls-key', path.join(expired, `${cert}-key.pem`), other, '127.0.0.1:1'], { encoding: 'utf8', timeout: 20_000 });
        expect(r.status, `${bin}: ${r.stderr}`).to.equal(2);
        expect(r.stderr).to.match(new RegExp(`tlsCert: the certificate in ${expired}/${cert}\\.pem expired on \\d{4}-\\d\\d-\\d\\dT`));
      }
      const port = await freePort();
      const agent = fleet.agent({ coordinators: [address], nodeId: 'tn7', tls: [f('ca.pem'), path.join(soon, 'agent-tn7.pem'), path.join(soon, 'agent-tn7-key.pem')], extra: ['--metrics-listen', `127.0.0.1:${port}`] });
      const warning = await waitFor('the warning', async () => fs.readFileSync(agent.logFile, 'utf8').split('\n').find((l) => l.includes('TLS certificate expires soon')), 15_000, 100);
      expect(JSON.parse(warning)).to.include({ level: 'warn', certificate: 'cert', daysLeft: 9 });
      const notAfter = Date.parse(new X509Certificate(fs.readFileSync(path.join(soon, 'agent-tn7.pem'))).validTo) / 1000;
      const metrics = await waitFor('metrics served', async () => (await fetch(`http://127.0.0.1:${port}/metrics`).then((res) => res.text()).catch(() => undefined)), 15_000, 100);
      expect(metrics).to.contain(`tessera_tls_certificate_expiry_timestamp_seconds{certificate="cert"} ${notAfter}`);
      expect(metrics).to.match(/tessera_tls_certificate_expiry_timestamp_seconds\{certificate="ca"\} \d+/);
      await agent.kill('SIGTERM');
    } finally {
      for (const d of [expired, soon]) fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('trusts a CA bundle (old and new CA in one file), as a CA change goes: agents of either CA attach', async () => {
    // Certificates for two more nodes: tn6 from the cluster's CA, tn5 from the other (the new) CA.
    const oldDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
    const newDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
    try {
      for (const [dir, from, node] of [[oldDir, certs, 'tn6'], [newDir, other, 'tn5']]) {
        for (const n of ['ca.pem', 'ca-key.pem']) fs.copyFileSync(path.join(from, n), path.join(dir, n));
        execFileSync('bash', [path.join(repoRoot(), 'scripts/make-certs.sh'), dir, '--nodes', node]);
      }
      const bundle = path.join(oldDir, 'bundle.pem');
      fs.writeFileSync(bundle, Buffer.concat([fs.readFileSync(f('ca.pem')), fs.readFileSync(path.join(other, 'ca.pem'))]));
      // A coordinator that trusts both (its own certificate still from the old CA) takes the lead.
      const c2 = await fleet.coordinator({ etcd: etcd.endpoints, certs, id: 'bundle', extra: ['--etcd-ca', f('ca.pem'), '--etcd-cert', f('coordinator.pem'), '--etcd-key', f('coordinator-key.pem'), '--tls-ca', bundle] });
      const byBundle = new AdminClient([c2.address], { tls: { ...material('admin'), ca: fs.readFileSync(bundle) }, timeoutMs: 3_000, metadata: { authorization: 'Bearer op-secret' } });
      try {
        await fleet.procs.find((p) => p.name === 'c1')!.kill('SIGTERM');
        await waitFor('the bundle coordinator leads', async () => (await byBundle.getClusterStatus().catch(() => undefined))?.leader?.id === 'bundle', 20_000, 200);
        for (const [dir, node] of [[oldDir, 'tn6'], [newDir, 'tn5']]) {
          fleet.agent({ coordinators: [c2.address], nodeId: node, tls: [bundle, path.join(dir, `agent-${node}.pem`), path.join(dir, `agent-${node}-key.pem`)], extra: ['--port-range', laneRange(node === 'tn6' ? '30460-30469' : '30470-30479')] });
        }
        await waitFor('both agents READY', async () => {
          const nodes = (await byBundle.listNodes()).nodes;
          return ['tn5', 'tn6'].every((n) => nodes.some((x) => x.id === n && x.state === 'NODE_STATE_READY'));
        }, 20_000, 200);
      } finally {
        byBundle.close();
      }
    } finally {
      for (const d of [oldDir, newDir]) fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('SIGHUP loads renewed certificates without a restart: new handshakes get them; a key that is not the certificate\'s, or a certificate for another node, is refused and the running ones stay', async () => {
    const first = reissue('10', 'tn9');
    const renewed = reissue('825', 'tn9');
    const stranger = reissue('825', 'tn5');
    const live = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
    const put = (from: string, name: string, as = name) => {
      for (const ext of ['.pem', '-key.pem']) fs.copyFileSync(path.join(from, `${name}${ext}`), path.join(live, `${as}${ext}`));
    };
    fs.copyFileSync(f('ca.pem'), path.join(live, 'ca.pem'));
    put(first, 'coordinator');
    put(first, 'agent-tn9');
    const notAfter = (dir: string, name: string) => new X509Certificate(fs.readFileSync(path.join(dir, `${name}.pem`))).validTo;
    // The certificate a server presents to a new connection.
    const presented = (port: number) => new Promise<string>((resolve, reject) => {
      const s = tlsSocket.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(f('ca.pem')), cert: fs.readFileSync(f('admin.pem')), key: fs.readFileSync(f('admin-key.pem')), ALPNProtocols: ['h2'], checkServerIdentity: () => undefined }, () => {
        resolve(s.getPeerCertificate().valid_to);
        s.destroy();
      });
      s.on('error', reject);
    });
    const metricsPort = await freePort();
    // A cluster of its own on the same etcd (its own prefix): it leads, and tn9 attaches to it.
    const c2 = await fleet.coordinator({ etcd: etcd.endpoints, certs: live, id: 'renew', extra: ['--etcd-ca', f('ca.pem'), '--etcd-cert', f('coordinator.pem'), '--etcd-key', f('coordinator-key.pem'), '--etcd-prefix', '/tessera-renew/', '--metrics-listen', `127.0.0.1:${metricsPort}`] });
    const agent = fleet.agent({ coordinators: [c2.address], nodeId: 'tn9', tls: [path.join(live, 'ca.pem'), path.join(live, 'agent-tn9.pem'), path.join(live, 'agent-tn9-key.pem')], extra: ['--port-range', laneRange('30480-30489')] });
    const a = new AdminClient([c2.address], { tls: material('admin'), timeoutMs: 3_000 });
    const logOf = (p: { logFile: string }) => fs.readFileSync(p.logFile, 'utf8');
    try {
      const tn9 = await waitFor('tn9 READY', async () => { const n = await a.getNode('tn9').catch(() => undefined); return n?.state === 'NODE_STATE_READY' ? n : undefined; }, 20_000, 200);
      const relayPort = Number(String(tn9.endpoint).split(':').pop());
      const coordinatorPort = Number(c2.address.split(':').pop());
      expect(await presented(coordinatorPort)).to.equal(notAfter(first, 'coordinator'));
      expect(await presented(relayPort)).to.equal(notAfter(first, 'agent-tn9'));

      // Renewed in place (make-certs.sh again, the files copied over), then systemctl reload.
      put(renewed, 'coordinator');
      put(renewed, 'agent-tn9');
      process.kill(c2.pid, 'SIGHUP');
      process.kill(agent.pid, 'SIGHUP');
      await waitFor('both reloaded', async () => [c2, agent].every((p) => logOf(p).includes('TLS certificates reloaded')), 10_000, 100);
      expect(await presented(coordinatorPort)).to.equal(notAfter(renewed, 'coordinator'));
      expect(await presented(relayPort)).to.equal(notAfter(renewed, 'agent-tn9'));
      const reloaded = logOf(c2).split('\n').find((l) => l.includes('SIGHUP: settings reloaded'))!;
      expect(JSON.parse(reloaded).applied).to.include.members(['tlsCa', 'tlsCert', 'tlsKey']);
      const metrics = await scrapeText(metricsPort);
      expect(metrics).to.contain(`tessera_tls_certificate_expiry_timestamp_seconds{certificate="cert"} ${Date.parse(notAfter(renewed, 'coordinator')) / 1000}`);
      // The agent stays attached and runs instructions over its connection (not cut by the reload).
      await waitFor('tn9 still READY', async () => (await a.getNode('tn9')).state === 'NODE_STATE_READY', 5_000, 200);

      // A key copied without its certificate: the settings do not compile, the running ones stay.
      fs.copyFileSync(path.join(first, 'coordinator-key.pem'), path.join(live, 'coordinator-key.pem'));
      process.kill(c2.pid, 'SIGHUP');
      const line = (p: { logFile: string }, msg: string) => logOf(p).split('\n').find((l) => l.includes(msg));
      const refused = await waitFor('the refusal', async () => line(c2, 'SIGHUP: the settings do not compile; the running ones stay'), 10_000, 100);
      expect(JSON.parse(refused).violations[0]).to.include({ field: 'tlsKey' });
      expect(JSON.parse(refused).violations[0].message).to.match(/is not the private key of the certificate in .*coordinator\.pem \(.*key values mismatch\)/);
      expect(await presented(coordinatorPort)).to.equal(notAfter(renewed, 'coordinator'));
      // A certificate issued for another node: refused by the agent, which keeps its own.
      put(stranger, 'agent-tn5', 'agent-tn9');
      process.kill(agent.pid, 'SIGHUP');
      const refusedByAgent = await waitFor('the agent\'s refusal', async () => line(agent, 'SIGHUP: not reloaded; the running settings stay'), 10_000, 100);
      expect(JSON.parse(refusedByAgent).violations[0].message).to.match(/is for node "tn5", and this agent is "tn9": not loaded/);
      expect(await presented(relayPort)).to.equal(notAfter(renewed, 'agent-tn9'));
      expect((await a.getNode('tn9')).state).to.equal('NODE_STATE_READY');
    } finally {
      a.close();
      await agent.kill('SIGTERM');
      await c2.kill('SIGTERM');
      for (const d of [first, renewed, stranger, live]) fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('SIGHUP reloads etcd\'s CA and client certificate: a coordinator given another CA\'s reaches no etcd, and once the right ones are copied in and it is told, it connects and leads (no restart)', async () => {
    // The etcd files a coordinator names, first a set from another CA (etcd refuses its
    // certificate, and it refuses etcd's), as after a CA change deployed to the wrong hosts.
    const live = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
    const put = (dir: string, clientDir = dir) => {
      fs.copyFileSync(path.join(dir, 'ca.pem'), path.join(live, 'etcd-ca.pem'));
      fs.copyFileSync(path.join(clientDir, 'coordinator.pem'), path.join(live, 'etcd-client.pem'));
      fs.copyFileSync(path.join(clientDir, 'coordinator-key.pem'), path.join(live, 'etcd-client-key.pem'));
    };
    // The right client certificate: the cluster CA's, valid 30 days (its expiry metric tells it from the first).
    const renewed = reissue('30', 'tn9');
    put(other);
    const metricsPort = await freePort();
    const c3 = await fleet.coordinator({ etcd: etcd.endpoints, certs, id: 'etcdrenew', extra: ['--etcd-ca', path.join(live, 'etcd-ca.pem'), '--etcd-cert', path.join(live, 'etcd-client.pem'), '--etcd-key', path.join(live, 'etcd-client-key.pem'), '--etcd-prefix', '/tessera-etcdrenew/', '--metrics-listen', `127.0.0.1:${metricsPort}`] });
    const a = new AdminClient([c3.address], { tls: material('admin'), timeoutMs: 3_000 });
    const logOf = () => fs.readFileSync(c3.logFile, 'utf8');
    const status = async () => a.getClusterStatus().catch(() => undefined);
    try {
      await waitFor('the Admin API up', async () => !!(await status()), 20_000, 200);
      // Long enough for several handshakes (reconnects back off to 1 s): none gets through.
      await new Promise((r) => setTimeout(r, 3_000));
      const before = await status();
      expect(before?.leader?.id ?? '', 'a leader with etcd certificates from another CA').to.not.equal('etcdrenew');
      expect(before?.etcd?.[0]?.healthy, 'etcd as the coordinator sees it').to.not.equal(true);

      put(certs, renewed);
      process.kill(c3.pid!, 'SIGHUP');
      const reloaded = await waitFor('the reload', async () => logOf().split('\n').find((l) => l.includes('SIGHUP: settings reloaded')), 10_000, 100);
      expect(JSON.parse(reloaded).applied).to.include.members(['etcdCa', 'etcdCert', 'etcdKey']);
      expect(logOf()).to.contain('etcd client certificates reloaded: new connections to etcd use them');
      const after = await waitFor('it leads over the reloaded certificates', async () => { const st = await status(); return st?.leader?.id === 'etcdrenew' ? st : undefined; }, 20_000, 200);
      await waitFor('etcd healthy in its status', async () => (await status())?.etcd?.[0]?.healthy === true, 10_000, 200);
      expect(after.leader?.id).to.equal('etcdrenew');
      const metrics = await scrapeText(metricsPort);
      const certEnd = Date.parse(new X509Certificate(fs.readFileSync(path.join(renewed, 'coordinator.pem'))).validTo) / 1000;
      expect(metrics).to.contain(`tessera_tls_certificate_expiry_timestamp_seconds{certificate="etcd-cert"} ${certEnd}`);
    } finally {
      a.close();
      await c3.kill('SIGTERM');
      for (const d of [live, renewed]) fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('a channel from a LiveTls makes its next connection with the certificate loaded since (real gRPC over loopback)', async () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
    for (const n of ['ca.pem', 'ca-key.pem']) fs.copyFileSync(f(n), path.join(d, n));
    const liveDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-certs-'));
    const server = new grpc.Server();
    try {
      execFileSync('bash', [path.join(repoRoot(), 'scripts/make-certs.sh'), d, '--nodes', 'tn4', '--days', '10']);
      const copy = () => {
        fs.copyFileSync(path.join(d, 'agent-tn4.pem'), path.join(liveDir, 'a.pem'));
        fs.copyFileSync(path.join(d, 'agent-tn4-key.pem'), path.join(liveDir, 'a-key.pem'));
      };
      copy();
      const files = { tlsCa: f('ca.pem'), tlsCert: path.join(liveDir, 'a.pem'), tlsKey: path.join(liveDir, 'a-key.pem') };
      const liveTls = LiveTls.load(files);
      // A server that answers with the end of validity of the client certificate it was shown.
      const seen: string[] = [];
      server.addService(tesseraProto().Admin.service, {
        getClusterStatus: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
          seen.push(String((call.getAuthContext().sslPeerCertificate as { valid_to?: string } | undefined)?.valid_to));
          cb(null, {});
        },
      } as never);
      const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createSsl(fs.readFileSync(f('ca.pem')), [{ private_key: fs.readFileSync(f('coordinator-key.pem')), cert_chain: fs.readFileSync(f('coordinator.pem')) }], true), (e, p) => (e ? reject(e) : resolve(p))));
      const call = async () => {
        // A channel of its own (no shared subchannel): a new connection.
        const c = new (tesseraProto().Admin)(`127.0.0.1:${port}`, clientCredentials(liveTls), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as grpc.Client & { getClusterStatus(r: object, cb: (e: Error | null) => void): void };
        await new Promise<void>((resolve, reject) => c.getClusterStatus({}, (e) => (e ? reject(e) : resolve())));
        c.close();
      };
      await call();
      execFileSync('bash', [path.join(repoRoot(), 'scripts/make-certs.sh'), d, '--nodes', 'tn4', '--days', '825']);
      copy();
      expect(liveTls.reload()).to.equal(true);
      await call();
      expect(seen).to.have.length(2);
      expect(Date.parse(seen[1]) - Date.parse(seen[0])).to.be.greaterThan(800 * 86_400_000);
      expect(liveTls.reload()).to.equal(false); // the same files: nothing to tell the channels
    } finally {
      server.forceShutdown();
      fs.rmSync(d, { recursive: true, force: true });
      fs.rmSync(liveDir, { recursive: true, force: true });
    }
  });

  it('refuses to start without certificates unless told --insecure-dev, and warns when told', () => {
    const bin = path.join(repoRoot(), 'dist/coordinator/main.js');
    const r = spawnSync(process.execPath, [bin, '--etcd-endpoints', '127.0.0.1:1'], { encoding: 'utf8' });
    expect(r.status).to.equal(2);
    expect(r.stderr).to.contain('tlsCert: TLS is required: give tlsCa, tlsCert and tlsKey');
    const agent = spawnSync(process.execPath, [path.join(repoRoot(), 'dist/agent/main.js')], { encoding: 'utf8' });
    expect(agent.status).to.equal(2);
    expect(agent.stderr).to.contain('tlsCert: TLS is required');
    const log = fs.readFileSync(fleet.procs.find((p) => p.name === 'tn1')!.logFile, 'utf8');
    expect(log).to.not.contain('insecure-dev');
  });
});
