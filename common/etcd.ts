// The etcd client as every Tessera process configures it. Two settings matter for failure
// semantics (see ARCHITECTURE.md): gRPC keepalive, without which a watch over a silently dead
// connection never errors; and short fault-handling delays, without which etcd3's defaults
// (a 5 s circuit breaker per host, up to 30 s watch backoff) slow recovery after an outage.
import { Etcd3, IOptions, isRecoverableError } from 'etcd3';
import { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel';

export interface EtcdClientOptions {
  endpoints: string[];
  /** etcd3's own per-call default deadline for unary calls. */
  callTimeoutMs?: number;
  tls?: { ca: Buffer; cert: Buffer; key: Buffer };
}

export function createEtcdClient(opts: EtcdClientOptions): Etcd3 {
  const callTimeoutMs = opts.callTimeoutMs ?? 5_000;
  const options: IOptions = {
    hosts: opts.endpoints.map((e) => (e.includes('://') ? e : `http://${e}`)),
    dialTimeout: 3_000,
    grpcOptions: {
      // etcd's floor is 5 s, and it answers pings on a connection with no stream open with
      // GOAWAY "too_many_pings" (permit-without-stream is off by default): so ping only while
      // watches or lease keepalives are open, which is when a dead peer matters.
      'grpc.keepalive_time_ms': 5_000,
      'grpc.keepalive_timeout_ms': 2_000,
      'grpc.keepalive_permit_without_calls': 0,
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1_000,
    },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
    faultHandling: {
      host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 500, breaker: new ConsecutiveBreaker(3) }),
      global: retry(handleWhen(isRecoverableError), { maxAttempts: 2 }),
      // etcd3 types this against an older cockatiel IBackoff; the runtime contract is the same.
      watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1_000 }) as never,
    },
  };
  if (opts.tls) {
    options.credentials = { rootCertificate: opts.tls.ca, certChain: opts.tls.cert, privateKey: opts.tls.key };
  }
  return new Etcd3(options);
}

// Kept importable from here: the coordinator's etcd calls use it (the agent, which loads no etcd client, imports ./timeout).
export { withTimeout } from './timeout';
