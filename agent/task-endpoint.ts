// The agent's local task-state endpoint, on loopback. An instance reports how its work is going:
//   POST /v1/task-state/<instanceId>   {"queueDepth":12,"inFlight":2,"processed":340,"failed":1,
//                                       "latencyP95Ms":85,"custom":{"lag":3}}
//   GET  /v1/task-state/<instanceId>   what the agent holds for it
// Counters (processed, failed) are totals since the instance started; the agent derives the
// processing rate from them. Every instance learns the address from $TESSERA_AGENT_ENDPOINT,
// and common/task-reporter.ts reports in one line. Anything else: 404; a bad body: 400 with the
// field named.
import * as http from 'node:http';
import type { TaskState } from '../common/generated/tessera/v1/TaskState';
import { steadyNow } from '../common/clock';

const NUM_FIELDS = ['queueDepth', 'inFlight', 'processed', 'failed', 'latencyP95Ms'] as const;
const MAX_BODY = 64 * 1024;

export interface TaskSample {
  state: TaskState;
  receivedAtMs: number;
}

/** Validates a report body; returns the problem (field: message) or the state. Pure. */
export function parseTaskReport(body: unknown): { ok: true; state: TaskState } | { ok: false; error: string } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return { ok: false, error: 'body: must be a JSON object' };
  const b = body as Record<string, unknown>;
  const state: TaskState = {};
  for (const f of NUM_FIELDS) {
    if (b[f] === undefined) continue;
    const v = b[f];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) return { ok: false, error: `${f}: must be a number >= 0` };
    (state as Record<string, number>)[f] = v;
  }
  if (b.custom !== undefined) {
    if (typeof b.custom !== 'object' || b.custom === null || Array.isArray(b.custom)) return { ok: false, error: 'custom: must be an object of numbers' };
    const custom: Record<string, number> = {};
    for (const [k, v] of Object.entries(b.custom)) {
      if (typeof v !== 'number' || !Number.isFinite(v)) return { ok: false, error: `custom.${k}: must be a number` };
      custom[k] = v;
    }
    state.custom = custom;
  }
  for (const k of Object.keys(b)) {
    if (!(NUM_FIELDS as readonly string[]).includes(k) && k !== 'custom') return { ok: false, error: `${k}: unknown field` };
  }
  return { ok: true, state };
}

export class TaskEndpoint {
  private server?: http.Server;
  private samples = new Map<string, { last: TaskSample; prevProcessed?: { value: number; atMs: number }; rate: number }>();
  address = '';

  constructor(private readonly known: (instanceId: string) => boolean) {}

  async start(listen: string): Promise<string> {
    const [host, port] = [listen.slice(0, listen.lastIndexOf(':')), Number(listen.slice(listen.lastIndexOf(':') + 1))];
    this.server = http.createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve());
    });
    const a = this.server.address() as { address: string; port: number };
    this.address = `http://${host}:${a.port}`;
    return this.address;
  }

  stop(): void {
    this.server?.close();
  }

  /** Records a report (from the endpoint or from polling) and updates the processing rate. */
  record(instanceId: string, state: TaskState, nowMs = steadyNow()): void {
    const cur = this.samples.get(instanceId);
    let rate = cur?.rate ?? 0;
    let prev = cur?.prevProcessed;
    if (state.processed !== undefined) {
      const p = Number(state.processed);
      if (prev && nowMs > prev.atMs && p >= prev.value) {
        const inst = ((p - prev.value) * 1000) / (nowMs - prev.atMs);
        rate = prev.value === 0 && rate === 0 ? inst : 0.5 * rate + 0.5 * inst; // smoothed
      }
      if (!prev || nowMs - prev.atMs >= 1_000) prev = { value: p, atMs: nowMs };
    }
    this.samples.set(instanceId, { last: { state: { ...state, reportedAtMs: nowMs }, receivedAtMs: nowMs }, prevProcessed: prev, rate });
  }

  /** The latest figures for an instance, with the derived rate; undefined if it never reported. */
  get(instanceId: string): TaskState | undefined {
    const s = this.samples.get(instanceId);
    if (!s) return undefined;
    return { ...s.last.state, processingRate: s.last.state.processingRate ?? Math.round(s.rate * 100) / 100 };
  }

  forget(instanceId: string): void {
    this.samples.delete(instanceId);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const m = /^\/v1\/task-state\/([A-Za-z0-9._-]+)$/.exec(req.url ?? '');
    const reply = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (!m) return reply(404, { error: 'not found: use /v1/task-state/<instanceId>' });
    const id = m[1];
    if (!this.known(id)) return reply(404, { error: `instance ${id} does not run on this node` });
    if (req.method === 'GET') return reply(200, this.get(id) ?? {});
    if (req.method !== 'POST' && req.method !== 'PUT') return reply(405, { error: 'use POST' });
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reply(413, { error: `body over ${MAX_BODY} bytes` });
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_BODY) return;
      let body: unknown;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
      } catch {
        return reply(400, { error: 'body: not valid JSON' });
      }
      const p = parseTaskReport(body);
      if (!p.ok) return reply(400, { error: p.error });
      this.record(id, p.state);
      reply(204, {});
    });
  }
}
