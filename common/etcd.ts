// The etcd client as every Tessera process configures it. Two settings matter for failure
// semantics (see ARCHITECTURE.md): gRPC keepalive, without which a watch over a silently dead
// connection never errors; and short fault-handling delays, without which etcd3's defaults
// (a 5 s circuit breaker per host, up to 30 s watch backoff) slow recovery after an outage.
import { Etcd3, GRPCResourceExhastedError, IOptions, isRecoverableError } from 'etcd3';
import { BrokenCircuitError, ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel';
import * as grpc from '@grpc/grpc-js';
import { withTimeout } from './timeout';
import type { LiveTls } from './tls';

export interface EtcdClientOptions {
  endpoints: string[];
  /** etcd3's own per-call default deadline for unary calls. */
  callTimeoutMs?: number;
  /**
   * Client certificates for etcd. A LiveTls (the coordinator's, which SIGHUP reloads) is read
   * for each new connection, so a renewed certificate or CA reaches etcd without a restart.
   */
  tls?: { ca: Buffer; cert: Buffer; key: Buffer } | LiveTls;
  /**
   * With several endpoints: probe each one (a status call every probeIntervalMs, answered within
   * probeTimeoutMs) and send no new call to one that does not answer while another does (see
   * EndpointHealth). Told of each change.
   */
  probe?: { intervalMs?: number; timeoutMs?: number; onChange?: (endpoint: string, answering: boolean, error?: string) => void };
}

/**
 * Which etcd endpoints answer. etcd3 sends each call to a random endpoint and learns of a bad one
 * only from calls that fail: a member that hangs (frozen, its disk stalled, its packets dropped)
 * fails no call quickly, so a third of the calls waited out their deadline (5 s) on it, writes took
 * 3-6 s or failed and the leader's lease keepalive, stuck on it, cost the leadership (measured with
 * one member of three under SIGSTOP). A probe per endpoint (its own channel) marks the one that
 * does not answer within the probe timeout, and the pool's per-host policy turns new calls away
 * from it while another endpoint answers, as etcd's Go client's health balancer does.
 */
export class EndpointHealth {
  private readonly failing = new Map<string, string>();
  private readonly probes: { endpoint: string; client: Etcd3; inFlight: boolean }[];
  private readonly timer: NodeJS.Timeout;

  constructor(endpoints: string[], opts: Omit<EtcdClientOptions, 'endpoints' | 'probe'>, private readonly probe: NonNullable<EtcdClientOptions['probe']>) {
    const timeoutMs = probe.timeoutMs ?? 1_000;
    this.probes = endpoints.map((endpoint) => ({ endpoint, client: createEtcdClient({ ...opts, endpoints: [endpoint], callTimeoutMs: timeoutMs }), inFlight: false }));
    this.timer = setInterval(() => { for (const p of this.probes) void this.check(p, timeoutMs); }, probe.intervalMs ?? 500);
    this.timer.unref();
  }

  /**
   * One keepalive for a lease through every endpoint that answers its probe, at once: resolves
   * when the first one answers (false when none does in time, or etcd says the lease is gone).
   * A leader whose keepalive stream sits on a member that hangs is kept alive by the others.
   */
  async keepAliveEverywhere(leaseId: string, timeoutMs: number): Promise<boolean> {
    const streams: { end(): void }[] = [];
    const tries = this.probes.filter((p) => !this.failing.has(p.endpoint)).map(async (p) => {
      const stream = await p.client.leaseClient.leaseKeepAlive();
      streams.push(stream);
      return new Promise<boolean>((resolve, reject) => {
        stream.on('data', (res: { TTL: string }) => (Number(res.TTL) > 0 ? resolve(true) : reject(new Error('lease gone'))));
        stream.on('error', reject);
        stream.write({ ID: leaseId });
      });
    });
    try {
      return await withTimeout(Promise.any(tries), timeoutMs, 'lease keepalive through every endpoint');
    } catch {
      return false;
    } finally {
      for (const s of streams) { try { s.end(); } catch { /* gone */ } }
    }
  }

  /** Each endpoint and whether it answered its last probe (for tessera_etcd_endpoint_answering). */
  states(): [string, boolean][] {
    return this.probes.map((p) => [p.endpoint, !this.failing.has(p.endpoint)]);
  }

  /** Whether new calls may go to this endpoint: it answers, or no endpoint does (then every one is tried, as before). */
  usable(endpoint: string): boolean {
    return !this.failing.has(endpoint) || this.failing.size >= this.probes.length;
  }

  close(): void {
    clearInterval(this.timer);
    for (const p of this.probes) p.client.close();
  }

  private async check(p: EndpointHealth['probes'][number], timeoutMs: number): Promise<void> {
    if (p.inFlight) return;
    p.inFlight = true;
    try {
      await withTimeout(p.client.maintenance.status(), timeoutMs, `etcd status from ${p.endpoint}`);
      if (this.failing.delete(p.endpoint)) this.probe.onChange?.(p.endpoint, true);
    } catch (err) {
      const why = (err as Error).message;
      if (!this.failing.has(p.endpoint)) {
        this.failing.set(p.endpoint, why);
        this.probe.onChange?.(p.endpoint, false, why);
      }
    } finally {
      p.inFlight = false;
    }
  }
}

const HEALTH = new WeakMap<Etcd3, EndpointHealth>();

/** The endpoint probes of a client made with `probe` (and several endpoints). */
export function endpointHealth(client: Etcd3): EndpointHealth | undefined {
  return HEALTH.get(client);
}

/**
 * etcd's "database space exceeded" (its NOSPACE alarm: the database reached --quota-backend-bytes
 * and the cluster takes reads and deletes only), as etcd3 raises it.
 */
export function isNoSpace(err: unknown): boolean {
  // Only by its text: etcd answers RESOURCE_EXHAUSTED for a request over its size limit too.
  return err instanceof GRPCResourceExhastedError && /database space exceeded/.test(err.message);
}

/**
 * Errors that say something about the etcd member a call went to (it is down, unreachable,
 * overloaded): those open its circuit breaker and are retried on another member. etcd3 counts
 * RESOURCE_EXHAUSTED among them, but etcd answers it for NOSPACE (the whole cluster's state) and
 * for a request over its size limit (that request's own fault): with it counted, three refused
 * writes opened the breaker and every read, probe, keepalive and write was turned away with them
 * ("circuit breaker is open"): a coordinator took etcd for unreachable, and one oversized apply
 * failed every other write for a while.
 */
export function isMemberFault(err: Error): boolean {
  return isRecoverableError(err) && !(err instanceof GRPCResourceExhastedError);
}

/** A request etcd refused for its size (over --max-request-bytes, or gRPC's message limit above it). */
export function isTooLarge(err: unknown): boolean {
  return /request is too large|larger than max/.test(String((err as Error)?.message ?? ''));
}

export function createEtcdClient(opts: EtcdClientOptions): Etcd3 {
  const callTimeoutMs = opts.callTimeoutMs ?? 5_000;
  const hosts = opts.endpoints.map((e) => (e.includes('://') ? e : `http://${e}`));
  const health = opts.probe && hosts.length > 1 ? new EndpointHealth(hosts, { callTimeoutMs, tls: opts.tls }, opts.probe) : undefined;
  const hostPolicy = (host: string) => {
    const breaker = circuitBreaker(handleWhen(isMemberFault), { halfOpenAfter: 500, breaker: new ConsecutiveBreaker(3) });
    if (!health) return breaker;
    // Turned away before the call (etcd3 then tries the next host); the breaker as before.
    const gated = Object.create(breaker) as typeof breaker;
    gated.execute = ((fn: never, signal?: AbortSignal) => (health.usable(host)
      ? breaker.execute(fn, signal)
      : Promise.reject(new BrokenCircuitError(`etcd endpoint ${host} does not answer its probe`)))) as typeof breaker.execute;
    return gated;
  };
  const options: IOptions = {
    hosts,
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
      host: hostPolicy,
      global: retry(handleWhen(isMemberFault), { maxAttempts: 2 }),
      // etcd3 types this against an older cockatiel IBackoff; the runtime contract is the same.
      watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1_000 }) as never,
    },
  };
  const live = opts.tls && 'reload' in opts.tls ? opts.tls : undefined;
  const material = live ? live.material : opts.tls as { ca: Buffer; cert: Buffer; key: Buffer } | undefined;
  if (material) {
    options.credentials = { rootCertificate: material.ca, certChain: material.cert, privateKey: material.key };
  }
  const client = new Etcd3(options);
  if (live) useLiveCredentials(client, live);
  if (health) {
    HEALTH.set(client, health);
    const close = client.close.bind(client);
    client.close = () => { health.close(); close(); };
  }
  return client;
}

/**
 * etcd3 (1.1) builds its channels' credentials once, from the certificate bytes it is given,
 * and keeps them on each host of its pool, which creates its gRPC clients from them when first
 * used and again after a fault. Replaced before any is created by credentials that read the
 * LiveTls at each new connection. Checked: a later etcd3 that keeps them elsewhere fails the
 * coordinator's start, not a certificate renewal months later.
 */
function useLiveCredentials(client: Etcd3, live: LiveTls): void {
  const pool = (client as unknown as { pool?: { hosts?: { channelCredentials?: unknown; cachedServices?: object }[] } }).pool;
  const hosts = pool?.hosts ?? [];
  if (!hosts.length || hosts.some((h) => !(h.channelCredentials instanceof grpc.ChannelCredentials) || Object.keys(h.cachedServices ?? {}).length)) {
    throw new Error('this etcd3 release keeps its channel credentials where Tessera does not look: etcd client certificates could not be reloaded (pin etcd3 1.1.x)');
  }
  const creds = grpc.experimental.createCertificateProviderChannelCredentials(live, live);
  for (const h of hosts) h.channelCredentials = creds;
}

// Kept importable from here: the coordinator's etcd calls use it (the agent, which loads no etcd client, imports ./timeout).
export { withTimeout } from './timeout';

/** etcd's raised alarms: NOSPACE (the database reached its quota: reads and deletes only) or CORRUPT, each with the member that raised it. */
export async function etcdAlarms(client: Etcd3, timeoutMs: number): Promise<{ alarm: string; memberId: string }[]> {
  const res = await withTimeout(client.maintenance.alarm({ action: 'Get', memberID: 0, alarm: 'None' }), timeoutMs, 'etcd alarms');
  return (res.alarms ?? []).filter((a) => a.alarm && String(a.alarm) !== 'None').map((a) => ({ alarm: String(a.alarm).toUpperCase(), memberId: BigInt(a.memberID).toString(16) }));
}
