// Direct jobs, the client's side (Admin.DirectJobs). At high rates the coordinator must not be a
// round trip per stage, nor relay every job's data: here it is not on the job's data path at
// all. The leader leases this client routes for a pipeline (its path cost's best, a few of
// them, for LEASE_TTL_MS); the client sends each job straight to the agent of its first hop
// (StepRelay, which chains agent to agent as the leader's relays do) and at the same time its
// start to the leader, which records it (the starts of a turn in one group commit) and answers
// once it is durable. The job's answer waits for both, as a SubmitJobs job's waits for its start
// record. Then the client reports how the relay ended: a success is recorded (nothing waits for
// that), a failure is taken over by the leader, which re-plans from the failed stage as for any
// job, and its end is the answer.
//
//   client ── lease(pipeline) ─────────────────────────────> leader: routes, id prefix
//   client ── start(id, route, payload) ───────────────────> leader: recorded ─> ack
//          └─ RelayStream(route, payload) ─> agent ─> instances (─> next agent ...) ─> result
//   client ── end(id, result) ─────────────────────────────> leader: end record (a failure: retried there)
//
// What the leader keeps: every accepted job is recorded before it is answered, and GetJob,
// ListJobs and WatchJob show it; a stream that ends (the client went away) leaves its jobs
// without an end to the leader, which runs them again from their first stage; a new leader
// does so with every job whose end it finds no record of. Steps are at-least-once, as for any
// job. Jobs with an idempotency key, jobs not waited for, and jobs past a lease's limits
// (no route: every instance saturated; its max in flight) go through SubmitJobs, where
// admission queues and refuses, as does everything while the coordinators do not serve
// DirectJobs (from before it: UNIMPLEMENTED; asked again each UNSUPPORTED_RETRY_MS).
//
// An answer lost with the stream (the leader died, or the connection broke) is asked for again:
// a job whose start was recorded is the leader's, or the next one's (it runs it again from its
// start record), and GetJob tells how it ended; the client waits for that, up to the job's
// deadline. A start the stream lost before the leader recorded it is known to no leader: that
// job was not accepted, and the caller is told so.
import * as grpc from '@grpc/grpc-js';
import { MuxClient, NOT_OPENED, statusError } from './mux';
import { StepRunner } from './relay';
import type { LeaderStream } from './admin-client';
import type { DirectCall } from './generated/tessera/v1/DirectCall';
import type { DirectAnswer__Output } from './generated/tessera/v1/DirectAnswer';
import type { RouteLease__Output } from './generated/tessera/v1/RouteLease';
import type { RouteHop__Output } from './generated/tessera/v1/RouteHop';
import type { SubmitJobRequest } from './generated/tessera/v1/SubmitJobRequest';
import type { Job__Output } from './generated/tessera/v1/Job';
import type { RelayRequest__Output } from './generated/tessera/v1/RelayRequest';

interface Lease {
  l: RouteLease__Output;
  routes: RouteHop__Output[][];
  gotAtMs: number;
  /** The stream it was granted on: it lives as long as that stream. */
  generation: number;
  n: number;
  inFlight: number;
  rr: number;
}

type Fallback = { submit: (req: SubmitJobRequest, deadlineMs?: number) => Promise<Job__Output>; close: () => void };

const EMPTY = Buffer.alloc(0);
/** After coordinators answered DirectJobs with UNIMPLEMENTED, how long everything goes through SubmitJobs before it is asked again. */
export const UNSUPPORTED_RETRY_MS = 60_000;
/** How long close() waits for the leader to take the ends of answered jobs. */
export const CLOSE_GRACE_MS = 5_000;
const ENDED = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED']);

export class DirectJobs {
  private readonly mux: MuxClient<DirectCall, DirectAnswer__Output>;
  private readonly runner: StepRunner;
  private readonly leases = new Map<string, Lease>();
  private readonly asking = new Map<string, Promise<Lease>>();
  /** How submissions went: run here, or through SubmitJobs; and failed relays the leader took over. */
  readonly counts = { direct: 0, viaLeader: 0, takenOver: 0 };
  private closed = false;
  /** Until when submissions go through SubmitJobs: the coordinators do not serve DirectJobs. */
  private unsupportedUntil = 0;

  /** lookup: GetJob on the leader (any coordinator forwards it there), for answers lost with the stream. */
  constructor(private readonly leader: LeaderStream, private readonly fallback: Fallback, relayCredentials: grpc.ChannelCredentials,
    private readonly lookup: (id: string) => Promise<Job__Output>) {
    this.mux = new MuxClient(leader.open as never, { req: 'calls', res: 'answers' },
      (r) => (r.errorCode ? Object.assign(statusError(r.errorCode, r.error), { notLeader: !!r.notLeader, leaderAddress: r.leaderAddress ?? '' }) : undefined));
    this.runner = new StepRunner({ selfNodeId: '', relayCredentials, chain: true });
  }

  /** As AdminClient.jobStream's submit: resolves with the job as it ended (a job not waited for: as accepted). */
  async submit(req: SubmitJobRequest, deadlineMs?: number): Promise<Job__Output> {
    if (req.idempotencyKey || !req.wait || !req.pipeline || Date.now() < this.unsupportedUntil) return this.viaLeader(req, deadlineMs);
    let lease: Lease;
    try {
      lease = await this.lease(req.pipeline);
    } catch (err) {
      if ((err as grpc.ServiceError).code !== grpc.status.UNIMPLEMENTED) throw err;
      // Coordinators from before DirectJobs (a rolling upgrade under way): SubmitJobs, for a while.
      this.unsupportedUntil = Date.now() + UNSUPPORTED_RETRY_MS;
      return this.viaLeader(req, deadlineMs);
    }
    const payload = !req.payload ? EMPTY : Buffer.isBuffer(req.payload) ? req.payload : Buffer.from(req.payload as Uint8Array);
    const now = Date.now();
    const deadline = Number(req.deadlineMs) || now + (Number(req.timeoutMs) || Number(lease.l.defaultTimeoutMs));
    // The leader answers what a lease does not cover, and refuses what it would refuse (naming
    // the field) before anything runs.
    if (!lease.routes.length || lease.inFlight >= lease.l.maxInFlight || payload.length > Number(lease.l.maxPayloadBytes) || deadline <= now || !headerNamesOk(req.headers)) {
      return this.viaLeader(req, deadlineMs);
    }
    const i = lease.rr++ % lease.routes.length;
    const id = `${lease.l.idPrefix}.${(lease.n++).toString(36)}`;
    const headers = req.headers ?? {};
    const answerBy = Math.min(deadlineMs ?? Infinity, deadline + 10_000);
    lease.inFlight++;
    this.counts.direct++;
    try {
      // The deadline travels as the time left (budget_ms): the leader's clock need not agree with this one.
      const started = this.mux.call({ start: { jobId: id, pipeline: req.pipeline, route: i, payload, deadlineMs: deadline, budgetMs: Math.max(1, deadline - Date.now()), headers } }, answerBy);
      const ran = this.runner.run({
        jobId: id, route: lease.routes[i], payload, headers, deadlineMs: deadline, attempt: 1, firstIndex: 0, compactHops: true, callId: 0, routeId: 0, budgetMs: 0,
        leaseTicket: lease.l.relayTicket ?? '',
      } as RelayRequest__Output);
      try {
        await started;
      } catch (err) {
        // Its steps may have run, as a SubmitJobs job's may when its start record fails.
        void ran.catch(() => {});
        const e = err as grpc.ServiceError & { notLeader?: boolean };
        // Sent on a stream that broke before the answer: recorded or not, the leader knows.
        if (e.code === grpc.status.UNAVAILABLE && !e.notLeader && !e.details?.startsWith(NOT_OPENED)) return await this.follow(id, answerBy, true, e);
        // Refused by a coordinator that no longer leads, or by a new leader that does not know the lease: not recorded.
        if (e.code === grpc.status.FAILED_PRECONDITION || e.notLeader) throw statusError(grpc.status.UNAVAILABLE, `job ${id} not accepted: the leader changed while it was submitted (${e.details})`);
        throw err;
      }
      const out = await ran;
      const result = {
        ok: out.ok, payload: out.payload, headers: out.headers, hops: out.hops, failedIndex: out.failedIndex, failedInput: out.failedInput,
        failedHeaders: out.failedHeaders, errorCode: out.errorCode, error: out.error,
      };
      if (out.ok) {
        // Recorded by the leader; nothing waits for it, so no deadline (if it is lost, with the
        // stream, the leader runs the job again).
        if (!this.closed) this.mux.call({ end: { jobId: id, result } }).catch(() => {});
        const done = Date.now();
        return {
          id, pipeline: req.pipeline, state: 'JOB_STATE_SUCCEEDED', reason: '', failedStage: '', result: out.payload, resultHeaders: out.headers,
          submittedAtMs: now, finishedAtMs: done, deadlineMs: deadline, idempotencyKey: '', path: [], steps: [], plans: 1, payloadBytes: payload.length,
          flow: 'direct', durationMs: done - now, submittedBy: '',
        } as unknown as Job__Output;
      }
      // A failed relay: the leader re-plans from the failed stage; its answer is the job's end.
      this.counts.takenOver++;
      let a: DirectAnswer__Output;
      try {
        a = await this.mux.call({ end: { jobId: id, result } }, answerBy);
      } catch (err) {
        // Its start is recorded: the leader runs it again (its client's stream ended), or the next one does.
        const e = err as grpc.ServiceError;
        if (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.FAILED_PRECONDITION) return await this.follow(id, answerBy, false, e);
        throw err;
      }
      if (!a.job) throw statusError(grpc.status.INTERNAL, `the leader answered job ${id}'s end without the job`);
      return a.job;
    } finally {
      lease.inFlight--;
    }
  }

  /**
   * Closes the client. The ends of the jobs it has answered go to the leader first (without them
   * the leader, seeing the stream end, would run those jobs again): resolves once the leader has
   * answered every call in flight, or after CLOSE_GRACE_MS.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.mux.retire(), new Promise<void>((r) => (timer = setTimeout(r, CLOSE_GRACE_MS)))]);
    clearTimeout(timer);
    this.mux.close();
    this.runner.close();
    this.fallback.close();
  }

  /**
   * A job whose answer was lost with the stream to the leader: asks the leader (this one, or the
   * next once elected) how it stands, until it has ended or answerBy. When its start may not
   * have reached the leader (startUnknown), a leader that does not know it, twice, means it was
   * not recorded: not accepted.
   */
  private async follow(id: string, answerBy: number, startUnknown: boolean, cause: grpc.ServiceError): Promise<Job__Output> {
    let misses = 0;
    for (let wait = 100; ; wait = Math.min(1_000, wait * 2)) {
      if (this.closed) throw statusError(grpc.status.CANCELLED, `job ${id}: client closed while it asked how the job ended`);
      try {
        const j = await this.lookup(id);
        if (ENDED.has(String(j.state))) return j;
      } catch (err) {
        const code = (err as grpc.ServiceError).code;
        if (code === grpc.status.NOT_FOUND && startUnknown && ++misses >= 2) {
          throw statusError(grpc.status.UNAVAILABLE, `job ${id} not accepted: the stream to the leader broke before its start was answered (${cause.details}), and the leader has no record of it`);
        }
        // No leader yet (an election), or one that is loading: asked again.
        if (code !== grpc.status.NOT_FOUND && code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED) throw err;
      }
      if (Date.now() + wait >= answerBy) {
        throw statusError(grpc.status.DEADLINE_EXCEEDED, `job ${id}: its answer was lost with the stream to the leader (${cause.details}) and it had not ended by its deadline; GetJob ${id} tells how it ends`);
      }
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  private viaLeader(req: SubmitJobRequest, deadlineMs?: number): Promise<Job__Output> {
    this.counts.viaLeader++;
    return this.fallback.submit(req, deadlineMs);
  }

  /** The pipeline's lease: a new one is asked for at half its time (jobs meanwhile take the current one). */
  private async lease(pipeline: string): Promise<Lease> {
    const now = Date.now();
    const cur = this.leases.get(pipeline);
    const valid = cur && this.mux.connected && cur.generation === this.mux.generation && now - cur.gotAtMs < Number(cur.l.ttlMs);
    if (valid && now - cur.gotAtMs < Number(cur.l.ttlMs) / 2) return cur;
    let asking = this.asking.get(pipeline);
    if (!asking) {
      asking = this.askLease(pipeline).finally(() => this.asking.delete(pipeline));
      this.asking.set(pipeline, asking);
      // A renewal nobody waits for may fail: the next submission asks again.
      if (valid) asking.catch(() => {});
    }
    return valid ? cur : asking;
  }

  private async askLease(pipeline: string, tries = 4): Promise<Lease> {
    const before = this.leader.redirects();
    const stale = this.leader.target();
    try {
      const a = await this.mux.call({ lease: { pipeline } }, Date.now() + 10_000);
      const l = a.lease!;
      const lease: Lease = { l, routes: l.routes.map((r) => r.hops), gotAtMs: Date.now(), generation: this.mux.generation, n: 0, inFlight: 0, rr: 0 };
      this.leases.set(pipeline, lease);
      return lease;
    } catch (err) {
      if (tries > 1 && (await this.leader.retryable(err, before, stale, this.mux))) return this.askLease(pipeline, tries - 1);
      throw err;
    }
  }
}

/** Header names as the leader takes them (its refusal names the header). */
function headerNamesOk(headers: Record<string, string> | undefined): boolean {
  if (headers) for (const h in headers) if (!/^[A-Za-z0-9_.-]{1,64}$/.test(h)) return false;
  return true;
}
