// Running a job's route: the same code on the agents (the step relay) and on the coordinator.
//
//   route = [hop, hop, ...], each hop = the planned instance first, then alternatives
//   for each hop: pick an option (a `when_header` rule on the results so far may override)
//     its instance is on this host, or external ──> Component.Invoke it here
//     it is on another host ──> chain: hand the rest of the route to that host's agent (Relay)
//                               per-stage: ask that agent to run this one hop, continue here
//
// A failed step is not an RPC error: the result says which hop failed, with its input, so the
// coordinator can re-plan from there (a retry on the next-best instance) without running the
// earlier stages again.
import * as grpc from '@grpc/grpc-js';
import { tesseraProto } from './proto';
import { CHANNEL_OPTIONS } from './grpc';
import type { ComponentClient } from './generated/tessera/v1/Component';
import type { StepRelayClient } from './generated/tessera/v1/StepRelay';
import type { HopOption__Output } from './generated/tessera/v1/HopOption';
import type { RelayRequest__Output } from './generated/tessera/v1/RelayRequest';
import type { HopResult } from './generated/tessera/v1/HopResult';
import type { StepResult__Output } from './generated/tessera/v1/StepResult';
import type { ComponentInfo__Output } from './generated/tessera/v1/ComponentInfo';
import type { Step } from './generated/tessera/v1/Step';
import type { RelayResult__Output } from './generated/tessera/v1/RelayResult';
import { MuxClient, statusError } from './mux';

export interface RelayOutcome {
  ok: boolean;
  payload: Buffer;
  headers: Record<string, string>;
  hops: HopResult[];
  failedIndex: number;
  failedInput: Buffer;
  failedHeaders: Record<string, string>;
  errorCode: number;
  error: string;
}

export interface RunnerOptions {
  /** The node this runner is on ('' on a coordinator: nothing is local but external instances). */
  selfNodeId: string;
  /** Credentials for other hosts' relays (mTLS in production). */
  relayCredentials: grpc.ChannelCredentials;
  /** true: hand the rest of the route to the next host; false: one hop per relay call. */
  chain: boolean;
}

const EMPTY = Buffer.alloc(0);

function hasKeys(o: object): boolean {
  for (const _ in o) return true;
  return false;
}

/** Picks a hop's option: a matching when_header rule wins; else the planned (first) one that no header rules out. */
export function pickOption(options: HopOption__Output[], headers: Record<string, string>): HopOption__Output {
  const rule = (o: HopOption__Output) => {
    const eq = o.whenHeader.indexOf('=');
    return eq > 0 ? { k: o.whenHeader.slice(0, eq), v: o.whenHeader.slice(eq + 1) } : undefined;
  };
  for (const o of options) {
    const r = rule(o);
    if (r && headers[r.k] === r.v) return o;
  }
  for (const o of options) {
    const r = rule(o);
    if (!r || headers[r.k] === undefined) return o;
  }
  return options[0];
}

export class StepRunner {
  private components = new Map<string, ComponentClient>();
  private relays = new Map<string, StepRelayClient>();
  private componentStreams = new Map<string, MuxClient<Step, StepResult__Output>>();
  private relayStreams = new Map<string, MuxClient<RelayRequest__Output, RelayResult__Output>>();

  constructor(private readonly o: RunnerOptions) {}

  component(endpoint: string): ComponentClient {
    let c = this.components.get(endpoint);
    if (!c) {
      // Instances listen on their host's loopback (or are external): plaintext, like a sidecar.
      c = new (tesseraProto().Component)(endpoint, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
      this.components.set(endpoint, c);
    }
    return c;
  }

  private relay(endpoint: string): StepRelayClient {
    let c = this.relays.get(endpoint);
    if (!c) {
      c = new (tesseraProto().StepRelay)(endpoint, this.o.relayCredentials, CHANNEL_OPTIONS);
      this.relays.set(endpoint, c);
    }
    return c;
  }

  /** Drops the client of an endpoint that went away (an instance that stopped). */
  forget(endpoint: string): void {
    this.componentStreams.get(endpoint)?.close();
    this.componentStreams.delete(endpoint);
    this.components.get(endpoint)?.close();
    this.components.delete(endpoint);
  }

  private componentStream(endpoint: string): MuxClient<Step, StepResult__Output> {
    let m = this.componentStreams.get(endpoint);
    if (!m) {
      const client = this.component(endpoint);
      m = new MuxClient(() => client.Stream() as never, { req: 'steps', res: 'results' }, (r) => (r.errorCode ? statusError(r.errorCode, r.error) : undefined));
      this.componentStreams.set(endpoint, m);
    }
    return m;
  }

  private relayStream(endpoint: string): MuxClient<RelayRequest__Output, RelayResult__Output> {
    let m = this.relayStreams.get(endpoint);
    if (!m) {
      const client = this.relay(endpoint);
      m = new MuxClient(() => client.RelayStream() as never, { req: 'requests', res: 'results' });
      this.relayStreams.set(endpoint, m);
    }
    return m;
  }

  describe(endpoint: string, timeoutMs = 1_000): Promise<ComponentInfo__Output> {
    return new Promise((resolve, reject) => {
      this.component(endpoint).Describe({}, { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => (err ? reject(err) : resolve(res!)));
    });
  }

  async run(req: RelayRequest__Output): Promise<RelayOutcome> {
    let payload: Buffer = req.payload ?? EMPTY;
    let headers: Record<string, string> = req.headers ?? {};
    const hops: HopResult[] = [];
    const fail = (index: number, code: number, error: string): RelayOutcome => ({
      ok: false, payload: Buffer.alloc(0), headers: {}, hops, failedIndex: index, failedInput: payload, failedHeaders: headers, errorCode: code, error,
    });
    for (let i = 0; i < req.route.length; i++) {
      const hop = req.route[i];
      const index = req.firstIndex + i;
      if (!hop.options.length) return fail(index, grpc.status.INVALID_ARGUMENT, `hop ${hop.stage}: no options`);
      const opt = pickOption(hop.options, headers);
      const local = !opt.nodeId || opt.nodeId === this.o.selfNodeId;
      if (!local) {
        const rest = this.o.chain ? req.route.slice(i) : [hop];
        const sub = await this.callRelay(opt, {
          ...req, route: [{ ...rest[0], options: [opt] }, ...rest.slice(1)], payload, headers, firstIndex: index,
        });
        hops.push(...sub.hops);
        if (!sub.ok) return { ...sub, hops };
        if (this.o.chain) return { ...sub, hops };
        payload = sub.payload;
        headers = sub.headers;
        continue;
      }
      const started = Date.now();
      const t0 = performance.now();
      const deadline = Math.min(Number(req.deadlineMs) || Infinity, hop.timeoutMs ? started + Number(hop.timeoutMs) : Infinity);
      const base = { index, stage: hop.stage, kind: opt.kind, instanceId: opt.instanceId, nodeId: opt.nodeId, startedAtMs: started };
      try {
        const out = await this.invoke(opt.endpoint, {
          jobId: req.jobId, stage: hop.stage, operation: opt.operation, payload, headers, deadlineMs: req.deadlineMs, attempt: req.attempt,
        }, deadline);
        hops.push({ ...base, durationMs: performance.now() - t0, ok: true });
        payload = out.payload ?? EMPTY;
        // Headers a step sets are added for the steps after it (a new object: the caller's stays as it was).
        if (out.headers && hasKeys(out.headers)) headers = { ...headers, ...out.headers };
      } catch (err) {
        const e = err as grpc.ServiceError;
        const code = typeof e.code === 'number' ? e.code : grpc.status.UNKNOWN;
        const error = `${grpc.status[code] ?? code}: ${e.details || e.message}`;
        hops.push({ ...base, durationMs: performance.now() - t0, ok: false, error, code });
        return fail(index, code, error);
      }
    }
    return { ok: true, payload, headers, hops, failedIndex: -1, failedInput: Buffer.alloc(0), failedHeaders: {}, errorCode: 0, error: '' };
  }

  /** One step on an instance: over its Stream, or unary Invoke for components that only serve that. */
  private async invoke(endpoint: string, step: Step, deadline: number): Promise<StepResult__Output> {
    const mux = this.componentStream(endpoint);
    if (!mux.unimplemented) {
      try {
        return await mux.call(step, deadline);
      } catch (err) {
        if ((err as grpc.ServiceError).code !== grpc.status.UNIMPLEMENTED) throw err;
      }
    }
    return new Promise((resolve, reject) => {
      const opts: grpc.CallOptions = Number.isFinite(deadline) ? { deadline: new Date(deadline) } : {};
      this.component(endpoint).Invoke(step, opts, (err, res) => (err ? reject(err) : resolve(res!)));
    });
  }

  private callRelay(opt: HopOption__Output, req: RelayRequest__Output): Promise<RelayOutcome> {
    return new Promise((resolve) => {
      const done = (err: grpc.ServiceError | null, res?: RelayResult__Output) => {
        if (!err && res) {
          resolve({
            ok: res.ok, payload: Buffer.from(res.payload ?? []), headers: res.headers, hops: res.hops, failedIndex: res.failedIndex,
            failedInput: Buffer.from(res.failedInput ?? []), failedHeaders: res.failedHeaders, errorCode: res.errorCode, error: res.error,
          });
          return;
        }
        // The host could not be reached (or broke the call): the hop failed on the chosen instance.
        const code = err?.code ?? grpc.status.UNKNOWN;
        const error = `relay ${opt.agentEndpoint} (${opt.nodeId}): ${grpc.status[code]}: ${err?.details ?? 'no result'}`;
        resolve({
          ok: false, payload: Buffer.alloc(0), headers: {}, failedIndex: req.firstIndex, failedInput: Buffer.from(req.payload ?? []),
          failedHeaders: req.headers, errorCode: code, error,
          hops: [{ index: req.firstIndex, stage: req.route[0].stage, kind: opt.kind, instanceId: opt.instanceId, nodeId: opt.nodeId, startedAtMs: Date.now(), durationMs: 0, ok: false, error, code }],
        });
      };
      const deadline = req.deadlineMs ? Number(req.deadlineMs) : undefined;
      this.relayStream(opt.agentEndpoint).call(req, deadline).then((r) => done(null, r), (e) => done(e));
    });
  }

  close(): void {
    for (const m of this.componentStreams.values()) m.close();
    for (const m of this.relayStreams.values()) m.close();
    this.componentStreams.clear();
    this.relayStreams.clear();
    for (const c of this.components.values()) c.close();
    for (const c of this.relays.values()) c.close();
    this.components.clear();
    this.relays.clear();
  }
}
