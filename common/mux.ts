// Many request/response calls over one long-lived bidi stream, matched by call_id. On this kind
// of machine a grpc-js stream message costs about a tenth of a unary call (measured: ~19,000
// round trips/s on one stream against ~2,200 unary calls/s), and the calls made in one
// event-loop turn travel as one batch message (measured on raw bytes: 8 per batch ~140,000
// items/s, 16 ~270,000), so the job data plane (agent to instance, coordinator to agent, agent
// to agent, client to leader) uses batched streams.
//
// Client: call() writes the request with a fresh call id and resolves with the response that
// carries it; a per-call deadline rejects with DEADLINE_EXCEEDED (a late answer is dropped);
// when the stream breaks every pending call is rejected with UNAVAILABLE and the next call
// opens a new stream. Server: serveMux answers each message through the handler, in any order.
import * as grpc from '@grpc/grpc-js';
import { malformedReason } from './grpc';

/** How a call that never went out begins its error: nothing of it reached the server. */
export const NOT_OPENED = 'stream not opened';

interface Pending<Res> {
  resolve: (r: Res) => void;
  reject: (e: grpc.ServiceError) => void;
  timer?: NodeJS.Timeout;
}

type Duplex = grpc.ClientDuplexStream<Record<string, unknown>, Record<string, unknown>>;

/** Field names of the batch messages: e.g. StepBatch.steps and StepResultBatch.results. */
export interface BatchFields { req: string; res: string }

export function statusError(code: number, details: string): grpc.ServiceError {
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata: new grpc.Metadata() }) as grpc.ServiceError;
}

export class MuxClient<Req extends { callId?: unknown }, Res extends { callId?: unknown }> {
  private stream?: Duplex;
  private pending = new Map<number, Pending<Res>>();
  private next = 1;
  private outbox: Req[] = [];
  private flushing = false;
  /** Set when the server does not implement the stream method (fall back to unary). */
  unimplemented = false;
  /** Counts the streams opened: state tied to one stream (what the server has been told) resets with it. */
  generation = 0;
  /** Set by retire(): the stream closes once the calls in flight have their answers, and this resolves retire()'s promise. */
  private retired?: () => void;

  constructor(
    private readonly open: () => Duplex,
    private readonly fields: BatchFields,
    private readonly errorOf: (r: Res) => grpc.ServiceError | undefined = () => undefined,
    private readonly hooks: {
      /** Sees (and may replace) each batch's items just before they go out on stream `generation`. */
      beforeWrite?: (items: Req[], generation: number) => void;
      /** The server's response headers on stream `generation` (what it says it supports). */
      onMetadata?: (md: grpc.Metadata, generation: number) => void;
    } = {},
  ) {}

  private ensure(): Duplex {
    if (this.stream) return this.stream;
    const s = this.open();
    this.stream = s;
    const generation = ++this.generation;
    if (this.hooks.onMetadata) s.on('metadata', (md: grpc.Metadata) => this.hooks.onMetadata!(md, generation));
    s.on('data', (batch: Record<string, unknown>) => {
      for (const r of (batch[this.fields.res] ?? []) as Res[]) {
        const id = Number(r.callId);
        const p = this.pending.get(id);
        if (!p) continue;
        this.pending.delete(id);
        clearTimeout(p.timer);
        const err = this.errorOf(r);
        if (err) p.reject(err);
        else p.resolve(r);
      }
      if (this.retired && !this.pending.size) this.close();
    });
    const broken = (err?: grpc.ServiceError) => {
      if (this.stream !== s) return;
      this.stream = undefined;
      if (err?.code === grpc.status.UNIMPLEMENTED) this.unimplemented = true;
      const passThrough = err?.code === grpc.status.UNIMPLEMENTED || err?.code === grpc.status.INVALID_ARGUMENT || err?.code === grpc.status.PERMISSION_DENIED || err?.code === grpc.status.UNAUTHENTICATED;
      const e = statusError(passThrough ? err!.code : grpc.status.UNAVAILABLE, `stream closed: ${err?.details ?? 'ended'}`);
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(e);
      }
      this.pending.clear();
      if (this.retired) this.close();
    };
    s.on('error', (err: grpc.ServiceError) => broken(err));
    s.on('end', () => broken());
    s.on('close', () => broken());
    return s;
  }

  /** A stream is open (state tied to it, such as what its server granted, still stands). */
  get connected(): boolean {
    return !!this.stream;
  }

  call(req: Req, deadlineMs?: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      const id = this.next++;
      const p: Pending<Res> = { resolve, reject };
      if (deadlineMs !== undefined && Number.isFinite(deadlineMs)) {
        const ms = deadlineMs - Date.now();
        if (ms <= 0) return reject(statusError(grpc.status.DEADLINE_EXCEEDED, 'deadline already passed'));
        p.timer = setTimeout(() => {
          if (this.pending.delete(id)) reject(statusError(grpc.status.DEADLINE_EXCEEDED, `no answer within ${ms} ms`));
          if (this.retired && !this.pending.size) this.close();
        }, ms);
      }
      this.pending.set(id, p);
      // The request is the caller's fresh object: it carries its call id as it stands.
      (req as { callId?: unknown }).callId = id;
      this.outbox.push(req);
      if (!this.flushing) {
        this.flushing = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Everything called in this event-loop turn goes out as one batch. */
  private flush(): void {
    this.flushing = false;
    const items = this.outbox;
    this.outbox = [];
    if (!items.length) return;
    let s: Duplex;
    try {
      s = this.ensure();
    } catch (err) {
      // The channel cannot make a call (closed under it): these calls fail, the process goes on.
      const e = statusError(grpc.status.UNAVAILABLE, `${NOT_OPENED}: ${(err as Error).message}`);
      for (const r of items) {
        const id = Number(r.callId);
        const p = this.pending.get(id);
        if (!p) continue;
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.reject(e);
      }
      return;
    }
    this.hooks.beforeWrite?.(items, this.generation);
    s.write({ [this.fields.req]: items });
  }

  /** Ends the stream: calls in flight fail with UNAVAILABLE, and the next call opens a new one. */
  reset(why: string): void {
    this.drop(statusError(grpc.status.UNAVAILABLE, why));
  }

  close(): void {
    this.drop(statusError(grpc.status.CANCELLED, 'client closed'));
  }

  /**
   * Closes the stream once the calls in flight have their answers (no new call may be made);
   * resolves once it is closed (by this, by close(), or by the stream breaking).
   */
  retire(): Promise<void> {
    return new Promise((resolve) => {
      this.retired = resolve;
      if (!this.pending.size) this.close();
    });
  }

  private drop(err: grpc.ServiceError): void {
    const s = this.stream;
    this.stream = undefined;
    s?.cancel();
    // Calls not sent yet fail with the rest (sent later, on a new stream, they would run unasked).
    this.outbox = [];
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    const retired = this.retired;
    this.retired = undefined;
    retired?.();
  }
}

/**
 * Server side: each incoming message is handled on its own; its answer (or its error, as
 * errorCode/error fields) goes back with its call id.
 */
export function serveMux<Req extends { callId?: unknown }, Res>(
  call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>,
  fields: BatchFields,
  handler: (req: Req) => Promise<Res>,
  errorReply: (code: number, message: string, err: Error) => Res,
): void {
  let outbox: unknown[] = [];
  let flushing = false;
  // A client that half-closes (grpcurl does, once it has sent its input) still gets the answers
  // of the calls in flight: the stream ends after the last of them.
  let inFlight = 0;
  let clientEnded = false;
  const endIfDone = () => {
    if (clientEnded && !inFlight && !flushing && !call.destroyed) call.end();
  };
  const reply = (r: unknown) => {
    inFlight--;
    outbox.push(r);
    if (flushing) return;
    flushing = true;
    setImmediate(() => {
      flushing = false;
      const items = outbox;
      outbox = [];
      if (!call.destroyed && items.length) call.write({ [fields.res]: items });
      endIfDone();
    });
  };
  call.on('data', (batch: Record<string, unknown>) => {
    const bad = malformedReason(batch);
    if (bad !== undefined) {
      // Broken bytes cannot be matched to a call: the stream ends, saying why.
      call.emit('error', statusError(grpc.status.INVALID_ARGUMENT, `malformed protobuf message: ${bad}`));
      return;
    }
    for (const req of (batch[fields.req] ?? []) as Req[]) {
      const callId = req.callId;
      inFlight++;
      handler(req).then(
        (res) => {
          (res as { callId?: unknown }).callId = callId;
          reply(res);
        },
        (err: Error & { code?: number; details?: string }) => {
          const code = typeof err.code === 'number' ? err.code : grpc.status.UNKNOWN;
          reply({ ...errorReply(code, err.details ?? err.message, err), callId });
        },
      );
    }
  });
  call.on('end', () => {
    clientEnded = true;
    endIfDone();
  });
  call.on('error', () => {});
}

let later: (() => void)[] = [];
let laterScheduled = false;

/**
 * Runs `fn` once what this event-loop turn wrote to gRPC streams has left the process. Node's
 * http2 sends a turn's stream writes from a native immediate at the start of the next turn's
 * check phase, before that turn's setImmediate callbacks: so work that nothing is waiting for
 * (a record to encode, a metric) goes two immediates later instead of delaying the messages
 * another process waits for. At 64 jobs in flight the leader's answers and relays are the
 * critical path of every job, and its own CPU is most of it.
 */
export function afterWrites(fn: () => void): void {
  later.push(fn);
  if (laterScheduled) return;
  laterScheduled = true;
  setImmediate(() => setImmediate(() => {
    laterScheduled = false;
    const fns = later;
    later = [];
    for (const f of fns) {
      try {
        f();
      } catch (err) {
        process.emitWarning(err as Error);
      }
    }
  }));
}
