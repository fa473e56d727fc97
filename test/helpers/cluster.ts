// Admin-side helpers for cluster tests: who leads, what each coordinator sees.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { AdminClient } from '../../common/admin-client';
import type { ClusterStatus__Output } from '../../common/generated/tessera/v1/ClusterStatus';
import type { Event__Output } from '../../common/generated/tessera/v1/Event';
import { waitFor } from './ports';

export async function statusOf(address: string): Promise<ClusterStatus__Output | undefined> {
  const c = new AdminClient([address], { timeoutMs: 4_000 });
  try {
    return await c.getClusterStatus();
  } catch {
    return undefined;
  } finally {
    c.close();
  }
}

/** Waits until every given coordinator agrees on one leader among them; returns its id. */
export async function waitForLeader(addresses: string[], timeoutMs = 15_000, notId?: string): Promise<string> {
  return waitFor(`one leader among ${addresses.join(', ')}`, async () => {
    const all = await Promise.all(addresses.map(statusOf));
    const ids = new Set(all.map((s) => s?.leader?.id ?? ''));
    if (ids.size !== 1) return undefined;
    const id = [...ids][0];
    return id && id !== notId ? id : undefined;
  }, timeoutMs);
}

/** The event log so far (up to 1,000 events) of the kinds given (prefixes), oldest first. */
export function pastEvents(admin: AdminClient, kinds: string[]): Promise<Event__Output[]> {
  return new Promise((resolve) => {
    const out: Event__Output[] = [];
    const s = admin.watchEvents({ history: 1000, kinds });
    s.on('data', (e: Event__Output) => out.push(e));
    s.on('end', () => resolve(out));
    s.on('error', () => resolve(out));
  });
}

/** What a command prints in an instance's container (Admin.ExecInstance), stdout and stderr together. */
export function execOutput(admin: AdminClient, instanceId: string, command: string[]): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let out = '';
    const st = admin.execInstance({ instanceId, command });
    st.on('data', (c: { data: Buffer }) => (out += c.data.toString()));
    st.on('end', () => resolve(out));
    st.on('error', reject);
  });
}

/** grpc.health.v1 on a coordinator: check(service) gives the status, or `error <code>`. */
export function healthClient(address: string): { check: (service: string) => Promise<string>; close: () => void } {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { protoPath } = require('grpc-health-check') as { protoPath: string };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const Health = (grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, { enums: String })) as any).grpc.health.v1.Health;
  const health = new Health(address, grpc.credentials.createInsecure());
  const check = (service: string) => new Promise<string>((resolve) => health.check({ service }, (err: grpc.ServiceError | null, res: { status: string }) => resolve(err ? `error ${err.code}` : res.status)));
  return { check, close: () => health.close() };
}
