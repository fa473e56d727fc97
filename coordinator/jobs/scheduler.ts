// The job scheduler (leader only): admits a job, records it, plans its path, runs it along the
// path through the agents, re-plans around failures, and records how it ended.
//
//   SubmitJob ─ validate ─ plan (jobs/path.ts over the component manager's candidates)
//       no healthy instance for a stage ──> UNAVAILABLE, nothing recorded
//       every instance of a stage saturated ──> QUEUED (up to queueLimit) or RESOURCE_EXHAUSTED
//     ─ record its start (the starts of one event-loop turn share one etcd value, in one group
//       commit, fenced) ─ acknowledge ─ run:
//       (a caller that waits for the end runs at once, while its start is written: its answer,
//        the job's end, waits for that record, never for the record of the end)
//       route ──> StepRunner (chain: agent to agent; per-stage: one relay call per hop)
//       a hop failed with a transport error ──> that instance is suspect; re-plan from the failed
//         stage without it, with the stage's input; within max attempts and the deadline
//       a hop failed with an application error (bad input) ──> FAILED, the stage named
//     ─ answer waiters ─ record the end (in the shared end record of the jobs admitted with it,
//       which rides along with the next transaction, e.g. the next turn's starts; it expires
//       after the retention; the shared start record goes once every job in it has its end
//       recorded)
//
// A new leader reads the start records of jobs without an end record: each one is resumed from its first
// stage (steps are at-least-once; components should be idempotent) or, when its deadline has
// passed, failed with that reason. No accepted job is silently lost.
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { LogThrottle } from '../../common/log-throttle';
import { AlreadyExistsError, FencedError, InvalidArgumentError, NotFoundError, NotLeaderError, ResourceExhaustedError, UnavailableError } from '../../common/errors';
import { Backoff, sleep } from '../../common/backoff';
import type { Logger } from '../../common/logger';
import type { Metrics } from '../../common/metrics';
import type { RelayOutcome, StepRunner } from '../../common/relay';
import type { Job } from '../../common/generated/tessera/v1/Job';
import type { JobState } from '../../common/generated/tessera/v1/JobState';
import type { JobStep } from '../../common/generated/tessera/v1/JobStep';
import type { PathHop } from '../../common/generated/tessera/v1/PathHop';
import type { RouteHop } from '../../common/generated/tessera/v1/RouteHop';
import type { SubmitJobRequest__Output } from '../../common/generated/tessera/v1/SubmitJobRequest';
import type { ListJobsRequest__Output } from '../../common/generated/tessera/v1/ListJobsRequest';
import type { DirectStart__Output } from '../../common/generated/tessera/v1/DirectStart';
import type { DirectEnd__Output } from '../../common/generated/tessera/v1/DirectEnd';
import { ComponentManager, Holding, LiveCandidate, Routable, TRANSPORT_CODES, versionMatches } from '../components';
import type { GroupCommitter } from '../group-commit';
import type { Keys } from '../keys';
import type { Store } from '../store';
import { Candidate, choosePath, instanceCost, NoPathError, Stage } from './path';
import type { NormalPipeline, Pipelines } from './pipelines';
import { decodeRecord, encodeRecord, encodeStart, endBatchOf, endedIds, findEnd, JobRecord } from './record';
import { afterWrites } from '../../common/mux';

/** A shared start record stays well under etcd's request limit (1.5 MiB by default). */
const START_BATCH_BYTES = 512 * 1024;
/**
 * Shared end records: the ends of a batch's jobs that have not all ended are written within this
 * long, together (a batch whose jobs have all ended is written at once, and so are ends reaching
 * END_BATCH_BYTES). An end larger than END_OWN_BYTES gets a key of its own (done/<id>) instead.
 */
const END_FLUSH_MS = 50;
const END_OWN_BYTES = 64 * 1024;
const END_BATCH_BYTES = 512 * 1024;
/**
 * The end record of a job that was answered (its start is durable) is written again while etcd
 * does not take it (unreachable, a timeout, a full etcd's NOSPACE alarm) and this coordinator
 * leads, at most every few seconds: otherwise its start record stays and the next leader runs the
 * job again. There is no time limit: etcd out of reach ends the leadership within its lease,
 * and while etcd refuses writes no job starts, so the ends waiting are the jobs that were in
 * flight then.
 */
const END_RETRY_BACKOFF = { initialMs: 250, maxMs: 4_000, multiplier: 2, jitter: 0.2 };

/** The route cache's tree (see plan): a node per prefix of a choice, the route at its leaf. */
type RouteNode = Map<string | number | symbol, RouteNode | RouteHop[]>;
const HOP_END = Symbol('hop end');
const ROUTE = Symbol('route');
function step(node: RouteNode, key: string | number | symbol): RouteNode {
  let next = node.get(key) as RouteNode | undefined;
  if (!next) node.set(key, (next = new Map()));
  return next;
}

/** What an admission answers: the job as admitted, or (the caller waits) the promise of its end. */
export type Admission = { job: Job; done?: undefined } | { job?: undefined; done: Promise<Job> };
/** No instance excluded (a first plan). */
const NONE: ReadonlySet<string> = new Set();

type Terminal = 'JOB_STATE_SUCCEEDED' | 'JOB_STATE_FAILED' | 'JOB_STATE_CANCELLED';
const TERMINAL = new Set<JobState>(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED']);
const KEY_RE = /^[\x21-\x7e]{1,128}$/;
/** At most this many bytes of finished jobs' results stay in the leader's memory. */
const RESULT_MEMORY = 64 * 1024 * 1024;
/** ListJobs beyond memory: end record keys read at once, and bytes read in all. */
const LIST_SCAN_CHUNK = 64;
const LIST_SCAN_BYTES = 4 * 1024 * 1024;
/**
 * A window takes end records for at most 10 s after its lease is granted (retentionLease), so a
 * job in it was submitted before that (plus a margin for the clocks of the leaders that wrote
 * it): a bound ListJobs uses to know that no older window holds a newer job.
 */
const WINDOW_SPAN_BOUND_MS = 10_000 + 2_000;

export interface JobOptions {
  flow: 'chain' | 'per-stage';
  queueLimit: number;
  retentionMs: number;
  /** Finished-job records this leader keeps in etcd at most (bytes); the oldest window goes first. */
  recordBudgetBytes: number;
  hopMs: number;
  sameHostHopMs: number;
  /** Finished jobs kept in the leader's memory for GetJob/ListJobs/WatchJob. */
  recentLimit: number;
  coordinatorId: string;
}

interface LiveJob {
  rec: JobRecord;
  pipeline: NormalPipeline;
  input: Buffer;
  result?: Buffer;
  waiters: Waiter[];
  /** WatchJob streams following it (made by the first). */
  watchers?: Set<(j: Job) => void>;
  route?: { hops: RouteHop[]; holding: Holding };
  queuedWhy?: string;
  /** The write of the record of its start (settles with its shared start record, see recordStart). */
  accepted?: Promise<void>;
  /** The shared start record its start is in (see StartBatch), until its end record is durable. */
  batch?: StartBatch;
  /**
   * A finished job kept in memory for reads: its end record as written (compact JSON, with the
   * result when that was stored); rec keeps the fields lists filter on, without path and steps.
   * Ten thousand finished jobs as object graphs were most of what the leader's young-generation
   * collections copied and promoted.
   */
  ended?: string;
  /** Bytes it holds while finished (its result, its end record), counted against RESULT_MEMORY. */
  heldBytes?: number;
  /** A direct job: the lease its client runs it under (until the leader takes it over). */
  direct?: DirectLease;
  /** Where its end record goes when that is not its start batch's (a direct job's: its lease's). */
  endBatch?: StartBatch;
}

/**
 * Routes leased to a DirectJobs client for one pipeline (see leaseRoutes): its jobs' ids carry
 * the lease's name, and their ends are written together under ended/<name>/ (as a start batch's
 * are), so GetJob finds them by id.
 */
export interface DirectLease {
  idPrefix: string;
  pipeline: NormalPipeline;
  routes: Planned[];
  /** Only for the ends of its jobs: entries are its jobs whose end is not durable yet. */
  ends: StartBatch;
  /** Its jobs the client runs (accepted, no end reported yet). */
  open: Set<LiveJob>;
  by: string;
}

/** Routes a lease holds at most (the planner's best, each planned with the ones before it counted as load). */
const LEASE_ROUTES = 8;
/** How long a lease's routes stand (clients ask again at half of it). */
export const LEASE_TTL_MS = 2_000;
/** A lease's jobs in flight at most (past it the client submits through SubmitJobs, where queueing and refusal are). */
export const LEASE_MAX_IN_FLIGHT = 1_024;
/** A direct job whose client has reported no end this long after its deadline is failed. */
const DIRECT_END_GRACE_MS = 5_000;
const DIRECT_ID_N = /^[0-9a-z]{1,11}$/;

/** A finished job's path and steps once it keeps its end record instead (see LiveJob.ended). */
const DROPPED: never[] = Object.freeze([]) as never;
/** An input no longer needed. */
const NO_INPUT = Buffer.alloc(0);

/**
 * The starts of the jobs admitted in one event-loop turn, written as one etcd value
 * (jobs/started/<id>) instead of a key per job: deleted once every job in it has its end record,
 * and written again without the ended ones when it lives long (their end records expire).
 */
interface StartBatch {
  key: string;
  /** Its name (started/<name>, ended/<name>), which this leader's job ids carry; none for a batch taken over from another leader. */
  name?: string;
  /** Job ids handed out in it. */
  n: number;
  /** Its jobs' ends are written together under ended/<name>/ (see recordEnd): this leader's batches. */
  sharesEnds: boolean;
  /** Ended jobs whose end record (encoded) is not written yet, and their bytes. */
  endsPending: { job: LiveJob; value: string; resolve: () => void; reject: (e: unknown) => void }[];
  pendingBytes: number;
  /** A write of the pending ends is scheduled (after this turn's writes, or by endTimer). */
  endFlushSoon?: boolean;
  endTimer?: NodeJS.Timeout;
  /** Writes of its ends so far: each is a key of its own, ended/<name>/<n>. */
  endWrites: number;
  /** Start entries (JSON) of its jobs whose end is not durable yet, by job id ('' until encoded). */
  entries: Map<string, string>;
  /** Its jobs as admitted, encoded when the record is written (after the turn's relays went out). */
  admitted?: { job: LiveJob; state: JobState; plans: number }[];
  bytes: number;
  /** Entries in etcd's copy. */
  written: number;
  writtenAtMs: number;
  durable: Promise<void>;
}

interface Waiter {
  resolve: (j: Job) => void;
  reject: (err: Error) => void;
}

interface Planned {
  hops: RouteHop[];
  path: PathHop[];
  holding: Holding;
}

export class JobScheduler {
  private jobs = new Map<string, LiveJob>();
  /** Ids of finished jobs still in memory, oldest first from recentHead (a queue without shift()). */
  private recent: string[] = [];
  private recentHead = 0;
  private byKey = new Map<string, string>();
  private queue: LiveJob[] = [];
  /** Bytes of results held by finished jobs in memory. */
  private resultBytes = 0;
  /** Queue places taken by submissions whose record is being written. */
  private queueReserved = 0;
  private inFlight = 0;
  private lease?: { id: string; grantedAtMs: number };
  /** The retention leases this leader granted, oldest first, with the bytes of records under each. */
  private windows: { id: string; grantedAtMs: number; bytes: number }[] = [];
  private recordBytes = 0;
  private budgetWarnedAtMs = 0;
  private leasePending?: Promise<string>;
  private stopped = false;
  private readonly idPrefix = randomBytes(3).toString('hex');

  constructor(
    private readonly store: Store,
    private readonly keys: Keys,
    private readonly components: ComponentManager,
    private readonly pipelines: Pipelines,
    private readonly committer: GroupCommitter,
    private readonly runner: StepRunner,
    private readonly opts: JobOptions,
    private readonly log: Logger,
    private readonly metrics?: Metrics,
  ) {}

  private activeKey(id: string): string { return `${this.keys.jobs}active/${id}`; }
  private startedKey(batchId: string): string { return `${this.keys.jobs}started/${batchId}`; }
  private openBatch?: StartBatch & { seq: string };
  /** Shared start records with jobs whose end is not durable yet. */
  private batches = new Set<StartBatch>();
  private batchSeq = 0;
  private doneKey(id: string): string { return `${this.keys.jobs}done/${id}`; }
  /** The prefix of a start batch's shared end records (ended/<name>/<n>, one per write). */
  private endedPrefix(name: string): string { return `${this.keys.jobs}ended/${name}/`; }
  /** The record budget's windows (leases and their bytes), carried from leader to leader. */
  private windowsKey(): string { return `${this.keys.jobs}windows`; }
  private windowsSavedAtMs = 0;
  /** Idempotency keys with an admission under way (see admitOnce). */
  private keyAdmissions = new Map<string, Promise<void>>();
  /** This turn's idempotency-key lookups, by key (see lookupKey). */
  private keyLookups?: Map<string, { resolve: (v: string | null) => void; reject: (e: unknown) => void }[]>;
  private windowsTimer?: NodeJS.Timeout;
  /** When this leader took the jobs over: every job it admitted was submitted after it. */
  private loadedAtMs = 0;
  /** The newest submission time among finished jobs let go from memory (see list). */
  private evictedNewestMs = 0;

  /**
   * Takes over the jobs a previous leader accepted and did not finish: those in shared start
   * records without an end record, and those with a start record of their own (jobs/active/,
   * written by leaders before shared start records).
   */
  async load(nowMs = Date.now()): Promise<void> {
    const c = this.store.client;
    this.loadedAtMs = nowMs;
    await this.loadWindows(nowMs);
    const taken: { rec: JobRecord; batch?: StartBatch }[] = [];
    const own = await c.getAll().prefix(`${this.keys.jobs}active/`).strings();
    for (const v of Object.values(own)) taken.push({ rec: decodeRecord(v) });
    const shared = await c.getAll().prefix(`${this.keys.jobs}started/`).strings();
    for (const [key, v] of Object.entries(shared)) {
      const raw = JSON.parse(v) as unknown[];
      const recs = raw.map((e) => decodeRecord(e));
      // Jobs that ended have their end record: in the batch's shared end record, or one of
      // their own (the start record goes with the last of them, unless the leader stopped in
      // between).
      // A direct job's end is with its lease's (named in its id), not its start batch's.
      const names = new Set([key.slice(this.startedKey('').length)]);
      for (const r of recs) {
        const n = endBatchOf(r.id);
        if (n && r.flow === 'direct') names.add(n);
      }
      const endedTogether = endedIds((await Promise.all([...names].map((n) => c.getAll().prefix(this.endedPrefix(n)).strings()))).flatMap((o) => Object.values(o)));
      const ended = await Promise.all(recs.map(async (r) => endedTogether.has(r.id) || (await c.get(this.doneKey(r.id)).string()) !== null));
      const entries = new Map<string, string>();
      recs.forEach((r, i) => { if (!ended[i]) entries.set(r.id, JSON.stringify(raw[i])); });
      if (!entries.size) {
        this.committer.commit([{ type: 'delete', key }], { lazy: true }).catch(() => {});
        continue;
      }
      const batch: StartBatch = { key, n: recs.length, entries, bytes: 0, written: recs.length, writtenAtMs: nowMs, durable: Promise.resolve(), sharesEnds: false, endsPending: [], pendingBytes: 0, endWrites: 0 };
      this.batches.add(batch);
      for (const rec of recs.filter((r) => entries.has(r.id))) taken.push({ rec, batch });
    }
    for (const { rec, batch } of taken) {
      let pipeline: NormalPipeline;
      try {
        pipeline = this.pipelines.get(rec.pipeline);
      } catch {
        const job = this.adopt(rec, undefined, batch);
        void this.finish(job, 'JOB_STATE_FAILED', `pipeline ${rec.pipeline} was deleted before a new leader could resume the job`);
        continue;
      }
      const job = this.adopt(rec, pipeline, batch);
      if (rec.deadlineMs <= nowMs) {
        void this.finish(job, 'JOB_STATE_FAILED', `its leader stopped and the deadline passed before a new leader (${this.opts.coordinatorId}) could resume it`);
        continue;
      }
      rec.reason = `resumed from its first stage by ${this.opts.coordinatorId} after a leader change (earlier stages may run again)`;
      // Agents re-attach to a new leader within a few seconds: wait in the queue for instances.
      this.enqueue(job, 'waiting for instances after a leader change');
    }
    if (taken.length) this.log.info({ jobs: taken.length }, 'jobs of the previous leader taken over');
  }

  private adopt(rec: JobRecord, pipeline: NormalPipeline | undefined, batch?: StartBatch): LiveJob {
    const job: LiveJob = {
      rec, pipeline: pipeline ?? { name: rec.pipeline, stages: [], defaultTimeoutMs: 0, maxPayloadBytes: 0, routing: 'path-cost', version: 0, updatedAtMs: 0 },
      input: Buffer.from(rec.payload ?? '', 'base64'), waiters: [],
      accepted: Promise.resolve(), // read from its start record
      batch,
    };
    this.jobs.set(rec.id, job);
    if (rec.idempotencyKey) this.byKey.set(rec.idempotencyKey, rec.id);
    this.inFlight++; // until finish(), like an admitted job
    return job;
  }

  /**
   * The budget's windows as the leaders before this one left them: their records count against
   * the budget here (and their leases are the first revoked), or every failover would start
   * from zero and a few of them within the retention could fill etcd.
   */
  private async loadWindows(nowMs: number): Promise<void> {
    const text = await this.store.client.get(this.windowsKey()).string();
    if (!text) return;
    let saved: unknown;
    try {
      saved = JSON.parse(text);
    } catch {
      saved = undefined;
    }
    if (!Array.isArray(saved) || !saved.every((w) => w && typeof w.id === 'string' && Number.isFinite(w.grantedAtMs) && Number.isFinite(w.bytes))) {
      this.log.warn({ key: this.windowsKey() }, 'job record budget: the saved windows are unreadable; counting from zero');
      return;
    }
    const ttlMs = this.opts.retentionMs * 1.1 + 1_000;
    const live = (saved as { id: string; grantedAtMs: number; bytes: number }[]).filter((w) => nowMs - w.grantedAtMs <= ttlMs && !this.windows.some((x) => x.id === w.id));
    this.windows = [...live, ...this.windows].sort((a, b) => a.grantedAtMs - b.grantedAtMs);
    this.recordBytes = this.windows.reduce((n, w) => n + w.bytes, 0);
    this.metrics?.set('tessera_job_records_bytes', {}, this.recordBytes);
    if (live.length) this.log.info({ windows: live.length, mb: Math.round(this.recordBytes / 104857.6) / 10 }, 'job record budget: the previous leaders\' records counted');
  }

  /** Saves the windows at most once a second (lazily, with the next transaction), and once more after the last change. */
  private saveWindows(nowMs = Date.now()): void {
    if (this.stopped) return;
    const wait = this.windowsSavedAtMs + 1_000 - nowMs;
    if (wait > 0) {
      this.windowsTimer ??= setTimeout(() => {
        this.windowsTimer = undefined;
        this.saveWindows();
      }, wait);
      this.windowsTimer.unref?.();
      return;
    }
    this.windowsSavedAtMs = nowMs;
    this.committer.commit([this.windowsOp()], { lazy: true })
      .catch((err) => this.log.debug({ err: (err as Error).message }, 'job record budget windows not saved'));
  }

  private windowsOp(): import('../store').Op {
    return { type: 'put', key: this.windowsKey(), value: JSON.stringify(this.windows) };
  }

  /**
   * Resolves once the end records of jobs answered so far are queued with the group commit: a
   * job's end record is queued after its answer has gone out (afterWrites) and, at a window's
   * start, after its retention lease is granted. A graceful step-down waits for this, then drains.
   */
  async settle(): Promise<void> {
    await new Promise<void>((r) => afterWrites(r));
    // The continuations of the jobs released above run as microtasks: one more turn and they have
    // queued their records, unless they wait for a lease being granted (then once more after it).
    await new Promise<void>((r) => setImmediate(r));
    // Shared end records waiting for more of their batch's ends go now.
    for (const b of this.batches) if (b.endsPending.length) void this.flushEnds(b);
    await new Promise<void>((r) => setImmediate(r));
    for (let i = 0; i < 3 && this.leasePending; i++) {
      await this.leasePending.catch(() => {});
      await new Promise<void>((r) => setImmediate(r));
    }
  }

  stop(): void {
    this.stopped = true;
    for (const b of this.batches) {
      // settle() writes what they held on a graceful stop.
      clearTimeout(b.endTimer);
      b.endTimer = undefined;
    }
    if (this.windowsTimer) {
      // The last changes go with the records a graceful step-down drains (a fenced write fails harmlessly).
      clearTimeout(this.windowsTimer);
      this.windowsTimer = undefined;
      this.committer.commit([this.windowsOp()], { lazy: true }).catch(() => {});
    }
    for (const j of this.jobs.values()) {
      for (const w of j.waiters) w.resolve(this.toProto(j));
      j.waiters = [];
    }
  }

  // ─────────────────────────────────── submit ───────────────────────────────────

  /** by: who submits it (a token's name or a certificate's CN, when callers are identified), kept in its record. */
  async submit(req: SubmitJobRequest__Output, by = '', nowMs = Date.now()): Promise<Admission> {
    try {
      return await this.admitOnce(req, nowMs, by);
    } catch (err) {
      this.refused(err);
      throw err;
    }
  }

  /** A submission refused (SubmitJobs, or a DirectJobs start or lease), by its gRPC code. */
  refused(err: unknown): void {
    const code = (err as { code?: number }).code;
    this.metrics?.inc('tessera_jobs_refused_total', { code: grpc.status[code ?? grpc.status.UNKNOWN] ?? String(code) });
  }

  /**
   * One admission at a time per idempotency key: a submission whose key another one is being
   * admitted with (a client's retry racing its first try, or both in one message) waits for it
   * and then finds its job, instead of both missing the lookup and both being admitted.
   */
  private async admitOnce(req: SubmitJobRequest__Output, nowMs: number, by: string): Promise<Admission> {
    const key = req.idempotencyKey ?? '';
    if (!key) return this.admit(req, nowMs, by);
    for (let held = this.keyAdmissions.get(key); held; held = this.keyAdmissions.get(key)) await held;
    let release!: () => void;
    this.keyAdmissions.set(key, new Promise<void>((r) => (release = r)));
    try {
      return await this.admit(req, nowMs, by);
    } finally {
      this.keyAdmissions.delete(key);
      release();
    }
  }

  private async admit(req: SubmitJobRequest__Output, nowMs: number, by: string): Promise<Admission> {
    const pipeline = this.pipelines.get(req.pipeline);
    const payload = Buffer.from(req.payload ?? []);
    if (payload.length > pipeline.maxPayloadBytes) {
      throw InvalidArgumentError.field('payload', `is ${payload.length} bytes; pipeline ${pipeline.name} takes at most ${pipeline.maxPayloadBytes}`);
    }
    const timeout = Number(req.timeoutMs ?? 0);
    if (timeout < 0 || timeout > 24 * 3_600_000) throw InvalidArgumentError.field('timeoutMs', 'must be 0..86400000 ms');
    const resentAfter = Number(req.resentAfterMs ?? 0);
    if (resentAfter < 0 || resentAfter > 24 * 3_600_000) throw InvalidArgumentError.field('resentAfterMs', 'must be 0..86400000 ms');
    let deadlineMs: number;
    if (Number(req.deadlineMs)) {
      deadlineMs = Number(req.deadlineMs);
      if (deadlineMs <= nowMs) throw InvalidArgumentError.field('deadlineMs', `is already past (${nowMs - deadlineMs} ms ago)`);
    } else {
      // A resend: the default timeout counts from the client's first send (timeout_ms it resends as what is left).
      deadlineMs = nowMs + (timeout || Math.max(1, pipeline.defaultTimeoutMs - resentAfter));
    }
    const key = req.idempotencyKey ?? '';
    if (key && !KEY_RE.test(key)) throw InvalidArgumentError.field('idempotencyKey', 'must be 1-128 printable ASCII characters without spaces');
    checkHeaders(req.headers, 'headers');
    if (key) {
      const existing = await this.byIdempotencyKey(key);
      if (existing) {
        if (existing.pipeline !== pipeline.name) throw InvalidArgumentError.field('idempotencyKey', `already used by job ${existing.id} of pipeline ${existing.pipeline}`);
        return req.wait ? { done: this.whenDone(existing.id!) } : { job: existing };
      }
    }

    let planned: Planned | undefined;
    let queuedWhy: string | undefined;
    try {
      planned = this.plan(pipeline, 0, NONE, undefined, false);
    } catch (err) {
      if (!(err instanceof NoPathError)) throw err;
      // Only saturation queues a job; a stage without healthy instances refuses it.
      try {
        this.plan(pipeline, 0, NONE, undefined, true);
      } catch (e2) {
        if (e2 instanceof NoPathError) throw new UnavailableError(`pipeline ${pipeline.name}, ${e2.message}`);
        throw e2;
      }
      if (this.queue.length + this.queueReserved >= this.opts.queueLimit) {
        throw new ResourceExhaustedError(`pipeline ${pipeline.name}, ${err.message}; ${this.queue.length} jobs are queued already (the limit)`);
      }
      queuedWhy = err.message;
    }

    // Unique without a syscall per job: this leader's random prefix, the start batch and a
    // counter in it (the batch's name in the id finds the job's shared end record).
    const size = Math.ceil(payload.length / 3) * 4 + 512;
    const batch = this.startBatch(size);
    const id = `j-${nowMs.toString(36)}-${this.idPrefix}${batch.seq}.${(batch.n++).toString(36)}`;
    const rec: JobRecord = {
      id, pipeline: pipeline.name, pipelineVersion: pipeline.version, state: planned ? 'JOB_STATE_RUNNING' : 'JOB_STATE_QUEUED', reason: queuedWhy ? `queued: ${queuedWhy}` : '',
      failedStage: '', submittedAtMs: nowMs, finishedAtMs: 0, deadlineMs, idempotencyKey: key, path: planned?.path ?? [], steps: [], plans: planned ? 1 : 0,
      payloadBytes: payload.length, flow: this.opts.flow, durationMs: 0, headers: { ...(req.headers ?? {}) },
    };
    if (by) rec.submittedBy = by;
    const job: LiveJob = { rec, pipeline, input: payload, waiters: [] };
    if (planned) {
      job.route = { hops: planned.hops, holding: planned.holding };
      this.components.acquire(planned.holding);
    }
    this.jobs.set(id, job);
    if (key) this.byKey.set(key, id);
    this.inFlight++;
    // Its start goes into this turn's shared start record. A waited-for job runs meanwhile (its
    // answer, the job's end, waits for that record); any other is acknowledged once it is durable.
    this.recordStart(job, batch, size);
    if (req.wait && planned) {
      const done = this.whenDone(id);
      void this.execute(job, 0, job.input, rec.headers);
      return { done };
    }
    if (!planned) this.queueReserved++;
    try {
      await job.accepted;
    } catch (err) {
      if (planned) this.components.release(planned.holding);
      this.jobs.delete(id);
      if (key) this.byKey.delete(key);
      this.inFlight--;
      this.endedInBatch(job);
      throw err;
    } finally {
      if (!planned) this.queueReserved--;
    }
    const done = req.wait ? this.whenDone(id) : undefined;
    if (planned) void this.execute(job, 0, job.input, rec.headers);
    else this.enqueue(job, queuedWhy!);
    return done ? { done } : { job: this.toProto(job) };
  }

  // ─────────────────────────────── direct jobs ───────────────────────────────
  // A DirectJobs client runs its jobs itself along routes this leader leases it (straight to the
  // first hop's agent), and sends each job's start here, where it is recorded as a waited-for
  // job's is, and then how the relay ended. The leader plans (leases), admits (ids, limits),
  // records, and takes over: a failed relay is re-planned from the failed stage, and the jobs of
  // a client that goes away are run again from their first stage.

  /** Routes for a pipeline's jobs (the planner's best, each planned with the ones before it held), under a new lease. */
  leaseRoutes(pipelineName: string, by: string, nowMs = Date.now()): DirectLease {
    if (this.stopped) throw new NotLeaderError();
    const pipeline = this.pipelines.get(pipelineName);
    const routes: Planned[] = [];
    try {
      for (let k = 0; k < LEASE_ROUTES; k++) {
        const planned = this.plan(pipeline, 0, NONE, undefined, false);
        this.components.acquire(planned.holding);
        routes.push(planned);
      }
    } catch (err) {
      if (!(err instanceof NoPathError)) throw err;
      if (!routes.length) {
        // Saturated: no routes (the client submits through SubmitJobs, which queues). No healthy instance: refused.
        try {
          this.plan(pipeline, 0, NONE, undefined, true);
        } catch (e2) {
          if (e2 instanceof NoPathError) throw new UnavailableError(`pipeline ${pipeline.name}, ${e2.message}`);
          throw e2;
        }
      }
    } finally {
      for (const r of routes) this.components.release(r.holding);
    }
    const seq = (this.batchSeq++).toString(36);
    const name = `${this.idPrefix}-${seq}`;
    const ends: StartBatch = {
      key: '', name, n: 0, entries: new Map(), bytes: 0, written: 0, writtenAtMs: 0, durable: Promise.resolve(), sharesEnds: true, endsPending: [], pendingBytes: 0, endWrites: 0,
    };
    return { idPrefix: `j-${nowMs.toString(36)}-${this.idPrefix}${seq}`, pipeline, routes, ends, open: new Set(), by };
  }

  /** A direct job's start: recorded (with the starts of this turn); resolves once durable. */
  async startDirect(lease: DirectLease, start: DirectStart__Output, nowMs = Date.now()): Promise<void> {
    if (this.stopped) throw new NotLeaderError();
    const id = start.jobId ?? '';
    if (!id.startsWith(`${lease.idPrefix}.`) || !DIRECT_ID_N.test(id.slice(lease.idPrefix.length + 1))) {
      throw InvalidArgumentError.field('start.job_id', `must be the lease's id prefix ${lease.idPrefix} + "." + a base-36 number`);
    }
    if (this.jobs.has(id)) throw new AlreadyExistsError(`job ${id} was started already`);
    // The client keeps to this itself (past it, it submits through SubmitJobs): here for one that does not.
    if (lease.open.size >= LEASE_MAX_IN_FLIGHT) throw new ResourceExhaustedError(`lease ${lease.idPrefix} has ${lease.open.size} jobs in flight (its max_in_flight); submit the rest through SubmitJobs`);
    const pipeline = lease.pipeline;
    if (start.pipeline !== pipeline.name) throw InvalidArgumentError.field('start.pipeline', `is ${JSON.stringify(start.pipeline)}; this lease is for pipeline ${pipeline.name}`);
    const route = lease.routes[start.route];
    if (!route) throw InvalidArgumentError.field('start.route', `must be 0..${lease.routes.length - 1} (the lease's routes)`);
    const payload = Buffer.from(start.payload ?? []);
    if (payload.length > pipeline.maxPayloadBytes) {
      throw InvalidArgumentError.field('start.payload', `is ${payload.length} bytes; pipeline ${pipeline.name} takes at most ${pipeline.maxPayloadBytes}`);
    }
    // The time left, on this clock (the client's clock need not agree); else the client's deadline.
    const budget = Number(start.budgetMs);
    if (budget < 0 || budget > 24 * 3_600_000) throw InvalidArgumentError.field('start.budget_ms', 'must be 0..86400000 ms');
    const deadlineMs = budget ? nowMs + budget : Number(start.deadlineMs);
    if (!deadlineMs) throw InvalidArgumentError.field('start.deadline_ms', 'is required (or budget_ms)');
    if (deadlineMs <= nowMs) throw InvalidArgumentError.field('start.deadline_ms', `is already past (${nowMs - deadlineMs} ms ago)`);
    checkHeaders(start.headers, 'start.headers');
    const rec: JobRecord = {
      id, pipeline: pipeline.name, pipelineVersion: pipeline.version, state: 'JOB_STATE_RUNNING', reason: '', failedStage: '', submittedAtMs: nowMs, finishedAtMs: 0,
      deadlineMs, idempotencyKey: '', path: route.path, steps: [], plans: 1, payloadBytes: payload.length, flow: 'direct', durationMs: 0, headers: { ...(start.headers ?? {}) },
    };
    if (lease.by) rec.submittedBy = lease.by;
    const job: LiveJob = { rec, pipeline, input: payload, waiters: [], route: { hops: route.hops, holding: route.holding }, direct: lease, endBatch: lease.ends };
    this.components.acquire(route.holding);
    this.jobs.set(id, job);
    this.inFlight++;
    lease.open.add(job);
    lease.ends.entries.set(id, '');
    const size = Math.ceil(payload.length / 3) * 4 + 512;
    this.recordStart(job, this.startBatch(size), size);
    try {
      await job.accepted;
    } catch (err) {
      if (job.route) this.components.release(job.route.holding);
      job.route = undefined;
      this.jobs.delete(id);
      this.inFlight--;
      lease.open.delete(job);
      lease.ends.entries.delete(id);
      this.endedInBatch(job);
      throw err;
    }
  }

  /**
   * How a direct job's relay ended, as its client reports it: a success is recorded (answered
   * at once); a failure is taken over (re-planned from the failed stage) and answered with the
   * job as it ends. A job this lease no longer runs (cancelled, or taken over) keeps its own end.
   */
  async endDirect(lease: DirectLease, end: DirectEnd__Output): Promise<Job | undefined> {
    const id = end.jobId ?? '';
    const job = this.jobs.get(id);
    if (!job) throw new NotFoundError('job', id);
    const r = end.result;
    if (!r) throw InvalidArgumentError.field('end.result', 'is required');
    if (job.direct !== lease || TERMINAL.has(job.rec.state) || !job.route) return r.ok ? undefined : this.whenDone(id);
    lease.open.delete(job);
    job.direct = undefined;
    const outcome: RelayOutcome = {
      ok: r.ok, payload: Buffer.from(r.payload ?? []), headers: r.headers ?? {}, hops: r.hops ?? [], failedIndex: r.failedIndex,
      failedInput: Buffer.from(r.failedInput ?? []), failedHeaders: r.failedHeaders ?? {}, errorCode: r.errorCode, error: r.error ?? '',
    };
    if (!r.ok && (outcome.failedIndex < 0 || outcome.failedIndex >= job.pipeline.stages.length || !outcome.hops.length)) {
      // Nothing ran (or the failed stage is out of range): from the first stage, with the job's input.
      outcome.failedIndex = 0;
      outcome.failedInput = job.input;
      outcome.failedHeaders = job.rec.headers;
    }
    // A relay that ran nothing at the failed stage refused this client, not the step (an agent
    // without the leader's ticket key yet, say): this leader runs it, as after a transport error.
    if (!r.ok && !TRANSPORT_CODES.has(outcome.errorCode) && !outcome.hops.some((h) => h.index === outcome.failedIndex)) outcome.errorCode = grpc.status.UNAVAILABLE;
    const ran = this.execute(job, 0, job.input, job.rec.headers, outcome);
    if (r.ok) {
      void ran;
      return undefined;
    }
    await ran;
    return this.whenDone(id);
  }

  /**
   * A lease's client went away (its stream ended): the jobs it had not reported are run again
   * from their first stage, as a new leader runs the jobs of the one before.
   */
  dropLease(lease: DirectLease): void {
    for (const job of lease.open) {
      void job.accepted?.then(() => this.takeOver(job, 'its client went away before it reported the end'), () => {});
    }
    lease.open.clear();
  }

  /** Direct jobs whose client reported no end well past their deadline are failed (each second, by the stream that holds the lease). */
  sweepDirect(lease: DirectLease, nowMs = Date.now()): void {
    for (const job of lease.open) {
      if (TERMINAL.has(job.rec.state) || job.direct !== lease) {
        lease.open.delete(job);
        continue;
      }
      if (nowMs < job.rec.deadlineMs + DIRECT_END_GRACE_MS) continue;
      lease.open.delete(job);
      job.direct = undefined;
      void this.finish(job, 'JOB_STATE_FAILED', `deadline passed and its client reported no end (${DIRECT_END_GRACE_MS / 1000} s after it)`);
    }
  }

  private takeOver(job: LiveJob, why: string): void {
    if (TERMINAL.has(job.rec.state) || !job.direct) return;
    job.direct = undefined;
    if (job.route) this.components.release(job.route.holding);
    job.route = undefined;
    job.rec.reason = `resumed from its first stage by the leader: ${why} (earlier stages may run again)`;
    this.enqueue(job, why);
    this.pump();
  }

  private async byIdempotencyKey(key: string): Promise<Job | undefined> {
    const id = this.byKey.get(key) ?? (await this.lookupKey(key)) ?? '';
    if (!id) return undefined;
    return this.get(id).catch(() => undefined);
  }

  /**
   * A key not in memory is looked up in etcd: the lookups of one event-loop turn in one
   * transaction of reads (a client that keys every job, as it should, costs etcd a request per
   * batch instead of one per job).
   */
  private lookupKey(key: string): Promise<string | null> {
    return new Promise((resolve, reject) => {
      if (!this.keyLookups) {
        const batch = new Map<string, { resolve: (v: string | null) => void; reject: (e: unknown) => void }[]>();
        this.keyLookups = batch;
        setImmediate(() => {
          this.keyLookups = undefined;
          const keys = [...batch.keys()];
          // etcd takes at most 128 operations in a transaction (--max-txn-ops).
          for (let i = 0; i < keys.length; i += 100) {
            const chunk = keys.slice(i, i + 100);
            this.store.client.kv.txn({ success: chunk.map((k) => ({ request_range: { key: Buffer.from(this.keys.jobKey(k)) } })) }).then((res) => {
              chunk.forEach((k, j) => {
                const kv = res.responses[j]?.response_range?.kvs?.[0];
                for (const w of batch.get(k)!) w.resolve(kv ? kv.value.toString() : null);
              });
            }, (err) => {
              // Nothing admitted: the client may retry with the same key.
              const e = new UnavailableError(`idempotency key lookup in etcd failed: ${(err as Error).message}`);
              for (const k of chunk) for (const w of batch.get(k)!) w.reject(e);
            });
          }
        });
      }
      const waiting = this.keyLookups.get(key);
      if (waiting) waiting.push({ resolve, reject });
      else this.keyLookups.set(key, [{ resolve, reject }]);
    });
  }

  private whenDone(id: string): Promise<Job> {
    const job = this.jobs.get(id);
    if (!job) return this.get(id);
    if (TERMINAL.has(job.rec.state)) return Promise.resolve(this.toProto(job));
    return new Promise((resolve, reject) => job.waiters.push({ resolve, reject }));
  }

  /**
   * Puts a job's start (with its input: a new leader runs it again from its first stage) in this
   * event-loop turn's shared start record: the jobs a client's batch brings in one message cost
   * one etcd key and one transaction together, not one each. job.accepted settles with it.
   */
  private recordStart(job: LiveJob, b: StartBatch & { seq: string }, size: number): void {
    b.entries.set(job.rec.id, '');
    b.admitted!.push({ job, state: job.rec.state, plans: job.rec.plans });
    b.bytes += size;
    job.batch = b;
    job.accepted = b.durable;
  }

  /**
   * This turn's start batch, or a new one when there is none or the job (size: an upper bound
   * of its entry, base64 input and the fields around it) would take it past START_BATCH_BYTES.
   * Its entries are encoded after this turn's relays and answers have gone out (afterWrites):
   * nothing waits for the record's bytes before its transaction, and the jobs' first stages run
   * meanwhile.
   */
  private startBatch(size: number): StartBatch & { seq: string } {
    let b = this.openBatch;
    if (!b || b.bytes + size > START_BATCH_BYTES) {
      let settle!: { resolve: () => void; reject: (e: unknown) => void };
      const durable = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
      durable.catch(() => {}); // each job's finish() or admit() reads the outcome
      const seq = (this.batchSeq++).toString(36);
      const name = `${this.idPrefix}-${seq}`;
      const nb: StartBatch & { seq: string } = {
        key: this.startedKey(name), name, seq, n: 0, entries: new Map(), bytes: 0, written: 0, writtenAtMs: 0, durable, admitted: [],
        sharesEnds: true, endsPending: [], pendingBytes: 0, endWrites: 0,
      };
      this.openBatch = b = nb;
      this.batches.add(nb);
      afterWrites(() => {
        if (this.openBatch === nb) this.openBatch = undefined;
        for (const a of nb.admitted!) if (nb.entries.has(a.job.rec.id)) nb.entries.set(a.job.rec.id, encodeStart(a.job.rec, a.job.input, a.state, a.plans));
        nb.admitted = undefined;
        if (!nb.entries.size) {
          this.batches.delete(nb);
          settle.resolve();
          return;
        }
        nb.written = nb.entries.size;
        nb.writtenAtMs = Date.now();
        this.committer.commit([{ type: 'put', key: nb.key, value: `[${[...nb.entries.values()].join(',')}]` }]).then(settle.resolve, (err) => {
          // Not acknowledged: its jobs answer with the error.
          this.batches.delete(nb);
          nb.entries.clear();
          settle.reject(err);
          // Yet etcd may have taken it before the connection broke (the outcome of a write whose
          // answer was lost is unknown): deleted, tried again as end records are, so that a next
          // leader does not run jobs whose callers were told they were not accepted. A write the
          // fence refused was not taken, and a coordinator that no longer leads cannot delete.
          if (err instanceof FencedError || err instanceof NotLeaderError) return;
          this.writeAgain(() => this.committer.commit([{ type: 'delete', key: nb.key }]), 'unacknowledged start record deletion', { key: nb.key })
            .then(() => this.log.info({ key: nb.key, jobs: nb.written }, 'start record of jobs not acknowledged deleted (etcd may have taken it)'))
            .catch((e) => this.log.warn({ key: nb.key, err: (e as Error).message }, 'start record of jobs not acknowledged not deleted; a next leader may run them'));
        });
      });
    }
    return b as StartBatch & { seq: string };
  }

  /** A job's end is durable (or it was never acknowledged): its shared start record goes with the last one. */
  private endedInBatch(job: LiveJob): void {
    const b = job.batch;
    if (!b) return;
    job.batch = undefined;
    b.entries.delete(job.rec.id);
    if (b.entries.size || this.openBatch === b || !this.batches.has(b)) return;
    this.batches.delete(b);
    // Tried again as end records are: left behind, it would outlive the end records (they expire),
    // and a next leader would run its jobs again.
    this.writeAgain(() => this.committer.commit([{ type: 'delete', key: b.key }], { lazy: true }), 'shared start record deletion', { key: b.key })
      .catch((err) => this.log.warn({ key: b.key, err: (err as Error).message }, 'shared start record not deleted; the next leader deletes it'));
  }

  /**
   * Writes again, without their ended jobs, shared start records that have lived a while: an
   * ended job is told apart by its end record, which expires after the retention.
   */
  sweepStarts(nowMs = Date.now()): void {
    const after = Math.min(60_000, this.opts.retentionMs / 4);
    for (const b of this.batches) {
      if (b.written === b.entries.size || !b.writtenAtMs || nowMs - b.writtenAtMs < after) continue;
      b.written = b.entries.size;
      b.writtenAtMs = nowMs;
      this.committer.commit([{ type: 'put', key: b.key, value: `[${[...b.entries.values()].join(',')}]` }], { lazy: true })
        .catch((err) => this.log.debug({ key: b.key, err: (err as Error).message }, 'shared start record not rewritten'));
    }
  }

  // ─────────────────────────────────── planning ───────────────────────────────────

  /**
   * The cheapest path for stages from..end (jobs/path.ts), as a route the relays can run: per hop
   * the planned instance first, then for a stage with alternatives the best instance of each
   * other kind (so a when_header rule can switch to it without a round trip).
   */
  private plan(p: NormalPipeline, from: number, exclude: ReadonlySet<string>, originNodeId: string | undefined, allowSaturated: boolean): Planned {
    const cands = this.components.candidates();
    const usable: Candidate[] = allowSaturated ? cands.map((c) => ({ ...c, saturated: false })) : cands;
    const stages = this.stagesOf(p, from);
    const choice = (p.routing ?? 'path-cost') === 'path-cost'
      ? choosePath(stages, usable, { hopMs: this.opts.hopMs, sameHostHopMs: this.opts.sameHostHopMs, originNodeId, exclude, topK: 8 })
      : this.perStageChoice(p, from, stages, usable, exclude);
    // The same route object for the same choice (until the registry is rebuilt): the relay
    // stream names a route by id once it has carried it, and tells routes apart by identity
    // first (common/relay.ts), instead of keying every job's route by its text. Routes are
    // found through a tree of the picked instances, hop by hop (no key built per job).
    if (this.routeCacheOf !== cands) {
      this.routeCacheOf = cands;
      this.routeCache = new WeakMap();
      this.routesCached = 0;
    }
    let node = this.routeCache.get(p);
    if (!node) this.routeCache.set(p, (node = new Map()));
    node = step(node, from);
    const steps = choice.steps;
    const picks: LiveCandidate[][] = [];
    // The instances the job holds while it runs, each with its share of the path's latency.
    const holding: Holding = { ids: [], shares: [] };
    let total = 0;
    for (let i = 0; i < steps.length; i++) {
      const stage = p.stages[from + i];
      const planned = this.components.candidate(steps[i].instanceId)!;
      const lat = Math.max(0.001, planned.latencyMs);
      holding.ids.push(planned.instanceId);
      holding.shares.push(lat);
      total += lat;
      const picked = [planned];
      if (stage.options.length > 1) {
        for (const o of stage.options) {
          if (o.kind === planned.kind) continue;
          const best = usable
            .filter((c) => c.kind === o.kind && c.healthy && !c.saturated && !exclude.has(c.instanceId) && stages[i].accept!(c))
            .sort((a, b) => (a.nodeId === planned.nodeId ? 0 : 1) - (b.nodeId === planned.nodeId ? 0 : 1) || instanceCost(a) - instanceCost(b))[0];
          if (best) picked.push(this.components.candidate(best.instanceId)!);
        }
      }
      for (const c of picked) node = step(node, c.instanceId);
      node = step(node, HOP_END);
      picks.push(picked);
    }
    let hops = node.get(ROUTE) as RouteHop[] | undefined;
    if (!hops) {
      hops = picks.map((picked, i) => {
        const stage = p.stages[from + i];
        const opt = (c: LiveCandidate) => {
          const o = stage.options.find((x) => x.kind === c.kind)!;
          return { kind: c.kind, operation: o.operation, instanceId: c.instanceId, nodeId: c.r.nodeId, endpoint: c.r.endpoint, agentEndpoint: c.r.agentEndpoint, whenHeader: o.whenHeader };
        };
        return { stage: stage.name, options: picked.map(opt), timeoutMs: stage.timeoutMs };
      });
      if (++this.routesCached > 1024) {
        this.routeCache = new WeakMap();
        this.routesCached = 0;
      }
      node.set(ROUTE, hops);
    }
    for (const s of steps) if (s.nodeId.startsWith('external:')) s.nodeId = '';
    for (let i = 0; i < holding.shares.length; i++) holding.shares[i] /= total;
    return { hops, path: steps, holding };
  }

  /** The path search's view of a pipeline's stages from one index on (built once per pipeline version). */
  private stagesOf(p: NormalPipeline, from: number): Stage[] {
    let byFrom = this.stageCache.get(p);
    if (!byFrom) this.stageCache.set(p, (byFrom = new Map()));
    let stages = byFrom.get(from);
    if (!stages) {
      stages = p.stages.slice(from).map((s) => {
        const byKind = new Map(s.options.map((o) => [o.kind, o]));
        return {
          name: s.name,
          alternatives: s.options.map((o) => ({ kind: o.kind, costHint: o.costHint })),
          accept: (c: Candidate) => {
            const o = byKind.get(c.kind);
            const r = (c as Candidate & { r: Routable }).r;
            return !!o && versionMatches(r.version, o.version) && (!o.operation || !r.operations.length || r.operations.includes(o.operation));
          },
        };
      });
      byFrom.set(from, stages);
    }
    return stages;
  }

  private stageCache = new WeakMap<NormalPipeline, Map<number, Stage[]>>();
  /** Routes by pipeline version and choice (a tree: first stage index, then per hop the picked instances and HOP_END), for the candidate list (a registry list) they were built from. */
  private routeCache = new WeakMap<NormalPipeline, RouteNode>();
  private routesCached = 0;
  private routeCacheOf?: unknown;
  private rr = new Map<string, number>();

  /** round-robin and least-loaded: each stage on its own, blind to latency and locality. */
  private perStageChoice(p: NormalPipeline, from: number, stages: Stage[], cands: Candidate[], exclude: ReadonlySet<string>): ReturnType<typeof choosePath> {
    const steps = stages.map((s, i) => {
      const kinds = new Set(s.alternatives.map((a) => a.kind));
      const pool = cands.filter((c) => kinds.has(c.kind) && s.accept!(c) && c.healthy && !c.saturated && !exclude.has(c.instanceId))
        .sort((a, b) => a.instanceId.localeCompare(b.instanceId));
      if (!pool.length) throw new NoPathError(s.name, `no instance of ${[...kinds].join(' or ')} can take work`);
      let c: Candidate;
      if (p.routing === 'round-robin') {
        const key = `${p.name}/${from + i}`;
        const n = this.rr.get(key) ?? 0;
        this.rr.set(key, n + 1);
        c = pool[n % pool.length];
      } else {
        const min = Math.min(...pool.map((x) => x.inFlight));
        const least = pool.filter((x) => x.inFlight === min);
        c = least[Math.floor(Math.random() * least.length)];
      }
      return { stage: s.name, kind: c.kind, instanceId: c.instanceId, nodeId: c.nodeId, costMs: 0 };
    });
    return { steps, totalMs: 0 };
  }

  // ─────────────────────────────────── running ───────────────────────────────────

  /** Runs a job from stage `from`; `first`: how its first run along job.route ended, when its client ran it (a direct job). */
  private async execute(job: LiveJob, from: number, input: Buffer, headers: Record<string, string>, first?: RelayOutcome): Promise<void> {
    // Made on a first failure (most jobs have none).
    let attempts: Map<number, number> | undefined;
    let exclude: Set<string> | undefined;
    for (;;) {
      const route = job.route!;
      const res = first ?? await this.runner.run({
        jobId: job.rec.id, route: route.hops, payload: input, headers, deadlineMs: job.rec.deadlineMs, attempt: job.rec.plans, firstIndex: from, compactHops: true,
      } as never);
      first = undefined;
      // Hops reported by option (compact_hops) get their names back from the route they ran.
      for (const h of res.hops) {
        if (h.instanceId || !h.option) continue;
        const rh = route.hops[Number(h.index) - from];
        const o = rh?.options?.[h.option - 1];
        if (o) {
          h.stage = rh.stage;
          h.kind = o.kind;
          h.instanceId = o.instanceId;
          h.nodeId = o.nodeId;
        }
      }
      // A cancel meanwhile released the route already (finish); release it only if still ours.
      if (job.route === route) {
        this.components.release(route.holding);
        job.route = undefined;
      }
      const metrics = this.metrics?.enabled ? this.metrics : undefined;
      // Cancelled meanwhile: its record was written without these steps (the instances' figures still learn from them).
      const cancelled = TERMINAL.has(job.rec.state);
      for (const h of res.hops) {
        this.components.observe(h.instanceId!, Number(h.durationMs), !!h.ok, Number(h.code ?? 0));
        if (cancelled) continue;
        const step: JobStep = {
          stage: h.stage, kind: h.kind, instanceId: h.instanceId, nodeId: h.nodeId, attempt: (attempts?.get(Number(h.index)) ?? 0) + 1,
          startedAtMs: h.startedAtMs, durationMs: Math.round(Number(h.durationMs) * 1000) / 1000, ok: h.ok, error: h.error,
        };
        job.rec.steps.push(step);
        metrics?.observe('tessera_job_step_seconds', { pipeline: job.rec.pipeline, stage: String(h.stage) }, Number(h.durationMs) / 1000);
      }
      if (cancelled) return;
      if (res.ok) {
        await this.finish(job, 'JOB_STATE_SUCCEEDED', '', res.payload, res.headers);
        return;
      }
      const i = res.failedIndex;
      const stage = job.pipeline.stages[i];
      attempts ??= new Map();
      const n = (attempts.get(i) ?? 0) + 1;
      attempts.set(i, n);
      const failedHop = res.hops.find((h) => h.index === i && !h.ok);
      if (!TRANSPORT_CODES.has(res.errorCode)) {
        await this.finish(job, 'JOB_STATE_FAILED', `stage ${stage.name}: ${res.error}`, undefined, undefined, stage.name);
        return;
      }
      if (n >= stage.maxAttempts) {
        await this.finish(job, 'JOB_STATE_FAILED', `stage ${stage.name} failed ${n} times; last: ${res.error}`, undefined, undefined, stage.name);
        return;
      }
      if (Date.now() >= job.rec.deadlineMs) {
        await this.finish(job, 'JOB_STATE_FAILED', `deadline passed at stage ${stage.name}; last error: ${res.error}`, undefined, undefined, stage.name);
        return;
      }
      exclude ??= new Set();
      if (failedHop?.instanceId) exclude.add(failedHop.instanceId);
      const origin = i > 0 ? job.rec.path[i - 1]?.nodeId || undefined : undefined;
      let next: Planned;
      try {
        next = this.plan(job.pipeline, i, exclude, origin, true);
      } catch (err) {
        const why = err instanceof NoPathError ? err.message : (err as Error).message;
        await this.finish(job, 'JOB_STATE_FAILED', `stage ${stage.name} failed (${res.error}) and no other instance can take it: ${why}`, undefined, undefined, stage.name);
        return;
      }
      this.metrics?.inc('tessera_job_retries_total', { pipeline: job.rec.pipeline, stage: stage.name });
      this.log.debug({ job: job.rec.id, stage: stage.name, failed: failedHop?.instanceId, next: next.path[0]?.instanceId, error: res.error }, 'step retried on another instance');
      this.components.acquire(next.holding);
      job.route = { hops: next.hops, holding: next.holding };
      job.rec.path = [...job.rec.path.slice(0, i), ...next.path];
      job.rec.plans++;
      this.changed(job);
      from = i;
      input = res.failedInput;
      headers = res.failedHeaders;
    }
  }

  private enqueue(job: LiveJob, why: string): void {
    job.queuedWhy = why;
    job.rec.state = 'JOB_STATE_QUEUED';
    this.queue.push(job);
    this.changed(job);
  }

  /** Starts queued jobs that have a path now; fails those whose deadline passed. */
  pump(nowMs = Date.now()): void {
    if (!this.queue.length || this.stopped) return;
    const keep: LiveJob[] = [];
    for (const job of this.queue) {
      if (TERMINAL.has(job.rec.state)) continue;
      if (job.rec.deadlineMs <= nowMs) {
        void this.finish(job, 'JOB_STATE_FAILED', `deadline passed while queued (${job.queuedWhy})`);
        continue;
      }
      let planned: Planned;
      try {
        planned = this.plan(job.pipeline, 0, NONE, undefined, false);
      } catch (err) {
        if (err instanceof NoPathError) job.queuedWhy = err.message;
        keep.push(job);
        continue;
      }
      this.components.acquire(planned.holding);
      job.route = { hops: planned.hops, holding: planned.holding };
      job.rec.state = 'JOB_STATE_RUNNING';
      job.rec.path = planned.path;
      job.rec.plans++;
      this.changed(job);
      void this.execute(job, 0, job.input, job.rec.headers);
    }
    this.queue = keep;
  }

  private async finish(job: LiveJob, state: Terminal, reason: string, result?: Buffer, resultHeaders?: Record<string, string>, failedStage = ''): Promise<void> {
    if (TERMINAL.has(job.rec.state)) return;
    const now = Date.now();
    const rec = job.rec;
    if (job.route) {
      this.components.release(job.route.holding);
      job.route = undefined;
    }
    rec.state = state;
    rec.reason = reason || rec.reason;
    if (state === 'JOB_STATE_SUCCEEDED') rec.reason = rec.reason.startsWith('resumed') ? rec.reason : '';
    rec.failedStage = failedStage;
    rec.finishedAtMs = now;
    rec.durationMs = now - rec.submittedAtMs;
    job.result = result;
    rec.resultHeaders = resultHeaders ?? {};
    this.inFlight--;
    // Only waiters need the job as a message (a direct job has none).
    const proto = job.waiters.length ? this.toProto(job) : undefined;
    // Stored with the result (if within the pipeline's payload limit), without the input.
    const stored = { payload: undefined, result: result && result.length <= job.pipeline.maxPayloadBytes ? result.toString('base64') : undefined };
    // A job whose start is recorded has been acknowledged: its waiters hear the end at once and
    // the end record follows (until it is durable the start record stands, and a new leader
    // would run the job again). A job without one is acknowledged by its end record: waiters
    // hear the end once that is durable, or the error that kept it from being written.
    const startDurable = job.accepted ? await job.accepted.then(() => true, () => false) : false;
    const answer = (err?: Error) => {
      for (const w of job.waiters) {
        if (err) w.reject(err);
        else w.resolve(proto!);
      }
      job.waiters = [];
    };
    // Metrics, the log and watchers learn the end with the waiters.
    let told = false;
    const tell = () => {
      if (told) return;
      told = true;
      if (this.metrics?.enabled) {
        this.metrics.observe('tessera_job_seconds', { pipeline: rec.pipeline, state: state.replace('JOB_STATE_', '') }, rec.durationMs / 1000);
        this.metrics.inc('tessera_jobs_total', { pipeline: rec.pipeline, state: state.replace('JOB_STATE_', '') });
      }
      if (state !== 'JOB_STATE_SUCCEEDED') this.log.info({ job: rec.id, pipeline: rec.pipeline, state, reason: rec.reason }, 'job did not succeed');
      this.changed(job);
      job.watchers?.clear();
      // Its instances are free: a queued job may start now, not when the end record is written.
      if (this.queue.length) this.pump();
    };
    if (startDurable) {
      answer();
      // The rest waits until the answers of this turn have gone out: nothing waits for it.
      await new Promise<void>((r) => afterWrites(r));
      tell();
    }
    let ended: string | undefined;
    try {
      const value = encodeRecord(rec, stored);
      ended = value;
      const b = job.batch;
      if (startDurable && job.endBatch && value.length <= END_OWN_BYTES) {
        await this.recordEnd(job.endBatch, job, value);
      } else if (startDurable && b?.sharesEnds && this.batches.has(b) && value.length <= END_OWN_BYTES) {
        await this.recordEnd(b, job, value);
      } else {
        const write = async () => {
          const lease = await this.retentionLease();
          const ops: import('../store').Op[] = [{ type: 'put', key: this.doneKey(rec.id), value, lease }];
          if (job.accepted && !job.batch) ops.unshift({ type: 'delete', key: this.activeKey(rec.id) });
          if (rec.idempotencyKey) ops.push({ type: 'put', key: this.keys.jobKey(rec.idempotencyKey), value: rec.id, lease });
          await this.committer.commit(ops, { lazy: startDurable });
          this.account(lease, ops);
        };
        // Answered already: written again until etcd takes it. Else its caller waits for this one try.
        await (startDurable ? this.writeAgain(write, 'job end record', { job: rec.id }) : write());
      }
      answer();
      tell();
      this.endedInBatch(job);
    } catch (err) {
      if (startDurable) {
        // Not recorded (leadership lost, or etcd down): the start record stays and the next
        // leader resumes the job. Its waiters learnt how it ended here.
        this.burstLog('warn', 'end-resume', { job: rec.id, err: (err as Error).message }, 'job end not recorded; the next leader will resume it');
      } else {
        this.burstLog('warn', 'end-refused', { job: rec.id, err: (err as Error).message }, 'job end not recorded; its caller is told so and nothing was acknowledged');
        answer(err as Error);
      }
      tell();
    }
    job.endBatch?.entries.delete(rec.id);
    job.input = NO_INPUT;
    if (ended !== undefined) {
      // Kept as its record: a result stored in it is read back from there.
      job.ended = ended;
      if (stored.result !== undefined) job.result = undefined;
      rec.path = DROPPED;
      rec.steps = DROPPED;
    }
    job.heldBytes = (job.result?.length ?? 0) + (ended?.length ?? 0);
    this.recent.push(rec.id);
    this.resultBytes += job.heldBytes;
    // Finished jobs stay in memory up to a count and a size (results can be large); older ones
    // are read back from etcd by GetJob.
    while (this.recent.length - this.recentHead > this.opts.recentLimit || (this.resultBytes > RESULT_MEMORY && this.recent.length - this.recentHead > 1)) {
      const old = this.jobs.get(this.recent[this.recentHead++]);
      if (old && TERMINAL.has(old.rec.state)) {
        this.resultBytes -= old.heldBytes ?? 0;
        this.jobs.delete(old.rec.id);
        if (old.rec.submittedAtMs > this.evictedNewestMs) this.evictedNewestMs = old.rec.submittedAtMs;
        if (old.rec.idempotencyKey) this.byKey.delete(old.rec.idempotencyKey);
      }
    }
    if (this.recentHead > 4096 && this.recentHead * 2 > this.recent.length) {
      this.recent = this.recent.slice(this.recentHead);
      this.recentHead = 0;
    }
  }

  /**
   * Puts a job's end with the ends of the jobs admitted with it: they are written together, one
   * etcd key per write (ended/<name>/<n>) instead of a key per job. Written after this turn's
   * writes once every job of the batch has ended (or the ends waiting reach END_BATCH_BYTES),
   * else within END_FLUSH_MS with the ends that come meanwhile. Resolves once it is durable.
   */
  private recordEnd(b: StartBatch, job: LiveJob, value: string): Promise<void> {
    if (b.pendingBytes + value.length > END_BATCH_BYTES) void this.flushEnds(b);
    return new Promise<void>((resolve, reject) => {
      b.endsPending.push({ job, value, resolve, reject });
      b.pendingBytes += value.length;
      // Every job whose end is not durable yet has its end here: nothing more to wait for.
      const all = this.openBatch !== b && b.entries.size === b.endsPending.length;
      if ((all || b.pendingBytes >= END_BATCH_BYTES) && !b.endFlushSoon) {
        b.endFlushSoon = true;
        clearTimeout(b.endTimer);
        b.endTimer = undefined;
        afterWrites(() => void this.flushEnds(b));
      } else if (!b.endFlushSoon && !b.endTimer && !this.stopped) {
        b.endTimer = setTimeout(() => void this.flushEnds(b), END_FLUSH_MS);
        b.endTimer.unref?.();
      }
    });
  }

  private async flushEnds(b: StartBatch): Promise<void> {
    clearTimeout(b.endTimer);
    b.endTimer = undefined;
    b.endFlushSoon = false;
    const pending = b.endsPending;
    b.endsPending = [];
    b.pendingBytes = 0;
    if (!pending.length) return;
    const key = `${this.endedPrefix(b.name!)}${(b.endWrites++).toString(36)}`;
    const value = `[${pending.map((p) => p.value).join(',')}]`;
    try {
      // The same key and value every try: a try whose answer was lost but that etcd applied is harmless.
      await this.writeAgain(async () => {
        const lease = await this.retentionLease();
        const ops: import('../store').Op[] = [{ type: 'put', key, value, lease }];
        for (const p of pending) {
          const k = p.job.rec.idempotencyKey;
          if (k) ops.push({ type: 'put', key: this.keys.jobKey(k), value: p.job.rec.id, lease });
        }
        await this.committer.commit(ops, { lazy: true });
        this.account(lease, ops);
      }, 'job end records', { key, jobs: pending.length });
      for (const p of pending) p.resolve();
    } catch (err) {
      for (const p of pending) p.reject(err);
    }
  }

  /**
   * Per-job lines that come in bursts (etcd away with thousands of jobs in flight: a line each):
   * the first, then one each 10 s per kind with how many more there were (those at debug).
   */
  private readonly throttles = new Map<string, LogThrottle>();
  private burstLog(level: 'warn' | 'info', kind: string, fields: Record<string, unknown>, msg: string): void {
    let t = this.throttles.get(kind);
    if (!t) this.throttles.set(kind, (t = new LogThrottle(10_000)));
    const held = t.take();
    if (held === undefined) this.log.debug(fields, msg);
    else this.log[level]({ ...fields, ...(held ? { moreMeanwhile: held } : {}) }, held ? `${msg} (and ${held} more like it since the last such line)` : msg);
  }

  /**
   * Writes what records the end of answered jobs (`write`, one try: their end records, or the
   * deletion of a start record all of whose jobs have ended), trying again with backoff while
   * etcd does not take it (see END_RETRY_BACKOFF). A fenced write, or a coordinator that no
   * longer leads or has stopped, ends it with the error: the jobs' start records stay, and the
   * next leader runs them again.
   */
  private async writeAgain(write: () => Promise<unknown>, what: string, fields: Record<string, unknown>): Promise<void> {
    const backoff = new Backoff(END_RETRY_BACKOFF);
    for (;;) {
      try {
        await write();
        if (backoff.attempts) this.burstLog('info', `${what} written`, { ...fields, tries: backoff.attempts + 1 }, `${what} written after etcd failed to take it`);
        return;
      } catch (err) {
        const delay = backoff.next();
        if (this.stopped || err instanceof FencedError || err instanceof NotLeaderError) throw err;
        this.metrics?.inc('tessera_job_end_record_retries_total');
        if (backoff.attempts === 1) this.burstLog('warn', `${what} not written`, { ...fields, err: (err as Error).message }, `${what} not written; trying again while this coordinator leads`);
        await sleep(delay);
      }
    }
  }

  /**
   * Finished records share a lease per window (a tenth of the retention, at most 10 s), so they
   * expire on their own. etcd deletes a lease's keys in one go when it expires: a window of 10 s
   * keeps that to 10 s of records (30,000 at 3,000 jobs/s) instead of minutes of them.
   */
  private async retentionLease(nowMs = Date.now()): Promise<string> {
    if (this.lease && nowMs - this.lease.grantedAtMs < Math.min(this.opts.retentionMs / 10, 10_000)) return this.lease.id;
    if (!this.leasePending) {
      const ttl = Math.ceil((this.opts.retentionMs * 1.1) / 1000);
      this.leasePending = this.store.client.lease(ttl, { autoKeepAlive: false }).grant().then(async (id) => {
        this.lease = { id, grantedAtMs: Date.now() };
        this.windows.push({ id, grantedAtMs: this.lease.grantedAtMs, bytes: 0 });
        // The window is saved before any record goes under its lease (one transaction per
        // window): a next leader then knows every window with records, to count them against
        // the budget and to list their jobs, even if this one dies a moment later.
        try {
          await this.committer.commit([this.windowsOp()]);
          this.windowsSavedAtMs = Date.now();
        } catch (err) {
          this.log.debug({ err: (err as Error).message }, 'job record budget windows not saved');
        }
        return id;
      }).finally(() => (this.leasePending = undefined));
    }
    return this.leasePending;
  }

  /**
   * Counts a finished job's record against the budget. Over it, the oldest window's lease is
   * revoked: etcd deletes its records at once, before their retention (at thousands of jobs a
   * second an hour of records would outgrow etcd's 2 GiB quota, and a full etcd is read-only).
   */
  private account(lease: string, ops: import('../store').Op[], nowMs = Date.now()): void {
    let n = 0;
    for (const op of ops) if (op.type === 'put') n += op.key.length + op.value.length;
    const w = this.windows[this.windows.length - 1]?.id === lease ? this.windows[this.windows.length - 1] : this.windows.find((x) => x.id === lease);
    if (w) w.bytes += n;
    this.recordBytes += n;
    // Windows past their lease's ttl are gone already.
    const ttlMs = this.opts.retentionMs * 1.1 + 1_000;
    while (this.windows.length && nowMs - this.windows[0].grantedAtMs > ttlMs) this.recordBytes -= this.windows.shift()!.bytes;
    // Only a window whose lease stopped taking records a while ago: etcd refuses a transaction
    // that names a revoked lease, and the end records of the window just closed may still be
    // queued (with other jobs' start records in the same transaction).
    while (this.recordBytes > this.opts.recordBudgetBytes && this.windows.length > 1 && nowMs - this.windows[1].grantedAtMs > 5_000) {
      const old = this.windows.shift()!;
      this.recordBytes -= old.bytes;
      this.metrics?.inc('tessera_job_records_expired_early_total');
      this.store.client.leaseClient.leaseRevoke({ ID: old.id }).catch((err) => this.log.warn({ err: (err as Error).message }, 'job records over the budget not deleted'));
      if (nowMs - this.budgetWarnedAtMs > 60_000) {
        this.budgetWarnedAtMs = nowMs;
        this.log.warn({ budgetMb: Math.round(this.opts.recordBudgetBytes / 1048576), windowAgeS: Math.round((nowMs - old.grantedAtMs) / 1000) },
          'finished-job records over --job-record-budget-mb: the oldest are deleted before their retention (raise the budget and etcd\'s quota, or shorten --job-retention-ms)');
      }
    }
    this.metrics?.set('tessera_job_records_bytes', {}, this.recordBytes);
    this.saveWindows(nowMs);
  }

  private changed(job: LiveJob): void {
    if (!job.watchers?.size) return;
    const p = this.toProto(job);
    for (const w of job.watchers) w(p);
  }

  // ─────────────────────────────────── reads ───────────────────────────────────

  async get(id: string): Promise<Job> {
    if (!id) throw InvalidArgumentError.field('id', 'is required');
    const live = this.jobs.get(id);
    if (live) return this.toProto(live);
    const c = this.store.client;
    const name = endBatchOf(id);
    const [own, shared] = await Promise.all([c.get(this.doneKey(id)).string(), name ? c.getAll().prefix(this.endedPrefix(name)).strings() : Promise.resolve({})]);
    let rec = findEnd(own, Object.values(shared), id);
    if (!rec) {
      const active = await c.get(this.activeKey(id)).string();
      if (!active) throw new NotFoundError('job', id);
      rec = decodeRecord(active);
    }
    return recordToProto(rec, rec.result ? Buffer.from(rec.result, 'base64') : undefined);
  }

  /**
   * The most recent jobs, newest first: those in memory (running, queued, and the last
   * recentLimit finished here), then, when they are fewer than the limit, the finished jobs
   * recorded in etcd, so that jobs that ended under an earlier leader (or left this one's
   * memory) are listed too, as GetJob finds them.
   */
  async list(req: ListJobsRequest__Output): Promise<{ jobs: Job[]; nextPageToken: string }> {
    const limit = req.limit > 0 ? Math.min(req.limit, 10_000) : 50;
    const state = String(req.state);
    // A page goes on after the last job of the page before (newest first: submitted before it).
    const cursor = req.pageToken ? decodePageToken(req.pageToken, req.pipeline, state) : undefined;
    const onPage = (t: number, id: string) => !cursor || listOrder(cursor.t, cursor.id, t, id) < 0;
    const wanted = (pipeline: string, st: string) => (!req.pipeline || pipeline === req.pipeline) && (state === 'JOB_STATE_UNSPECIFIED' || st === state);
    const page = (jobs: Job[]) => {
      const last = jobs.length >= limit ? jobs[limit - 1] : undefined;
      return { jobs: jobs.slice(0, limit), nextPageToken: last ? encodePageToken(Number(last.submittedAtMs), String(last.id), req.pipeline, state) : '' };
    };
    const out: Job[] = [];
    const all = [...this.jobs.values()].sort((a, b) => listOrder(a.rec.submittedAtMs, a.rec.id, b.rec.submittedAtMs, b.rec.id));
    for (const j of all) {
      if (!wanted(j.rec.pipeline, String(j.rec.state)) || !onPage(j.rec.submittedAtMs, j.rec.id)) continue;
      out.push({ ...this.toProto(j), result: Buffer.alloc(0), steps: [] });
      // A page of jobs all submitted under this leader and after every job it let go from memory:
      // none only in etcd is newer than them (those ended under an earlier leader were submitted
      // before it; a job let go was submitted before the page's last). Otherwise the page goes on
      // to the end records, which may hold newer ones: a quick job let go while a longer one
      // submitted before it stayed.
      if (out.length >= limit && j.rec.submittedAtMs >= this.loadedAtMs && j.rec.submittedAtMs > this.evictedNewestMs) return page(out);
      if (out.length >= limit) break;
    }
    // End records hold finished jobs only: the leader holds every queued and running one.
    if (state !== 'JOB_STATE_UNSPECIFIED' && !TERMINAL.has(state as JobState)) return page(out);
    // Jobs only in etcd are older than those this leader admitted: the rest of the page, or a
    // whole page to merge with when the page holds jobs it resumed.
    // The whole page again from etcd when the page holds a job this leader resumed, or one no
    // newer than a job let go from memory: etcd may hold jobs newer than it.
    const merge = out.some((j) => Number(j.submittedAtMs) < this.loadedAtMs || Number(j.submittedAtMs) <= this.evictedNewestMs);
    const recorded = await this.recordedEnds((id) => !this.jobs.has(id), (r) => wanted(r.pipeline, String(r.state)) && onPage(r.submittedAtMs, r.id), merge ? limit : limit - out.length);
    out.push(...recorded.map((r) => ({ ...recordToProto({ ...r, steps: [] }), result: Buffer.alloc(0) })));
    return page(out.sort((a, b) => listOrder(Number(a.submittedAtMs), String(a.id), Number(b.submittedAtMs), String(b.id))));
  }

  /**
   * Up to `want` finished jobs from their end records in etcd (shared ones under ended/, own ones
   * under done/) that `fresh` keeps (not in memory) and `wanted` matches (its filters and page),
   * newest first. Found
   * through the record budget's windows, newest first: each window's lease names the keys written
   * under it (etcd keeps that list in memory), so nothing reads or sorts the whole records prefix
   * (etcd would read every value of a sorted or filtered range: up to --job-record-budget-mb).
   * A window holds the jobs that ended while it was current, so a job that ran long can sit in
   * a newer window than jobs submitted after it: the scan goes on past `want` found until the
   * next window can hold nothing newer than the want-th (see WINDOW_SPAN_BOUND_MS).
   * At most LIST_SCAN_BYTES of records are read per call: past it, the newest first holds to
   * within a window (10 s of records).
   */
  private async recordedEnds(fresh: (id: string) => boolean, wanted: (r: JobRecord) => boolean, want: number): Promise<JobRecord[]> {
    const c = this.store.client;
    const prefixes = [`${this.keys.jobs}ended/`, `${this.keys.jobs}done/`];
    const found = new Map<string, JobRecord>();
    let bytes = 0;
    const take = (e: { id?: string }) => {
      const id = String(e.id ?? '');
      if (!id || found.has(id) || !fresh(id)) return;
      const rec = decodeRecord(e);
      if (wanted(rec)) found.set(id, rec);
    };
    // The submission time of the want-th newest found so far (-Infinity while fewer are found).
    let memo = { size: -1, t: -Infinity };
    const wantth = () => {
      if (found.size < want) return -Infinity;
      if (memo.size !== found.size) memo = { size: found.size, t: [...found.values()].map((r) => r.submittedAtMs).sort((x, y) => y - x)[want - 1] };
      return memo.t;
    };
    for (const w of [...this.windows].sort((a, b) => b.grantedAtMs - a.grantedAtMs)) {
      if (bytes >= LIST_SCAN_BYTES || wantth() >= w.grantedAtMs + WINDOW_SPAN_BOUND_MS) break;
      let keys: string[];
      try {
        const res = await c.leaseClient.leaseTimeToLive({ ID: w.id, keys: true });
        keys = (res.keys ?? []).map((k) => k.toString()).filter((k) => prefixes.some((p) => k.startsWith(p)));
      } catch {
        continue; // expired or revoked meanwhile: its records are gone
      }
      // The whole window (the jobs in it are not in order), newest batches first (a batch's name
      // counts up within a leader), in case the byte bound cuts it short.
      const seq = (k: string) => {
        const m = /-([0-9a-z]+)\/([0-9a-z]+)$/.exec(k);
        return m ? parseInt(m[1], 36) * 1e4 + parseInt(m[2], 36) : -1;
      };
      keys.sort((a, b) => seq(b) - seq(a));
      for (let i = 0; i < keys.length && bytes < LIST_SCAN_BYTES; i += LIST_SCAN_CHUNK) {
        const values = await Promise.all(keys.slice(i, i + LIST_SCAN_CHUNK).map((k) => c.get(k).string()));
        for (const v of values) {
          if (v === null) continue;
          bytes += v.length;
          const parsed = JSON.parse(v) as unknown;
          for (const e of Array.isArray(parsed) ? parsed : [parsed]) take(e as { id?: string });
        }
      }
    }
    return [...found.values()].sort((a, b) => listOrder(a.submittedAtMs, a.id, b.submittedAtMs, b.id)).slice(0, want);
  }

  /** by: who cancelled it (a token's name or a certificate's CN, when callers are identified), named in its reason. */
  async cancel(id: string, by = ''): Promise<Job> {
    const job = this.jobs.get(id);
    if (!job) {
      const j = await this.get(id);
      return j; // ended long ago: cancelling is a no-op
    }
    if (!TERMINAL.has(job.rec.state)) {
      this.queue = this.queue.filter((q) => q !== job);
      await this.finish(job, 'JOB_STATE_CANCELLED', by ? `cancelled through Admin by ${by}` : 'cancelled through Admin');
    }
    return this.toProto(job);
  }

  /** The job now, then every change until it ends. */
  watch(id: string, send: (j: Job) => void): { done: Promise<void>; cancel: () => void } {
    const job = this.jobs.get(id);
    if (!job) {
      return { done: this.get(id).then(send), cancel: () => {} };
    }
    send(this.toProto(job));
    if (TERMINAL.has(job.rec.state)) return { done: Promise.resolve(), cancel: () => {} };
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    const w = (j: Job) => {
      send(j);
      if (TERMINAL.has(j.state as JobState)) {
        job.watchers?.delete(w);
        resolve();
      }
    };
    (job.watchers ??= new Set()).add(w);
    return { done, cancel: () => { job.watchers?.delete(w); resolve(); } };
  }

  stats(): { inFlight: number; queued: number } {
    return { inFlight: this.inFlight, queued: this.queue.length };
  }

  private toProto(j: LiveJob): Job {
    if (j.ended === undefined) return recordToProto(j.rec, j.result);
    const full = decodeRecord(j.ended);
    return recordToProto(full, j.result ?? (full.result ? Buffer.from(full.result, 'base64') : undefined));
  }
}

function recordToProto(r: JobRecord, result?: Buffer): Job {
  return {
    id: r.id, pipeline: r.pipeline, state: r.state, reason: r.reason, failedStage: r.failedStage, result: result ?? Buffer.alloc(0),
    resultHeaders: r.resultHeaders ?? {}, submittedAtMs: r.submittedAtMs, finishedAtMs: r.finishedAtMs, deadlineMs: r.deadlineMs,
    idempotencyKey: r.idempotencyKey, path: r.path, steps: r.steps, plans: r.plans, payloadBytes: r.payloadBytes, flow: r.flow,
    durationMs: r.durationMs || (TERMINAL.has(r.state) ? 0 : Date.now() - r.submittedAtMs), submittedBy: r.submittedBy ?? '',
  };
}

/** ListJobs' order: newest first, then by id (negative: job a comes before job b). */
function listOrder(aT: number, aId: string, bT: number, bId: string): number {
  return bT - aT || bId.localeCompare(aId);
}

/**
 * A ListJobs page token: where the page before ended (its last job's submission time and id),
 * and the filters it was made with, so that one made for another filter is refused rather than
 * quietly giving a page of something else. Opaque to clients (base64url of JSON).
 */
function encodePageToken(t: number, id: string, pipeline: string, state: string): string {
  return Buffer.from(JSON.stringify({ t, id, p: pipeline, s: state })).toString('base64url');
}

function decodePageToken(token: string, pipeline: string, state: string): { t: number; id: string } {
  let v: { t?: unknown; id?: unknown; p?: unknown; s?: unknown };
  try {
    v = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as typeof v;
  } catch {
    v = {};
  }
  if (typeof v !== 'object' || v === null || typeof v.t !== 'number' || typeof v.id !== 'string' || typeof v.p !== 'string' || typeof v.s !== 'string') {
    throw InvalidArgumentError.field('pageToken', 'is not a token ListJobs gave (pass next_page_token as it came)');
  }
  if (v.p !== pipeline || v.s !== state) {
    throw InvalidArgumentError.field('pageToken', `was given for pipeline ${JSON.stringify(v.p)} and state ${v.s}, not ${JSON.stringify(pipeline)} and ${state}: a page goes on with the filters of the first`);
  }
  return { t: v.t, id: v.id };
}

function checkHeaders(headers: Record<string, string> | undefined, field: string): void {
  for (const h of Object.keys(headers ?? {})) if (!/^[A-Za-z0-9_.-]{1,64}$/.test(h)) throw InvalidArgumentError.field(`${field}.${h}`, 'header names are 1-64 characters of letters, digits, "_", "." or "-"');
}
