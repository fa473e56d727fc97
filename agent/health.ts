// Health checks the agent runs against its instances, on loopback (host networking).
import * as http from 'node:http';
import * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { HealthCheck__Output } from '../common/generated/tessera/v1/HealthCheck';
import { steadyNow } from '../common/clock';

export type CheckResult = { ok: boolean; detail: string };

/** A timer this late (ms, past its time and past a quarter of its length) means this process's loop was held up. */
const HELD_UP_MS = 50;

/**
 * Calls `fire` once `ms` have passed, for a check's timeout. A timer that fires late means this
 * process's event loop was held up (a busy host, a collection): the answer may have come in the
 * meantime, unread, and timers run before the loop reads sockets. Such a timer counts its time
 * once more from then (at most once), so that a check fails for the instance's slowness, not
 * the agent's (test/unit/health-checks.test.ts holds the loop and sees both).
 */
export function checkTimer(ms: number, fire: () => void): { cancel: () => void } {
  let due = steadyNow() + ms;
  let again = true;
  let t: NodeJS.Timeout;
  const tick = () => {
    const late = steadyNow() - due;
    if (again && late > Math.max(HELD_UP_MS, ms / 4)) {
      again = false;
      due = steadyNow() + ms;
      t = setTimeout(tick, ms);
      return;
    }
    fire();
  };
  t = setTimeout(tick, ms);
  return { cancel: () => clearTimeout(t) };
}

export function httpCheck(port: number, path: string, timeoutMs: number): Promise<CheckResult> {
  return new Promise((resolve) => {
    const timer = checkTimer(timeoutMs, () => { req.destroy(); resolve({ ok: false, detail: `no answer within ${timeoutMs} ms` }); });
    const req = http.get({ host: '127.0.0.1', port, path }, (res) => {
      timer.cancel();
      res.resume();
      const ok = (res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400;
      resolve({ ok, detail: `HTTP ${res.statusCode}` });
    });
    req.on('error', (e) => { timer.cancel(); resolve({ ok: false, detail: e.message }); });
  });
}

export function tcpCheck(port: number, timeoutMs: number): Promise<CheckResult> {
  return new Promise((resolve) => {
    const timer = checkTimer(timeoutMs, () => { s.destroy(); resolve({ ok: false, detail: `no connection within ${timeoutMs} ms` }); });
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('connect', () => { timer.cancel(); s.destroy(); resolve({ ok: true, detail: 'connected' }); });
    s.on('error', (e) => { timer.cancel(); resolve({ ok: false, detail: e.message }); });
  });
}

let HealthClient: (new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client & { check: Function }) | undefined;

export function grpcCheck(port: number, timeoutMs: number): Promise<CheckResult> {
  if (!HealthClient) {
    // Loaded on first use: most agents never run a gRPC check.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const loader = require('@grpc/proto-loader') as typeof import('@grpc/proto-loader');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { protoPath } = require('grpc-health-check') as { protoPath: string };
    const pkg = grpc.loadPackageDefinition(loader.loadSync(protoPath, { enums: String })) as any;
    HealthClient = pkg.grpc.health.v1.Health;
  }
  const client = new HealthClient!(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    let done = false;
    // The call's own deadline is a backstop; the check's time is kept by checkTimer.
    const call = client.check({ service: '' }, { deadline: Date.now() + 2 * timeoutMs + 1_000 }, (err: grpc.ServiceError | null, res: { status: string }) => {
      timer.cancel();
      client.close();
      if (done) return;
      done = true;
      if (err) resolve({ ok: false, detail: `${grpc.status[err.code]}: ${err.details}` });
      else resolve({ ok: res.status === 'SERVING', detail: res.status });
    });
    const timer = checkTimer(timeoutMs, () => {
      done = true;
      call.cancel();
      resolve({ ok: false, detail: `DEADLINE_EXCEEDED: no answer within ${timeoutMs} ms` });
    });
  });
}

export async function runCheck(h: HealthCheck__Output, ports: Record<string, number>, exec: (cmd: string[], timeoutMs: number) => Promise<number>): Promise<CheckResult> {
  const timeout = Number(h.timeoutMs) || 2_000;
  switch (h.type) {
    case 'http': return httpCheck(ports[h.port], h.path || '/', timeout);
    case 'tcp': return tcpCheck(ports[h.port], timeout);
    case 'grpc': return grpcCheck(ports[h.port], timeout);
    case 'exec': {
      try {
        const code = await exec(h.command, timeout);
        return { ok: code === 0, detail: `exit ${code}` };
      } catch (e) {
        return { ok: false, detail: (e as Error).message };
      }
    }
    default: return { ok: true, detail: 'no check' };
  }
}
