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
import type { RouteHop__Output } from './generated/tessera/v1/RouteHop';
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
  return options[pickOptionIndex(options, headers)];
}

export function pickOptionIndex(options: HopOption__Output[], headers: Record<string, string>): number {
  if (options.length === 1 && !options[0].whenHeader) return 0;
  const rule = (o: HopOption__Output) => {
    const eq = o.whenHeader.indexOf('=');
    return eq > 0 ? { k: o.whenHeader.slice(0, eq), v: o.whenHeader.slice(eq + 1) } : undefined;
  };
  for (let i = 0; i < options.length; i++) {
    const r = rule(options[i]);
    if (r && headers[r.k] === r.v) return i;
  }
  for (let i = 0; i < options.length; i++) {
    const r = rule(options[i]);
    if (!r || headers[r.k] === undefined) return i;
  }
  return 0;
}

// ─────────────── routes named once per stream (RelayRequest.route_id) ───────────────
// Most jobs of a pipeline take one of a few routes, and a route is most of a relay request's
// bytes (every hop's options with their names and endpoints): encoding it on the caller and
// decoding it on the agent was a quarter of the agent's CPU at 64 jobs in flight. So a caller
// sends each route once per stream with an id, and then only the id.

const UNKNOWN_ROUTE = 'unknown route id';
/** Response header of a RelayStream whose server understands route ids (agents before it do not). */
export const RELAY_FEATURES = 'tessera-relay-features';
export const ROUTE_IDS = 'route-id';

/** What defines a route: everything in it, so a route that changed in any way gets a new id. */
export function routeKey(route: RouteHop__Output[]): string {
  let k = '';
  for (const h of route) {
    k += `${h.stage}\u0001${h.timeoutMs}\u0001`;
    for (const o of h.options) k += `${o.kind}\u0002${o.operation}\u0002${o.instanceId}\u0002${o.nodeId}\u0002${o.endpoint}\u0002${o.agentEndpoint}\u0002${o.whenHeader}\u0003`;
    k += '\u0004';
  }
  return k;
}

/**
 * Caller side, one per relay stream: gives each distinct route an id and leaves the route out of
 * requests whose id this stream has already carried. At most `max` ids are live; past that all
 * are forgotten and routes get fresh ids (the agent keeps twice as many, newest first, so every
 * id in use is still there). Only on a stream whose server said it understands route ids (an
 * older agent would run an empty route): until then, and with older agents, every request
 * carries its route. A route object is keyed once: callers never change a route they have sent
 * (the leader reuses a planned route for every job that takes it).
 */
export class RouteInterner {
  private ids = new Map<string, number>();
  /** Route objects seen before: a caller that reuses a route object is spared keying it again. */
  private keys = new WeakMap<object, string>();
  private sent = new Set<number>();
  /** Lease tickets this stream has carried (a direct client's: the agent keeps each for its prefix). */
  private tickets = new Set<string>();
  private generation = -1;
  private supported = -1;
  private next = 1;

  constructor(readonly max = 1024) {}

  readonly onMetadata = (md: grpc.Metadata, generation: number): void => {
    if (String(md.get(RELAY_FEATURES)[0] ?? '').split(',').includes(ROUTE_IDS)) this.supported = generation;
  };

  readonly apply = (items: RelayRequest__Output[], generation: number): void => {
    if (generation !== this.supported) return;
    if (generation !== this.generation) {
      this.generation = generation;
      this.sent.clear();
      this.tickets.clear();
    }
    for (let i = 0; i < items.length; i++) {
      let r = items[i];
      if (r.leaseTicket) {
        if (this.tickets.has(r.leaseTicket)) items[i] = r = { ...r, leaseTicket: '' };
        else {
          if (this.tickets.size >= 32) this.tickets.clear();
          this.tickets.add(r.leaseTicket);
        }
      }
      if (!r.route.length) continue;
      let key = this.keys.get(r.route);
      if (key === undefined) {
        key = routeKey(r.route);
        this.keys.set(r.route, key);
      }
      let id = this.ids.get(key);
      if (id === undefined) {
        if (this.ids.size >= this.max) this.reset();
        id = this.next++;
        this.ids.set(key, id);
      }
      // A copy: the caller's request keeps its route (it names the hop if the relay fails).
      if (this.sent.has(id)) items[i] = { ...r, route: [], routeId: id };
      else {
        this.sent.add(id);
        items[i] = { ...r, routeId: id };
      }
    }
  };

  reset(): void {
    this.ids.clear();
    this.sent.clear();
  }
}

/** Agent side, one per relay stream: the routes its caller named. */
export class RouteTable {
  private routes = new Map<number, RouteHop__Output[]>();

  constructor(private readonly max = 2048) {}

  /** Fills in a request's route from its id (or records it); an error text if the id is unknown. */
  resolve(req: RelayRequest__Output): string | undefined {
    const id = Number(req.routeId);
    if (!id) return undefined;
    if (req.route.length) {
      this.routes.delete(id);
      this.routes.set(id, req.route);
      if (this.routes.size > this.max) this.routes.delete(this.routes.keys().next().value!);
      return undefined;
    }
    const route = this.routes.get(id);
    if (!route) return `${UNKNOWN_ROUTE} ${id}`;
    req.route = route;
    return undefined;
  }
}

/**
 * A relayed request's deadline on this host's clock: now plus the time left when it was sent
 * (budget_ms), so that hosts' clocks need not agree; as sent when the sender gave none.
 */
export function deadlineHere(req: RelayRequest__Output, nowMs = Date.now()): void {
  const budget = Number(req.budgetMs);
  if (budget > 0) req.deadlineMs = nowMs + budget;
}

export class StepRunner {
  private components = new Map<string, ComponentClient>();
  private relays = new Map<string, StepRelayClient>();
  private componentStreams = new Map<string, MuxClient<Step, StepResult__Output>>();
  private relayStreams = new Map<string, MuxClient<RelayRequest__Output, RelayResult__Output>>();
  private interners = new Map<string, RouteInterner>();

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
      const interner = new RouteInterner();
      this.interners.set(endpoint, interner);
      m = new MuxClient(() => client.RelayStream() as never, { req: 'requests', res: 'results' }, undefined, { beforeWrite: interner.apply, onMetadata: interner.onMetadata });
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
    let hops: HopResult[] = [];
    for (let i = 0; i < req.route.length; i++) {
      const hop = req.route[i];
      const index = req.firstIndex + i;
      if (!hop.options.length) return failed(hops, index, payload, headers, grpc.status.INVALID_ARGUMENT, `hop ${hop.stage}: no options`);
      const k = pickOptionIndex(hop.options, headers);
      const opt = hop.options[k];
      const local = !opt.nodeId || opt.nodeId === this.o.selfNodeId;
      if (!local) {
        const rest = !this.o.chain ? [hop] : i === 0 ? req.route : req.route.slice(i);
        // The next relay gets this hop with the option picked here; the caller's route object
        // itself when it has only that one (so a route object a caller reuses stays the same).
        const route = hop.options.length === 1 ? rest : [{ ...rest[0], options: [opt] }, ...rest.slice(1)];
        // routeId 0: the id this request came with names a route on the stream it came by.
        const sub = await this.callRelay(opt, { ...req, route, payload, headers, firstIndex: index, routeId: 0 });
        // The next relay saw this hop with one option (the one picked here): say which it was.
        for (const h of sub.hops) if (h.index === index && h.option) h.option = k + 1;
        hops = hops.length ? hops.concat(sub.hops) : sub.hops;
        if (!sub.ok || this.o.chain) {
          sub.hops = hops;
          return sub;
        }
        payload = sub.payload;
        headers = sub.headers;
        continue;
      }
      const started = Date.now();
      const t0 = performance.now();
      const deadline = Math.min(Number(req.deadlineMs) || Infinity, hop.timeoutMs ? started + Number(hop.timeoutMs) : Infinity);
      try {
        const out = await this.invoke(opt.endpoint, {
          jobId: req.jobId, stage: hop.stage, operation: opt.operation, payload, headers, deadlineMs: req.deadlineMs, attempt: req.attempt,
        }, deadline);
        hops.push(req.compactHops
          ? { index, option: k + 1, startedAtMs: started, durationMs: performance.now() - t0, ok: true }
          : { index, stage: hop.stage, kind: opt.kind, instanceId: opt.instanceId, nodeId: opt.nodeId, startedAtMs: started, option: k + 1, durationMs: performance.now() - t0, ok: true });
        payload = out.payload ?? EMPTY;
        // Headers a step sets are added for the steps after it (a new object: the caller's stays as it was).
        if (out.headers && hasKeys(out.headers)) headers = { ...headers, ...out.headers };
      } catch (err) {
        const e = err as grpc.ServiceError;
        const code = typeof e.code === 'number' ? e.code : grpc.status.UNKNOWN;
        const error = `${grpc.status[code] ?? code}: ${e.details || e.message}`;
        hops.push({ index, stage: hop.stage, kind: opt.kind, instanceId: opt.instanceId, nodeId: opt.nodeId, startedAtMs: started, option: k + 1, durationMs: performance.now() - t0, ok: false, error, code });
        return failed(hops, index, payload, headers, code, error);
      }
    }
    return { ok: true, payload, headers, hops, failedIndex: -1, failedInput: EMPTY, failedHeaders: {}, errorCode: 0, error: '' };
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

  private async callRelay(opt: HopOption__Output, req: RelayRequest__Output): Promise<RelayOutcome> {
    const deadline = req.deadlineMs ? Number(req.deadlineMs) : undefined;
    // The next host counts the deadline from the time left, on its own clock (req is this call's own object).
    if (deadline) req.budgetMs = Math.max(1, deadline - Date.now());
    const mux = this.relayStream(opt.agentEndpoint);
    let res: RelayResult__Output;
    try {
      res = await mux.call(req, deadline);
      // The agent lost track of a route id (it should not): forget them all and send it again in full.
      const interner = this.interners.get(opt.agentEndpoint);
      if (res.errorCode === grpc.status.FAILED_PRECONDITION && res.error.startsWith(UNKNOWN_ROUTE) && interner) {
        interner.reset();
        if (deadline) req.budgetMs = Math.max(1, deadline - Date.now());
        res = await mux.call(req, deadline);
      }
    } catch (e) {
      // The host could not be reached (or broke the call): the hop failed on the chosen instance.
      const err = e as grpc.ServiceError;
      const code = err?.code ?? grpc.status.UNKNOWN;
      const error = `relay ${opt.agentEndpoint} (${opt.nodeId}): ${grpc.status[code]}: ${err?.details ?? 'no result'}`;
      return {
        ok: false, payload: EMPTY, headers: {}, failedIndex: req.firstIndex, failedInput: Buffer.from(req.payload ?? []),
        failedHeaders: req.headers, errorCode: code, error,
        hops: [{ index: req.firstIndex, stage: req.route[0].stage, kind: opt.kind, instanceId: opt.instanceId, nodeId: opt.nodeId, startedAtMs: Date.now(), durationMs: 0, ok: false, error, code, option: 1 }],
      };
    }
    // Copies: a slice would keep the whole batch message it came in alive.
    return {
      ok: res.ok, payload: Buffer.from(res.payload ?? EMPTY), headers: res.headers, hops: res.hops, failedIndex: res.failedIndex,
      failedInput: res.failedInput?.length ? Buffer.from(res.failedInput) : EMPTY, failedHeaders: res.failedHeaders, errorCode: res.errorCode, error: res.error,
    };
  }

  close(): void {
    for (const m of this.componentStreams.values()) m.close();
    for (const m of this.relayStreams.values()) m.close();
    this.componentStreams.clear();
    this.relayStreams.clear();
    this.interners.clear();
    for (const c of this.components.values()) c.close();
    for (const c of this.relays.values()) c.close();
    this.components.clear();
    this.relays.clear();
  }
}

/** A run that stopped at hop `index`: its input there, for a retry elsewhere. */
function failed(hops: HopResult[], index: number, payload: Buffer, headers: Record<string, string>, code: number, error: string): RelayOutcome {
  return { ok: false, payload: EMPTY, headers: {}, hops, failedIndex: index, failedInput: payload, failedHeaders: headers, errorCode: code, error };
}
