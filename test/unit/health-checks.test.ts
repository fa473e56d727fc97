// The agent's health checks against a real server in another process, on loopback: a check fails
// for the instance's slowness, not for a hold-up of the agent's own event loop.
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { checkTimer, grpcCheck, httpCheck, tcpCheck } from '../../agent/health';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Holds this process's event loop, as a busy host or a long collection holds the agent's. */
const holdUp = (ms: number) => { const end = Date.now() + ms; while (Date.now() < end) { /* busy */ } };
/**
 * The same from a callback of the loop's check phase, as a message handled (a Docker stats chunk, a
 * coordinator's instruction) would: the loop's next turn runs its due timers before it reads the
 * sockets. (Held from a timer's callback instead, the loop still reads its sockets first: its own
 * time was not updated since the turn began.)
 */
const holdUpAfter = (delayMs: number, ms: number) => new Promise<void>((r) => setTimeout(() => setImmediate(() => { holdUp(ms); r(); }), delayMs));

// HTTP: / answers at once, /slow after 1.5 s, /never not at all. gRPC health: SERVING.
const SERVER = `
const http = require('node:http');
const grpc = require('@grpc/grpc-js');
const { HealthImplementation } = require('grpc-health-check');
const s = http.createServer((req, res) => {
  if (req.url === '/slow') return setTimeout(() => res.end('late'), 1500);
  if (req.url === '/never') return;
  res.end('ok');
});
s.listen(0, '127.0.0.1', () => {
  const g = new grpc.Server();
  new HealthImplementation({ '': 'SERVING' }).addToServer(g);
  g.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, gport) => {
    process.stdout.write(JSON.stringify({ http: s.address().port, grpc: gport }) + '\\n');
  });
});
`;

describe('health checks and a held-up agent', function () {
  this.timeout(20_000);
  let server: ChildProcess;
  let ports: { http: number; grpc: number };

  before(async () => {
    server = spawn(process.execPath, ['-e', SERVER], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] });
    ports = await new Promise((resolve, reject) => {
      server.stdout!.once('data', (d: Buffer) => resolve(JSON.parse(d.toString())));
      server.once('exit', (code) => reject(new Error(`the test server exited (${code})`)));
    });
  });

  after(() => { server?.kill('SIGKILL'); });

  // Each: the check starts, then the agent's loop is held 400 ms from the same callback; the
  // timer (150 ms) is then due before the loop reads the connection (or the answer).
  const heldUp = <T>(check: () => Promise<T>): Promise<T> => new Promise((resolve) => setImmediate(() => {
    resolve(check());
    holdUp(400);
  }));

  it('an HTTP check whose answer came while the agent was held up passes', async () => {
    expect(await heldUp(() => httpCheck(ports.http, '/', 150))).to.deep.equal({ ok: true, detail: 'HTTP 200' });
  });

  it('a TCP check connected while the agent was held up passes', async () => {
    expect(await heldUp(() => tcpCheck(ports.http, 150))).to.deep.equal({ ok: true, detail: 'connected' });
  });

  it('a gRPC check answered while the agent was held up passes', async () => {
    expect(await heldUp(() => grpcCheck(ports.grpc, 150))).to.deep.equal({ ok: true, detail: 'SERVING' });
  });

  it('a slow instance still fails its check, held-up agent or not', async () => {
    expect(await httpCheck(ports.http, '/never', 150)).to.deep.equal({ ok: false, detail: 'no answer within 150 ms' });
    expect(await heldUp(() => httpCheck(ports.http, '/slow', 150))).to.deep.equal({ ok: false, detail: 'no answer within 150 ms' });
    expect(await tcpCheck(1, 150)).to.have.property('ok', false);
  });

  it('a timer counts again once only, and not when it fires on time', async () => {
    const fired: number[] = [];
    const t0 = Date.now();
    checkTimer(100, () => fired.push(Date.now() - t0));
    await holdUpAfter(10, 300); // due at 100, read at ~310: counts 100 more from then
    await sleep(50);
    expect(fired).to.deep.equal([]);
    await sleep(150);
    expect(fired).to.have.length(1);
    // Held up again after counting again: it fires then, not a third time later.
    const twice: number[] = [];
    checkTimer(100, () => twice.push(1));
    await holdUpAfter(10, 300);
    await holdUpAfter(10, 300);
    await sleep(20);
    expect(twice).to.deep.equal([1]);
    // On time: fires once, at its time.
    const onTime: number[] = [];
    const t1 = Date.now();
    const t = checkTimer(60, () => onTime.push(Date.now() - t1));
    await sleep(200);
    expect(onTime).to.have.length(1);
    t.cancel();
    const cancelled: number[] = [];
    checkTimer(30, () => cancelled.push(1)).cancel();
    await sleep(80);
    expect(cancelled).to.deep.equal([]);
  });
});
