// A promise-based Admin client for the CLI, tests and benchmarks. Given several coordinator
// addresses it tries them in turn while a call fails with UNAVAILABLE (that coordinator is
// down); any coordinator can answer, since followers forward writes to the leader.
import * as grpc from '@grpc/grpc-js';
import { MuxClient, statusError } from './mux';
import { CHANNEL_OPTIONS, clientCredentials, deadline, dial, dialAny, DIAL_TIMEOUT_MS } from './grpc';
import { tesseraProto } from './proto';
import { DirectJobs } from './direct-jobs';
import { LEADER_ADDRESS_KEY, NO_FORWARD_KEY, NO_LEADER_TEXT, NOT_LEADER_TEXT } from './errors';
import type { AdminClient as RawAdminClient } from './generated/tessera/v1/Admin';
import type { ClusterStatus__Output } from './generated/tessera/v1/ClusterStatus';
import type { DrainNodeRequest } from './generated/tessera/v1/DrainNodeRequest';
import type { CordonNodeRequest } from './generated/tessera/v1/CordonNodeRequest';
import type { Event__Output } from './generated/tessera/v1/Event';
import type { ListNodesRequest } from './generated/tessera/v1/ListNodesRequest';
import type { Node__Output } from './generated/tessera/v1/Node';
import type { WatchEventsRequest } from './generated/tessera/v1/WatchEventsRequest';

export interface AdminClientOptions {
  timeoutMs?: number;
  metadata?: Record<string, string>;
  /** mTLS material (an admin certificate); plaintext without it. */
  tls?: import('./tls').TlsMaterial;
  /** With another address to try: how long to wait for a coordinator's transport before moving on (DIAL_TIMEOUT_MS). */
  dialTimeoutMs?: number;
}

/**
 * How long jobStream() keeps sending a keyed submission again after its stream broke (within its
 * deadline): through a leader's election, which takes the leader lease's TTL.
 */
export const KEYED_RESEND_MS = 30_000;

/**
 * A keyed submission sent again after its stream broke: its timeout_ms counts from its first
 * send, not from the resend (a leader that never got it admits it with what is left; one that did
 * answers with its job by the key). A timeout all spent becomes 1 ms: the job's deadline passed.
 * Without timeout_ms or deadline_ms it carries resent_after_ms, the time since the first send,
 * which the leader takes off the pipeline's default timeout (the client does not know it).
 */
export function resentRequest<R extends { timeoutMs?: number | string | { toString(): string } | null; deadlineMs?: number | string | { toString(): string } | null; resentAfterMs?: number | string | { toString(): string } | null }>(request: R, firstSentMs: number, nowMs: number): R {
  const timeout = Number(request.timeoutMs ?? 0);
  if (timeout > 0) return { ...request, timeoutMs: Math.max(1, timeout - (nowMs - firstSentMs)) };
  // An absolute deadline stands as it is; else the leader takes the time since the first send off the pipeline's default.
  if (Number(request.deadlineMs ?? 0)) return request;
  return { ...request, resentAfterMs: Math.max(0, nowMs - firstSentMs) };
}

/** Every item of a list that comes in pages: each page asked with the token the one before gave, until none. */
async function allPages<T>(page: (pageToken: string) => Promise<{ items: T[]; next: string }>): Promise<T[]> {
  const out: T[] = [];
  for (let token = ''; ;) {
    const p = await page(token);
    out.push(...p.items);
    if (!(token = p.next)) return out;
  }
}

/** See AdminClient.leaderStream. */
export interface LeaderStream {
  open: () => grpc.ClientDuplexStream<unknown, unknown>;
  target: () => string;
  redirects: () => number;
  retryable: (err: unknown, redirectsBefore: number, staleTarget: string, mux: { reset: (why: string) => void }) => Promise<boolean>;
}

export class AdminClient {
  private clients: RawAdminClient[];
  /** Clients made for addresses learnt from the cluster (a leader outside the list given). */
  private extra: RawAdminClient[] = [];
  private preferred = 0;

  constructor(readonly addresses: string[], private readonly opts: AdminClientOptions = {}) {
    if (!addresses.length) throw new Error('no coordinator address given');
    const Admin = tesseraProto().Admin;
    this.clients = addresses.map((a) => new Admin(a, clientCredentials(opts.tls), CHANNEL_OPTIONS));
  }

  close(): void {
    for (const c of [...this.clients, ...this.extra]) c.close();
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(this.opts.metadata ?? {})) md.set(k, v);
    return md;
  }

  private async unary<Req, Res>(method: string, req: Req, timeoutMs = this.opts.timeoutMs ?? 10_000): Promise<Res> {
    let lastErr: unknown;
    // Fixed for this call: calls running beside it move `preferred`, and reading it again on
    // each turn could try one address twice and another never.
    const first = this.preferred;
    let order = this.clients.map((_, i) => (first + i) % this.clients.length);
    // Not connected to the preferred one (a fresh client: each CLI run): connect to all at once,
    // and start with the preferred one if it is ready soon, else with one that is.
    if (order.length > 1 && this.clients[first].getChannel().getConnectivityState(false) !== grpc.connectivityState.READY) {
      const picked = await dialAny(this.clients as unknown as grpc.Client[], order, Math.min(this.opts.dialTimeoutMs ?? DIAL_TIMEOUT_MS, timeoutMs));
      if (picked >= 0) order = [picked, ...order.filter((x) => x !== picked)];
    }
    for (let i = 0; i < order.length; i++) {
      const idx = order[i];
      const c = this.clients[idx] as unknown as Record<string, (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Res) => void) => void>;
      if (i < this.clients.length - 1) {
        // Another address is left: a coordinator that does not even connect (hung) is skipped
        // after the dial timeout instead of taking the whole call's deadline.
        const waitMs = Math.min(this.opts.dialTimeoutMs ?? DIAL_TIMEOUT_MS, timeoutMs);
        if ((await dial(this.clients[idx] as unknown as grpc.Client, waitMs)) === 'timeout') {
          lastErr = statusError(grpc.status.UNAVAILABLE, `coordinator ${this.addresses[idx]} did not connect within ${waitMs} ms (hung, or its network drops packets)`);
          continue;
        }
      }
      try {
        const res = await new Promise<Res>((resolve, reject) =>
          c[method].call(c, req, this.metadata(), { deadline: deadline(timeoutMs) }, (e, r) => (e ? reject(e) : resolve(r))),
        );
        this.preferred = idx;
        return res;
      } catch (err) {
        lastErr = err;
        const se = err as grpc.ServiceError;
        // Only move on when this coordinator could not be reached; a NotLeaderError or any
        // other answer is the cluster's answer.
        if (se.code !== grpc.status.UNAVAILABLE || se.metadata?.get('tessera-error-kind').length) throw err;
      }
    }
    throw lastErr;
  }

  getClusterStatus(): Promise<ClusterStatus__Output> { return this.unary('getClusterStatus', {}); }
  /**
   * Points the stream methods (which do not move on to the next address by themselves) at the
   * first coordinator in the list that answers: call it before opening a stream when the first
   * address may be down.
   */
  async reachable(): Promise<void> { await this.unary('getClusterStatus', {}); }
  listNodes(req: ListNodesRequest = {}): Promise<{ nodes: Node__Output[]; stale: string; nextPageToken: string }> { return this.unary('listNodes', req); }
  getNode(nodeId: string): Promise<Node__Output> { return this.unary('getNode', { nodeId }); }
  drainNode(req: DrainNodeRequest): Promise<Node__Output> { return this.unary('drainNode', req); }
  cordonNode(req: CordonNodeRequest): Promise<Node__Output> { return this.unary('cordonNode', req); }
  removeNode(nodeId: string, reason = ''): Promise<Node__Output> { return this.unary('removeNode', { nodeId, reason }); }

  applyApp(spec: unknown, dryRun = false): Promise<import('./generated/tessera/v1/ApplyAppResponse').ApplyAppResponse__Output> { return this.unary('applyApp', { spec, dryRun }); }
  getApp(name: string): Promise<import('./generated/tessera/v1/App').App__Output> { return this.unary('getApp', { name }); }
  /** One page of apps (every one when limit is 0); see allApps for them all, page by page. */
  listApps(page: { limit?: number; pageToken?: string } = {}): Promise<{ apps: import('./generated/tessera/v1/App').App__Output[]; nextPageToken: string }> { return this.unary('listApps', page); }
  /** Every app, asked chunk at a time (as kubectl --chunk-size). */
  allApps(chunk = 500): Promise<import('./generated/tessera/v1/App').App__Output[]> {
    return allPages((pageToken) => this.listApps({ limit: chunk, pageToken }).then((p) => ({ items: p.apps, next: p.nextPageToken })));
  }
  deleteApp(name: string): Promise<import('./generated/tessera/v1/App').App__Output> { return this.unary('deleteApp', { name }); }
  appHistory(name: string): Promise<{ versions: import('./generated/tessera/v1/AppVersion').AppVersion__Output[] }> { return this.unary('appHistory', { name }); }
  rollbackApp(name: string, version = 0): Promise<import('./generated/tessera/v1/App').App__Output> { return this.unary('rollbackApp', { name, version }); }
  /** What rollbackApp would do (App.plan), nothing stored. */
  planRollback(name: string, version = 0): Promise<import('./generated/tessera/v1/App').App__Output> { return this.unary('planRollback', { name, version }); }
  /** instances undefined sends no count (refused: a forgotten count must not stop every instance). */
  scaleApp(name: string, component: string, instances: number | undefined): Promise<import('./generated/tessera/v1/ApplyAppResponse').ApplyAppResponse__Output> { return this.unary('scaleApp', { name, component, instances }); }
  restartApp(name: string, component = ''): Promise<import('./generated/tessera/v1/App').App__Output> { return this.unary('restartApp', { name, component }); }
  /** version 0: the current one (else refused unless it is the current one). */
  promoteApp(name: string, version = 0): Promise<import('./generated/tessera/v1/App').App__Output> { return this.unary('promoteApp', { name, version }); }
  /** One page of instances (every one when limit is 0); see allInstances for them all, page by page. */
  listInstances(app = '', nodeId = '', page: { limit?: number; pageToken?: string } = {}): Promise<{ instances: import('./generated/tessera/v1/Instance').Instance__Output[]; nextPageToken: string }> {
    return this.unary('listInstances', { app, nodeId, ...page });
  }

  /** Every instance (of an app, on a node), asked chunk at a time (as kubectl --chunk-size): no answer grows with the fleet. */
  allInstances(app = '', nodeId = '', chunk = 500): Promise<import('./generated/tessera/v1/Instance').Instance__Output[]> {
    return allPages((pageToken) => this.listInstances(app, nodeId, { limit: chunk, pageToken }).then((p) => ({ items: p.instances, next: p.nextPageToken })));
  }
  replaceInstance(instanceId: string, reason = ''): Promise<import('./generated/tessera/v1/Instance').Instance__Output> { return this.unary('replaceInstance', { instanceId, reason }); }

  setPolicy(policy: unknown): Promise<import('./generated/tessera/v1/ScalingPolicy').ScalingPolicy__Output> { return this.unary('setPolicy', { policy }); }
  getPolicy(app: string, component: string): Promise<import('./generated/tessera/v1/ScalingPolicy').ScalingPolicy__Output> { return this.unary('getPolicy', { app, component }); }
  deletePolicy(app: string, component: string): Promise<import('./generated/tessera/v1/ScalingPolicy').ScalingPolicy__Output> { return this.unary('deletePolicy', { app, component }); }
  listPolicies(app = ''): Promise<{ policies: import('./generated/tessera/v1/ScalingPolicy').ScalingPolicy__Output[] }> { return this.unary('listPolicies', { app }); }
  scalingHistory(app: string, component = '', limit = 50): Promise<{ decisions: import('./generated/tessera/v1/ScalingDecision').ScalingDecision__Output[] }> { return this.unary('scalingHistory', { app, component, limit }); }
  evaluatePolicy(app: string, component: string): Promise<import('./generated/tessera/v1/ScalingDecision').ScalingDecision__Output> { return this.unary('evaluatePolicy', { app, component }); }

  registerComponent(req: import('./generated/tessera/v1/RegisterComponentRequest').RegisterComponentRequest): Promise<import('./generated/tessera/v1/ComponentInstance').ComponentInstance__Output> { return this.unary('registerComponent', req); }
  deregisterComponent(instanceId: string): Promise<import('./generated/tessera/v1/ComponentInstance').ComponentInstance__Output> { return this.unary('deregisterComponent', { instanceId }); }
  /** One page of registered component instances (every one when limit is 0); see allComponents. */
  listComponents(kind = '', page: { limit?: number; pageToken?: string } = {}): Promise<{ instances: import('./generated/tessera/v1/ComponentInstance').ComponentInstance__Output[]; nextPageToken: string }> {
    return this.unary('listComponents', { kind, ...page });
  }

  /** Every registered component instance (of a kind), asked chunk at a time. */
  allComponents(kind = '', chunk = 500): Promise<import('./generated/tessera/v1/ComponentInstance').ComponentInstance__Output[]> {
    return allPages((pageToken) => this.listComponents(kind, { limit: chunk, pageToken }).then((p) => ({ items: p.instances, next: p.nextPageToken })));
  }
  setQuota(quota: unknown): Promise<import('./generated/tessera/v1/Quota').Quota__Output> { return this.unary('setQuota', { quota }); }
  deleteQuota(kind: string): Promise<import('./generated/tessera/v1/Quota').Quota__Output> { return this.unary('deleteQuota', { kind }); }
  listQuotas(kind = ''): Promise<{ quotas: import('./generated/tessera/v1/Quota').Quota__Output[] }> { return this.unary('listQuotas', { kind }); }
  setRegistryCredential(credential: import('./generated/tessera/v1/RegistryCredential').RegistryCredential): Promise<import('./generated/tessera/v1/RegistryCredential').RegistryCredential__Output> { return this.unary('setRegistryCredential', { credential }); }
  deleteRegistryCredential(name: string): Promise<import('./generated/tessera/v1/RegistryCredential').RegistryCredential__Output> { return this.unary('deleteRegistryCredential', { name }); }
  listRegistryCredentials(name = ''): Promise<{ credentials: import('./generated/tessera/v1/RegistryCredential').RegistryCredential__Output[] }> { return this.unary('listRegistryCredentials', { name }); }
  setSecret(secret: import('./generated/tessera/v1/Secret').Secret): Promise<import('./generated/tessera/v1/Secret').Secret__Output> { return this.unary('setSecret', { secret }); }
  deleteSecret(name: string): Promise<import('./generated/tessera/v1/Secret').Secret__Output> { return this.unary('deleteSecret', { name }); }
  listSecrets(name = ''): Promise<{ secrets: import('./generated/tessera/v1/Secret').Secret__Output[] }> { return this.unary('listSecrets', { name }); }

  applyPipeline(pipeline: unknown, dryRun = false): Promise<import('./generated/tessera/v1/Pipeline').Pipeline__Output> { return this.unary('applyPipeline', { pipeline, dryRun }); }
  getPipeline(name: string): Promise<import('./generated/tessera/v1/Pipeline').Pipeline__Output> { return this.unary('getPipeline', { name }); }
  /** One page of pipelines (every one when limit is 0); see allPipelines for them all, page by page. */
  listPipelines(page: { limit?: number; pageToken?: string } = {}): Promise<{ pipelines: import('./generated/tessera/v1/Pipeline').Pipeline__Output[]; nextPageToken: string }> { return this.unary('listPipelines', page); }
  /** Every pipeline, asked chunk at a time. */
  allPipelines(chunk = 500): Promise<import('./generated/tessera/v1/Pipeline').Pipeline__Output[]> {
    return allPages((pageToken) => this.listPipelines({ limit: chunk, pageToken }).then((p) => ({ items: p.pipelines, next: p.nextPageToken })));
  }
  deletePipeline(name: string): Promise<import('./generated/tessera/v1/Pipeline').Pipeline__Output> { return this.unary('deletePipeline', { name }); }

  /** A waiting submission gets the job's own time (plus a margin) instead of the call timeout. */
  submitJob(req: import('./generated/tessera/v1/SubmitJobRequest').SubmitJobRequest): Promise<import('./generated/tessera/v1/Job').Job__Output> {
    const until = Number(req.deadlineMs) || Date.now() + (Number(req.timeoutMs) || 30_000);
    return this.unary('submitJob', req, req.wait ? Math.max(this.opts.timeoutMs ?? 10_000, until - Date.now() + 10_000) : undefined);
  }
  getJob(id: string): Promise<import('./generated/tessera/v1/Job').Job__Output> { return this.unary('getJob', { id }); }
  listJobs(req: import('./generated/tessera/v1/ListJobsRequest').ListJobsRequest = {}): Promise<{ jobs: import('./generated/tessera/v1/Job').Job__Output[]; nextPageToken: string }> { return this.unary('listJobs', req); }
  cancelJob(id: string): Promise<import('./generated/tessera/v1/Job').Job__Output> { return this.unary('cancelJob', { id }); }
  watchJob(id: string): grpc.ClientReadableStream<import('./generated/tessera/v1/Job').Job__Output> {
    return this.clients[this.preferred].watchJob({ id }, this.metadata());
  }

  /**
   * Submissions over one SubmitJobs stream, for clients that submit many jobs. Resolves with the
   * job (the result, when wait is set). This client's streams go to the leader: it asks a
   * follower not to forward (NO_FORWARD_KEY), the follower refuses the stream naming the leader,
   * and the stream moves there and the refused submissions are sent again (a refusal means
   * nothing was accepted). When the stream's coordinator goes away, the submissions in flight
   * fail with UNAVAILABLE (they may have been accepted) and the next one tries the next address;
   * those with an idempotency key are sent again (for up to KEYED_RESEND_MS, within their
   * deadline), their timeout_ms less the time since they were first sent.
   */
  jobStream(): { submit: (req: import('./generated/tessera/v1/SubmitJobRequest').SubmitJobRequest, deadlineMs?: number) => Promise<import('./generated/tessera/v1/Job').Job__Output>; close: () => void } {
    const leader = this.leaderStream('submitJobs');
    const mux = new MuxClient<import('./generated/tessera/v1/JobSubmission').JobSubmission, import('./generated/tessera/v1/JobOutcome').JobOutcome__Output>(
      leader.open as never,
      { req: 'submissions', res: 'outcomes' },
      (r) => (r.errorCode ? Object.assign(statusError(r.errorCode, r.error), { notLeader: !!r.notLeader, leaderAddress: r.leaderAddress ?? '', answered: true }) : undefined),
    );
    type Req = import('./generated/tessera/v1/SubmitJobRequest').SubmitJobRequest;
    const submit = async (request: Req, deadlineMs?: number, tries = 4, resendUntil = 0, firstSentMs = Date.now()): Promise<import('./generated/tessera/v1/Job').Job__Output> => {
      const before = leader.redirects();
      const stale = leader.target();
      try {
        return (await mux.call({ request }, deadlineMs)).job!;
      } catch (err) {
        if (tries > 1 && (await leader.retryable(err, before, stale, mux))) return submit(resentRequest(request, firstSentMs, Date.now()), deadlineMs, tries - 1, resendUntil, firstSentMs);
        // A keyed submission lost with the stream (the leader died, the connection broke): whether
        // the leader took it is not known, and its key makes sending it again safe: a leader that
        // took it (or the next one, which resumes it) answers with that job. An answer the leader
        // gave (no healthy instance, say) is not sent again.
        const e = err as grpc.ServiceError & { answered?: boolean };
        if (request.idempotencyKey && e.code === grpc.status.UNAVAILABLE && !e.answered) {
          const now = Date.now();
          const until = resendUntil || Math.min(deadlineMs ?? Infinity, Number(request.deadlineMs) || Infinity, now + KEYED_RESEND_MS);
          const wait = Math.min(1_000, Math.max(100, (until - now) / 8));
          if (now + wait < until) {
            await new Promise((r) => setTimeout(r, wait));
            return submit(resentRequest(request, firstSentMs, Date.now()), deadlineMs, 4, until, firstSentMs);
          }
        }
        throw err;
      }
    };
    return { submit: (request, deadlineMs) => submit(request, deadlineMs), close: () => mux.close() };
  }

  /**
   * Direct jobs (Admin.DirectJobs): this client runs each job itself, straight to the agent of its
   * first hop along a route the leader leased it, while the leader records it; see
   * common/direct-jobs.ts. The same submit as jobStream's (a submission it cannot run directly
   * goes through SubmitJobs).
   */
  directJobs(): DirectJobs {
    return new DirectJobs(this.leaderStream('directJobs'), this.jobStream(), clientCredentials(this.opts.tls), (id) => this.getJob(id));
  }

  /**
   * A bidi stream that follows the leader: it asks a follower not to forward (NO_FORWARD_KEY); a
   * follower refuses the stream naming the leader and it moves there. retryable() says whether a
   * call that failed may be sent again (nothing was accepted) and moves the stream when a
   * coordinator said it no longer leads.
   */
  private leaderStream(method: 'submitJobs' | 'directJobs'): LeaderStream {
    const Admin = tesseraProto().Admin;
    const byAddress = new Map(this.addresses.map((a, i) => [a, this.clients[i]]));
    let target = this.addresses[this.preferred];
    /** Bumped each time a coordinator refuses the stream and names the leader. */
    let redirects = 0;
    const clientFor = (address: string): RawAdminClient => {
      let c = byAddress.get(address);
      if (!c) {
        c = new Admin(address, clientCredentials(this.opts.tls), CHANNEL_OPTIONS);
        byAddress.set(address, c);
        this.extra.push(c);
      }
      return c;
    };
    const open = () => {
      const opened = target;
      const md = this.metadata();
      md.set(NO_FORWARD_KEY, '1');
      const stream = (clientFor(opened)[method] as (md: grpc.Metadata) => grpc.ClientDuplexStream<unknown, unknown>)(md);
      stream.on('error', (err: grpc.ServiceError) => {
        if (target !== opened) return;
        const leader = err.code === grpc.status.UNAVAILABLE ? err.metadata?.get(LEADER_ADDRESS_KEY)[0] : undefined;
        if (leader && String(leader) !== opened) {
          target = String(leader);
          redirects++;
        } else if (err.code === grpc.status.UNAVAILABLE) {
          target = this.addresses[(this.addresses.indexOf(opened) + 1) % this.addresses.length] ?? opened;
        }
      });
      return stream;
    };
    const retryable = async (err: unknown, before: number, stale: string, mux: { reset: (why: string) => void }): Promise<boolean> => {
      const e = err as grpc.ServiceError & { notLeader?: boolean; leaderAddress?: string };
      if (e.code !== grpc.status.UNAVAILABLE) return false;
      // Refused at the stream's start by a follower that named the leader: moved there.
      if (redirects !== before) return true;
      // Refused on its own by a coordinator that stopped leading (the stream stays open to it):
      // nothing was accepted; leave it for the leader it names, or the next address. (Text
      // match: coordinators from before JobOutcome.not_leader.)
      if (e.notLeader || e.details?.includes(NOT_LEADER_TEXT) || e.details?.includes(NO_LEADER_TEXT)) {
        if (target === stale) {
          target = e.leaderAddress && e.leaderAddress !== stale ? e.leaderAddress : this.addresses[(this.addresses.indexOf(stale) + 1) % this.addresses.length] ?? stale;
          mux.reset(`${stale} no longer leads`);
        }
        if (!e.leaderAddress) await new Promise((r) => setTimeout(r, 200));
        return true;
      }
      return false;
    };
    return { open, target: () => target, redirects: () => redirects, retryable };
  }

  /** Server stream of events from the first coordinator that answers. */
  watchEvents(req: WatchEventsRequest): grpc.ClientReadableStream<Event__Output> {
    return this.clients[this.preferred].watchEvents(req, this.metadata());
  }

  /** etcd's snapshot of its whole database, in chunks (any coordinator serves it). */
  saveSnapshot(): grpc.ClientReadableStream<import('./generated/tessera/v1/SnapshotChunk').SnapshotChunk__Output> {
    return this.clients[this.preferred].saveSnapshot({}, this.metadata());
  }

  /** An instance's container output (any coordinator relays the leader's). */
  instanceLogs(req: import('./generated/tessera/v1/InstanceLogsRequest').InstanceLogsRequest): grpc.ClientReadableStream<import('./generated/tessera/v1/LogChunk').LogChunk__Output> {
    return this.clients[this.preferred].instanceLogs(req, this.metadata());
  }

  /** A command run in an instance's container: its output, then its exit code (operators only; any coordinator relays the leader's). */
  execInstance(req: import('./generated/tessera/v1/ExecInstanceRequest').ExecInstanceRequest): grpc.ClientReadableStream<import('./generated/tessera/v1/ExecChunk').ExecChunk__Output> {
    return this.clients[this.preferred].execInstance(req, this.metadata());
  }

  /** ExecInteractive (kubectl exec -i [-t]): write {start} first, then {stdin}, {resize}, {stdinClosed}; read the output, then the exit code. */
  execInteractive(): grpc.ClientDuplexStream<import('./generated/tessera/v1/ExecInput').ExecInput, import('./generated/tessera/v1/ExecChunk').ExecChunk__Output> {
    return this.clients[this.preferred].execInteractive(this.metadata());
  }
}
