// Calls between the database's components (planner -> catalog, executor -> catalog and
// storage shards): Component.Stream over loopback, JSON in and out. A failed call comes back
// as the component's own error (an SqlError from a shard stays an INVALID_ARGUMENT with its text).
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, UnavailableError } from '../../../common/errors';
import { StepRunner } from '../../../common/relay';
import type { CatalogApi, CatalogState, ShardApi } from '../db';
import { SqlError } from '../sql';

const runner = new StepRunner({ selfNodeId: '', relayCredentials: grpc.credentials.createInsecure(), chain: true });

export async function call<T>(endpoint: string, operation: string, body: unknown, timeoutMs = 10_000): Promise<T> {
  const res = await runner.run({
    jobId: 'db', payload: Buffer.from(JSON.stringify(body)), headers: {}, deadlineMs: Date.now() + timeoutMs, attempt: 1, firstIndex: 0,
    route: [{ stage: operation, timeoutMs: 0, options: [{ kind: '', operation, instanceId: endpoint, nodeId: '', endpoint, agentEndpoint: '', whenHeader: '' }] }],
  } as never);
  if (!res.ok) {
    const msg = res.error.replace(/^[A-Z_]+: /, '');
    if (res.errorCode === grpc.status.INVALID_ARGUMENT) throw InvalidArgumentError.field('', msg);
    throw new UnavailableError(`${operation} at ${endpoint}: ${msg}`);
  }
  return JSON.parse(res.payload.toString('utf8') || 'null') as T;
}

export const CATALOG = process.env.CATALOG_ENDPOINT || '127.0.0.1:7600';

export function catalogApi(endpoint = CATALOG): CatalogApi & { state(): Promise<CatalogState & { shardEndpoints: string[] }> } {
  return {
    get: () => call<CatalogState>(endpoint, 'get', {}),
    state: () => call<CatalogState & { shardEndpoints: string[] }>(endpoint, 'get', {}),
    create: (schema) => call(endpoint, 'create', schema),
    drop: (table) => call(endpoint, 'drop', { table }),
    addRows: (table, delta) => call(endpoint, 'rows', { table, delta }),
  };
}

export function shardApi(endpoint: string): ShardApi {
  return {
    run: (op) => call<number>(endpoint, 'run', op),
    scan: (table, where, pk) => call(endpoint, 'scan', { table, where, pk }),
    aggregate: (statement) => call(endpoint, 'aggregate', statement),
  };
}

/** An SqlError becomes INVALID_ARGUMENT (the job fails at once, naming the stage; no retry). */
export function asStatus(e: unknown): never {
  if (e instanceof SqlError) throw InvalidArgumentError.field('', e.message);
  throw e;
}
