// Health checks the agent runs against its instances, on loopback (host networking).
import * as http from 'node:http';
import * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { HealthCheck__Output } from '../common/generated/tessera/v1/HealthCheck';

export type CheckResult = { ok: boolean; detail: string };

export function httpCheck(port: number, path: string, timeoutMs: number): Promise<CheckResult> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, timeout: timeoutMs }, (res) => {
      res.resume();
      const ok = (res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400;
      resolve({ ok, detail: `HTTP ${res.statusCode}` });
    });
    req.on('timeout', () => { req.destroy(); resolve({ ok: false, detail: `no answer within ${timeoutMs} ms` }); });
    req.on('error', (e) => resolve({ ok: false, detail: e.message }));
  });
}

export function tcpCheck(port: number, timeoutMs: number): Promise<CheckResult> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port, timeout: timeoutMs });
    s.on('connect', () => { s.destroy(); resolve({ ok: true, detail: 'connected' }); });
    s.on('timeout', () => { s.destroy(); resolve({ ok: false, detail: `no connection within ${timeoutMs} ms` }); });
    s.on('error', (e) => resolve({ ok: false, detail: e.message }));
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
    client.check({ service: '' }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: { status: string }) => {
      client.close();
      if (err) resolve({ ok: false, detail: `${grpc.status[err.code]}: ${err.details}` });
      else resolve({ ok: res.status === 'SERVING', detail: res.status });
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
