// gRPC plumbing shared by coordinators, agents and the CLI: keepalive settings for long
// streams, and handler wrappers that turn every exception into a status (a handler's
// exception must never reach the transport or crash the process).
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, toServiceError } from './errors';
import type { Logger } from './logger';

/** Keepalive for long-lived streams: a dead peer is seen within about time + timeout. */
export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 2_000,
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
};

/**
 * Status codes by which a coordinator refuses an agent's stream itself (its certificate, its node
 * id held by another agent, a malformed hello), not a transport failure: the agent logs them as an
 * error, and a follower relaying the stream passes them on instead of holding the agent.
 */
export const AGENT_REFUSALS: ReadonlySet<number> = new Set<number>([grpc.status.ALREADY_EXISTS, grpc.status.PERMISSION_DENIED, grpc.status.INVALID_ARGUMENT, grpc.status.UNAUTHENTICATED, grpc.status.FAILED_PRECONDITION]);

/**
 * The agent's stream to the leader: a dead or hung leader is seen within keepalive time +
 * timeout (at most 4 s) rather than 15 s, so the agent moves to the next leader well within the
 * new leader's failover grace. With 15 s, a leader frozen for 20 s (SIGSTOP) kept its agents on
 * a dead stream past the test's grace plus heartbeat timeout: the new leader marked every node
 * DOWN and replaced every instance. (grpc-js servers do not police ping rates; etcd does, so its
 * channels keep 5 s.)
 */
export const AGENT_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  ...CHANNEL_OPTIONS,
  'grpc.keepalive_time_ms': 2_000,
  'grpc.keepalive_timeout_ms': 2_000,
};

/**
 * How long a client with another coordinator to try waits for one's transport (TCP, TLS and the
 * server's HTTP/2 settings) before moving on: a hung coordinator (frozen, its host paused, its
 * network dropping packets) neither answers nor refuses, and without this a stream to it (the
 * agent's) waited for ever and a call to it (the CLI's) spent its whole deadline there.
 */
export const DIAL_TIMEOUT_MS = 3_000;

export type DialOutcome = 'ready' | 'failed' | 'timeout';

/**
 * Brings a client's channel up: 'ready', 'failed' (refused or broken at once: TRANSIENT_FAILURE,
 * as a call would find it, so the caller's usual UNAVAILABLE path runs), or 'timeout' (no answer
 * within timeoutMs). Costs nothing on a channel already READY.
 */
export function dial(client: grpc.Client, timeoutMs: number): Promise<DialOutcome> {
  const channel = client.getChannel();
  const deadlineMs = Date.now() + timeoutMs;
  return new Promise((resolve) => {
    const check = (): void => {
      const state = channel.getConnectivityState(true);
      if (state === grpc.connectivityState.READY) return resolve('ready');
      if (state === grpc.connectivityState.TRANSIENT_FAILURE || state === grpc.connectivityState.SHUTDOWN) return resolve('failed');
      if (Date.now() >= deadlineMs) return resolve('timeout');
      channel.watchConnectivityState(state, deadlineMs, (err) => (err ? resolve('timeout') : check()));
    };
    check();
  });
}

/**
 * Connects to several channels at once and picks one, as happy eyeballs (RFC 8305) does for a
 * host's addresses: the first in `order` if it is READY within preferMs, else the first in order
 * that is READY then or becomes so within timeoutMs; -1 when none does (or every one failed). A
 * client given a hung coordinator first waited a whole dial timeout (3 s) on every fresh start
 * (each CLI run) before trying the next.
 */
export function dialAny(clients: grpc.Client[], order: number[], timeoutMs: number, preferMs = 250): Promise<number> {
  const channels = order.map((i) => clients[i].getChannel());
  const startMs = Date.now();
  const deadlineMs = startMs + timeoutMs;
  return new Promise((resolve) => {
    let done = false;
    const timers: NodeJS.Timeout[] = [];
    const finish = (i: number) => {
      if (done) return;
      done = true;
      for (const t of timers) clearTimeout(t);
      resolve(i);
    };
    const pick = () => {
      if (done) return;
      const states = channels.map((c) => c.getConnectivityState(true));
      if (states[0] === grpc.connectivityState.READY) return finish(order[0]);
      const ready = states.findIndex((x) => x === grpc.connectivityState.READY);
      if (ready >= 0 && Date.now() - startMs >= preferMs) return finish(order[ready]);
      if (states.every((x) => x === grpc.connectivityState.TRANSIENT_FAILURE || x === grpc.connectivityState.SHUTDOWN)) return finish(-1);
      if (Date.now() >= deadlineMs) return finish(-1);
    };
    const watch = (c: ReturnType<grpc.Client['getChannel']>) => {
      if (done) return;
      c.watchConnectivityState(c.getConnectivityState(false), deadlineMs, (err) => {
        if (err || done) return;
        pick();
        watch(c);
      });
    };
    pick();
    for (const c of channels) watch(c);
    timers.push(setTimeout(pick, preferMs), setTimeout(pick, timeoutMs));
  });
}

export const SERVER_OPTIONS: grpc.ServerOptions = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  // Let clients ping as often as they keep alive (the default minimum is 5 minutes).
  'grpc.http2.min_ping_interval_without_data_ms': 5_000,
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
};

const MALFORMED = Symbol('malformed');

/**
 * A service definition whose request deserializers never throw: broken protobuf bytes become a
 * marker object, which the handler wrappers (and stream handlers via malformedReason) turn into
 * INVALID_ARGUMENT on that call alone, instead of grpc-js's generic INTERNAL.
 */
export function guardDeserializers<T extends grpc.ServiceDefinition>(def: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(def)) {
    out[name] = {
      ...method,
      requestDeserialize: (buf: Buffer) => {
        try {
          return method.requestDeserialize(buf);
        } catch (err) {
          return { [MALFORMED]: (err as Error).message };
        }
      },
    };
  }
  return out as T;
}

/** The decode error if msg came from bytes that are not a valid message, else undefined. */
export function malformedReason(msg: unknown): string | undefined {
  return typeof msg === 'object' && msg !== null && MALFORMED in msg ? String((msg as Record<symbol, unknown>)[MALFORMED]) : undefined;
}

export function rejectMalformed(msg: unknown, what: string): void {
  const reason = malformedReason(msg);
  if (reason !== undefined) throw InvalidArgumentError.field(what, `malformed protobuf message: ${reason}`);
}

/** Wraps a promise-returning unary handler: a result or a thrown error both end the call. */
export function unary<Req, Res>(
  log: Logger,
  method: string,
  fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => {
        rejectMalformed(call.request, 'request');
        return fn(call.request, call);
      })
      .then(
      (res) => callback(null, res),
      (err) => {
        const se = toServiceError(err);
        log.debug({ method, code: se.code, err: se.details }, 'call failed');
        callback(se as grpc.ServiceError);
      },
    );
  };
}

/** Wraps a server-streaming handler; an exception ends the stream with its status. */
export function serverStream<Req, Res>(
  log: Logger,
  method: string,
  fn: (call: grpc.ServerWritableStream<Req, Res>) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    Promise.resolve()
      .then(() => {
        rejectMalformed(call.request, 'request');
        return fn(call);
      })
      .then(
      () => {
        if (!call.writableEnded && !call.destroyed) call.end();
      },
      (err) => {
        const se = toServiceError(err);
        log.debug({ method, code: se.code, err: se.details }, 'stream failed');
        // grpc-js turns an 'error' event on a server stream into the call's final status.
        if (!call.writableEnded) call.emit('error', se);
      },
    );
  };
}

/**
 * Mutual TLS when material is given; plaintext only when a process runs with --insecure-dev.
 * A daemon's LiveTls gives credentials whose new connections use the material SIGHUP loaded.
 */
export function clientCredentials(tls?: import('./tls').TlsMaterial | import('./tls').LiveTls): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  if ('reload' in tls) return grpc.experimental.createCertificateProviderChannelCredentials(tls, tls);
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
}

/** Servers ask every client for a certificate signed by the cluster CA. */
export function serverCredentials(tls?: import('./tls').TlsMaterial | import('./tls').LiveTls): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  if ('reload' in tls) {
    // One provider for both the CA and the identity (the function's two first parameters).
    const creds = grpc.experimental.createCertificateProviderServerCredentials(tls, tls, true);
    // Primed with a watcher of our own: grpc-js (1.14) reads a server's first certificate before it
    // registers its watcher, and the provider's first update, given when its listener is added,
    // goes to the watchers registered then. Unprimed, the server starts without a certificate and
    // drops every connection. Later updates (SIGHUP) reach the server's own watcher.
    creds._addWatcher(() => {});
    return creds;
  }
  return grpc.ServerCredentials.createSsl(tls.ca, [{ private_key: tls.key, cert_chain: tls.cert }], true);
}

/** Binds a server and resolves to the port it got (port 0 picks a free one). */
export function bind(server: grpc.Server, address: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export function deadline(ms: number): Date {
  return new Date(Date.now() + ms);
}

/**
 * Passes a client stream's messages on to a server stream as the caller reads them (a slow caller
 * pauses the upstream instead of filling memory), each through `map`; settles when the upstream
 * ends, or with `failed(err)` when it fails. A caller that goes away cancels the upstream.
 */
export function relayStream<In, Out>(
  upstream: grpc.ClientReadableStream<In>,
  call: grpc.ServerWritableStream<unknown, Out>,
  map: (m: In) => Out,
  failed: (err: grpc.ServiceError) => Error,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    upstream.on('data', (m: In) => {
      if (call.write(map(m))) return;
      upstream.pause();
      call.once('drain', () => upstream.resume());
    });
    upstream.on('end', () => resolve());
    upstream.on('error', (err: grpc.ServiceError) => {
      // The caller went away (it cancelled): nothing to report to it.
      if (call.cancelled) return resolve();
      reject(failed(err));
    });
    call.on('cancelled', () => {
      upstream.cancel();
      resolve();
    });
  });
}
