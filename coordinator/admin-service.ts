// Admin: the operator's API (grpcurl, the tessera CLI). Any coordinator answers reads from
// etcd (the leader from its fresher memory); writes run on the leader, and a follower forwards
// them there, so an operator may talk to whichever coordinator they like.
import * as grpc from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';
import { DeadlineExceededError, ERROR_KIND_KEY, FailedPreconditionError, FencedError, InvalidArgumentError, NO_FORWARD_KEY, NotFoundError, NotLeaderError, isServiceError, PermissionDeniedError, TesseraError, toServiceError, UnavailableError } from '../common/errors';
import type { Authorizer } from './auth';
import { LiveTls, peerIdentity, TlsMaterial } from '../common/tls';
import type { Metrics } from '../common/metrics';
import { clientCredentials, CHANNEL_OPTIONS, deadline, rejectMalformed, relayStream, serverStream, unary } from '../common/grpc';
import type { Logger } from '../common/logger';
import { storedFormat } from './storage-format';
import { tesseraPackageDefinition, tesseraProto } from '../common/proto';
import { createEtcdClient, etcdAlarms, withTimeout } from '../common/etcd';
import { resentRequest } from '../common/admin-client';
import type { AdminClient, AdminHandlers } from '../common/generated/tessera/v1/Admin';
import type { ClusterStatus } from '../common/generated/tessera/v1/ClusterStatus';
import type { JobView } from '../common/generated/tessera/v1/JobView';
import type { EtcdMember } from '../common/generated/tessera/v1/EtcdMember';
import type { Event } from '../common/generated/tessera/v1/Event';
import type { WatchEventsRequest__Output } from '../common/generated/tessera/v1/WatchEventsRequest';
import type { Keys } from './keys';
import type { Leadership } from './leadership';
import { DEFAULT_ZONE_LABEL, disruptionText, fleetDisruption, NodeRecord, NodeRegistry, readNode, readNodes, recordToProto, zoneOf } from './node-registry';
import { NODE_ID_RE } from './agent-gateway';
import type { Deployments } from './deployments';
import type { InstanceRecord } from './apps/records';
import type { Scaler } from './scaling/scaler';
import { attributed, type EventDraft, type StoredEvent } from './store';
import type { LeaderWork } from './coordinator';
import { pipelineToProto } from './jobs/pipelines';
import type { Job } from '../common/generated/tessera/v1/Job';
import type { DirectCall__Output } from '../common/generated/tessera/v1/DirectCall';
import type { DirectAnswer } from '../common/generated/tessera/v1/DirectAnswer';
import { DirectLease, LEASE_MAX_IN_FLIGHT, LEASE_TTL_MS } from './jobs/scheduler';
import type { Node } from '../common/generated/tessera/v1/Node';
import type { AgentLogsClient } from '../common/generated/tessera/v1/AgentLogs';
import type { AgentExecClient } from '../common/generated/tessera/v1/AgentExec';
import type { ExecInstanceRequest__Output } from '../common/generated/tessera/v1/ExecInstanceRequest';
import type { ExecChunk, ExecChunk__Output } from '../common/generated/tessera/v1/ExecChunk';
import type { ExecInput, ExecInput__Output } from '../common/generated/tessera/v1/ExecInput';
import { validateExec } from '../common/exec';
import type { InstanceLogsRequest__Output } from '../common/generated/tessera/v1/InstanceLogsRequest';
import type { LogChunk } from '../common/generated/tessera/v1/LogChunk';
import type { SnapshotChunk } from '../common/generated/tessera/v1/SnapshotChunk';
import type { JobRequest__Output } from '../common/generated/tessera/v1/JobRequest';
import type { JobSubmission__Output } from '../common/generated/tessera/v1/JobSubmission';
import type { JobOutcome } from '../common/generated/tessera/v1/JobOutcome';
import { MuxClient, serveMux } from '../common/mux';
import type { SubmitJobRequest__Output } from '../common/generated/tessera/v1/SubmitJobRequest';
import { failpoint } from '../common/failpoints';
import { issueTicket, RelayKeyRing } from '../common/relay-ticket';

const FORWARDED_KEY = 'tessera-forwarded-by';
/** A forwarded node read's answers that stand (others, a leader out of reach or still loading: the follower's records). */
const LEADER_ANSWERS = new Set([grpc.status.NOT_FOUND, grpc.status.INVALID_ARGUMENT, grpc.status.PERMISSION_DENIED, grpc.status.UNAUTHENTICATED]);
/**
 * Set by the leader on a call it passes to the follower an instance's agent is attached through
 * (a partition: the agent reaches that follower, not the leader): "<node id> <agent endpoint>",
 * the agent the follower asks itself. Taken only from the leader (and under mTLS from a
 * coordinator's certificate).
 */
const VIA_AGENT_KEY = 'tessera-via-agent';
/** How often a stream relayed from an agent (logs, exec) checks that the agent's node is not DOWN. */
const NODE_WATCH_MS = 500;

/** Checks twice a second that an instance's node is not DOWN (or gone); calls down once, with why, when it is. */
function watchNode(reg: NodeRegistry, inst: InstanceRecord, down: (why: string) => void): NodeJS.Timeout {
  const t = setInterval(() => {
    const state = reg.stateOf(inst.nodeId);
    if (state && state !== 'DOWN') return;
    clearInterval(t);
    down(`node ${inst.nodeId} went ${state ? 'DOWN (its agent stopped reporting)' : 'out of the node list'} during the stream from instance ${inst.id}: its agent cannot be asked now`);
  }, NODE_WATCH_MS);
  return t;
}

/** The instance.exec event: who ran what where, written before the agent runs it. */
function execEvent(inst: InstanceRecord, req: ExecInstanceRequest__Output, by: string, interactive: boolean): EventDraft {
  const shown = req.command.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
  return attributed({
    kind: 'instance.exec', subject: inst.id,
    message: `${interactive ? `interactive command${req.tty ? ' (terminal)' : ''}` : 'command'} run in instance ${inst.id} on node ${inst.nodeId}${by ? ` by ${by}` : ''}: ${shown.length > 200 ? `${shown.slice(0, 200)}...` : shown}`,
    fields: {
      app: inst.app, component: inst.component, node: inst.nodeId, command: JSON.stringify(req.command).slice(0, 1000), timeoutMs: String(req.timeoutMs),
      ...(interactive ? { interactive: 'true', tty: String(!!req.tty) } : { stdinBytes: String(req.stdin.length) }),
    },
  }, by);
}

/** An agent's error for an exec call, said plainly: one without the call, or the call's own deadline. */
function execAgentError(err: grpc.ServiceError, source: string, req: ExecInstanceRequest__Output, method: string): Error | undefined {
  if (err.code === grpc.status.UNIMPLEMENTED) return new FailedPreconditionError(`${err.details}: the agent predates ${method}; upgrade it`);
  // The call's own deadline (the agent's timeout comes with its error kind).
  if (err.code === grpc.status.DEADLINE_EXCEEDED && !err.metadata?.get(ERROR_KIND_KEY).length) {
    return new DeadlineExceededError(`${source} did not answer within the command's timeout (${req.timeoutMs} ms) and ${EXEC_AGENT_MARGIN_MS / 1000} s more: the command may still run there`);
  }
  return undefined;
}
/**
 * Who made a write (a token's name, an admin certificate's CN), for the `by` field of its events:
 * set by the guard on the coordinator the call reached (what a client sends under this key is
 * dropped), and taken from a forwarding coordinator only when its certificate says it is one
 * (with tokens the leader checks the token again and names it itself).
 */
const CALLER_KEY = 'tessera-caller';

/** How long a forwarded SubmitJob may take: a waiting one as long as the job (plus a margin). */
function forwardBudgetMs(req: { wait?: boolean; deadlineMs?: unknown; timeoutMs?: unknown }): number {
  return req.wait ? Math.max(5_000, (Number(req.deadlineMs) || Date.now() + (Number(req.timeoutMs) || 30_000)) - Date.now() + 5_000) : 5_000;
}
const NODE_STATES = new Set(['NODE_STATE_UNSPECIFIED', 'NODE_STATE_READY', 'NODE_STATE_DOWN', 'NODE_STATE_DRAINING']);
const JOB_STATES = new Set<unknown>(['JOB_STATE_UNSPECIFIED', 'JOB_STATE_QUEUED', 'JOB_STATE_RUNNING', 'JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED']);

/** How long a request waits for a leader elected a moment ago to load the cluster state. */
const LOAD_WAIT_MS = 5_000;
/** How long past a command's timeout the leader waits for the agent running it. */
const EXEC_AGENT_MARGIN_MS = 5_000;
const LOADING_TEXT = `this coordinator was elected leader and is still loading the cluster state after ${LOAD_WAIT_MS / 1000} s (nodes, apps, components, pipelines, jobs); retry shortly`;

export class AdminService {
  private leaderClients = new Map<string, AdminClient>();
  private agentLogs = new Map<string, AgentLogsClient>();
  private agentExec = new Map<string, AgentExecClient>();
  private memberClients = new Map<string, Etcd3>();

  constructor(
    private readonly client: Etcd3,
    private readonly keys: Keys,
    private readonly leadership: Leadership,
    private readonly registry: () => NodeRegistry | undefined,
    private readonly deployments: () => Deployments | undefined,
    private readonly scaler: () => Scaler | undefined,
    private readonly opts: {
      coordinatorId: string; disruptionPercent?: number; zoneLabel?: string; etcdEndpoints: string[]; auth?: Authorizer; metrics?: Metrics; tls?: LiveTls; etcdTls?: LiveTls;
      leaderWork?: () => LeaderWork | undefined;
      /** The leader's work, waiting up to ms while a term that has just begun loads its state. */
      leaderWorkReady?: (ms: number) => Promise<LeaderWork | undefined>;
      /** Sign the relay ticket of each route lease with their current key (common/relay-ticket.ts); the agents have it from the Welcome or a relay key update. */
      relayKeys?: RelayKeyRing;
    },
    private readonly log: Logger,
  ) {}

  /** Every Admin handler passes through here first: a denied call is logged and counted. */
  private guard<H extends Function>(method: string, h: H): H {
    const auth = this.opts.auth;
    const tls = !!this.opts.tls;
    if (!auth?.enabled && !tls) return h;
    const log = this.log;
    const metrics = this.opts.metrics;
    return ((call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => {
      try {
        const forwardedCaller = String(call.metadata.get(CALLER_KEY)[0] ?? '');
        call.metadata.remove(CALLER_KEY);
        let caller = '';
        if (tls) {
          const peer = peerIdentity(call);
          if (peer.role === 'agent') throw new PermissionDeniedError(`agent certificates cannot call Admin (${peer.cn})`);
          if (peer.role !== 'admin' && peer.role !== 'coordinator') throw new PermissionDeniedError(`certificate role ${peer.role} may not call Admin`);
          caller = peer.role === 'admin' ? peer.cn : forwardedCaller;
        }
        if (auth?.enabled) caller = auth.check(call.metadata, method);
        if (caller) call.metadata.set(CALLER_KEY, caller);
      } catch (err) {
        const se = toServiceError(err);
        log.warn({ method, peer: call.getPeer(), code: grpc.status[se.code!], err: se.details }, 'admin call denied');
        metrics?.inc('tessera_admin_denied_total', { code: grpc.status[se.code!] });
        if (callback) callback(se as grpc.ServiceError);
        else (call as grpc.ServerWritableStream<unknown, unknown>).emit('error', se);
        return;
      }
      return callback ? h(call, callback) : h(call);
    }) as unknown as H;
  }

  close(): void {
    for (const c of this.leaderClients.values()) c.close();
    for (const c of [...this.agentLogs.values(), ...this.agentExec.values()]) c.close();
    for (const c of this.memberClients.values()) void c.close();
  }

  handlers(): AdminHandlers {
    const all = this.unguarded();
    const out: Record<string, Function> = {};
    for (const [method, h] of Object.entries(all)) out[method] = this.guard(method, h as Function);
    return out as unknown as AdminHandlers;
  }

  private unguarded(): AdminHandlers {
    const log = this.log;
    return {
      GetClusterStatus: unary(log, 'GetClusterStatus', (_req, call) => this.clusterStatus(call)),
      ListNodes: unary(log, 'ListNodes', async (req, call) => {
        if (!NODE_STATES.has(req.state)) throw InvalidArgumentError.field('state', `unknown node state ${JSON.stringify(req.state)}`);
        const limit = pageLimit(req.limit, 'node');
        const filter = `state ${req.state}`;
        const after = req.pageToken ? decodePageToken(req.pageToken, filter, 'ListNodes', (v): v is string => typeof v === 'string') : undefined;
        const fromLeader = await this.nodeReadOnLeader<typeof req, { nodes: Node[] }>(call, 'listNodes', req);
        if (fromLeader) return fromLeader;
        const reg = this.registry();
        const keep = (r: NodeRecord) => (req.state === 'NODE_STATE_UNSPECIFIED' || `NODE_STATE_${r.state}` === req.state) && (after === undefined || r.id.localeCompare(after) > 0);
        // One more than the page: whether another follows.
        const wanted = reg ? reg.list(keep, limit ? limit + 1 : 0) : (await this.etcdRead(() => readNodes(this.client, this.keys))).filter(keep);
        const page = limit ? wanted.slice(0, limit) : wanted;
        const nextPageToken = page.length < wanted.length ? encodePageToken(page[page.length - 1].id, filter) : '';
        const dep = this.deployments();
        const nodes = page.map(recordToProto);
        if (dep) {
          const allocated = dep.allocatedByNode();
          for (const n of nodes) n.allocated = allocated.get(n.id!) ?? { cpuMillis: 0, memoryMib: 0 };
        }
        if (reg) return { nodes, nextPageToken };
        return { nodes, nextPageToken, stale: `answered by coordinator ${this.opts.coordinatorId} from the node records (${this.recordsWhy(call, 2_000)}): usage and last-seen times as of each record's last refresh (at most --status-refresh-interval-ms old), and a node that went silent since shows as it was` };
      }),
      GetNode: unary(log, 'GetNode', async (req, call) => {
        validateNodeId(req.nodeId);
        const fromLeader = await this.nodeReadOnLeader<typeof req, Node>(call, 'getNode', req);
        if (fromLeader) return fromLeader;
        const reg = this.registry();
        if (reg) {
          const n = recordToProto(reg.get(req.nodeId));
          const dep = this.deployments();
          if (dep) n.allocated = dep.allocatedOn(req.nodeId);
          return n;
        }
        const n = recordToProto(await this.etcdRead(() => readNode(this.client, this.keys, req.nodeId)));
        return { ...n, stale: `answered by coordinator ${this.opts.coordinatorId} from the node record (${this.recordsWhy(call, 500)}): usage and last-seen time as of the record's last refresh (at most --status-refresh-interval-ms old), and a node that went silent since shows as it was` };
      }),
      DrainNode: unary(log, 'DrainNode', (req, call) => this.nodeWrite(call, 'drainNode', req, (reg, by) => reg.drain(req.nodeId, req.undo, req.reason, undefined, by, Number(req.deadlineMs ?? 0)))),
      CordonNode: unary(log, 'CordonNode', (req, call) => this.nodeWrite(call, 'cordonNode', req, (reg, by) => reg.cordon(req.nodeId, req.undo, req.reason, undefined, by))),
      RemoveNode: unary(log, 'RemoveNode', (req, call) => this.nodeWrite(call, 'removeNode', req, (reg, by) => reg.remove(req.nodeId, req.reason, undefined, by))),
      ApplyApp: unary(log, 'ApplyApp', (req, call) => this.onLeader(call, 'applyApp', req, (_r, dep, _s, _w, by) => dep.apply(req.spec ?? undefined, req.dryRun, '', by, true))),
      GetApp: unary(log, 'GetApp', (req, call) => this.onLeader(call, 'getApp', req, async (_r, dep) => dep.getApp(req.name))),
      ListApps: unary(log, 'ListApps', (req, call) => {
        const limit = pageLimit(req.limit, 'app');
        const after = req.pageToken ? decodePageToken(req.pageToken, 'apps', 'ListApps', (v): v is string => typeof v === 'string') : undefined;
        return this.onLeader(call, 'listApps', req, async (_r, dep) => {
          // One more than the page: whether another follows.
          const apps = dep.listApps(after, limit ? limit + 1 : 0);
          const page = limit ? apps.slice(0, limit) : apps;
          return { apps: page, nextPageToken: page.length < apps.length ? encodePageToken(page[page.length - 1].name, 'apps') : '' };
        });
      }),
      DeleteApp: unary(log, 'DeleteApp', (req, call) => this.onLeader(call, 'deleteApp', req, (_r, dep, _s, _w, by) => dep.delete(req.name, by))),
      AppHistory: unary(log, 'AppHistory', (req, call) => this.onLeader(call, 'appHistory', req, async (_r, dep) => ({ versions: dep.history(req.name) }))),
      RollbackApp: unary(log, 'RollbackApp', (req, call) => this.onLeader(call, 'rollbackApp', req, (_r, dep, _s, _w, by) => dep.rollback(req.name, Number(req.version), by))),
      PlanRollback: unary(log, 'PlanRollback', (req, call) => this.onLeader(call, 'planRollback', req, (_r, dep) => dep.rollback(req.name, Number(req.version), '', true))),
      ScaleApp: unary(log, 'ScaleApp', (req, call) => {
        if (!req.name) throw InvalidArgumentError.field('name', 'is required');
        // Present or not is told apart (proto3 optional): a request that forgets the count must
        // not stop every instance.
        if (req.instances === undefined || req.instances === null) throw InvalidArgumentError.field('instances', 'is required (0 stops every instance of the component)');
        return this.onLeader(call, 'scaleApp', req, async (_r, dep, sc, _w, by) => {
          const p = sc.list(req.name).find((x) => x.component === req.component);
          return dep.scale(req.name, req.component, req.instances!, p ? { min: Number(p.min ?? 0), max: Number(p.max ?? 0) } : undefined, by);
        });
      }),
      PromoteApp: unary(log, 'PromoteApp', (req, call) => {
        if (!req.name) throw InvalidArgumentError.field('name', 'is required');
        if (Number(req.version) < 0) throw InvalidArgumentError.field('version', `must be 0 (the current one) or a version, got ${req.version}`);
        return this.onLeader(call, 'promoteApp', req, (_r, dep, _s, _w, by) => dep.promote(req.name, Number(req.version), by));
      }),
      RestartApp: unary(log, 'RestartApp', (req, call) => {
        if (!req.name) throw InvalidArgumentError.field('name', 'is required');
        return this.onLeader(call, 'restartApp', req, (_r, dep, _s, _w, by) => dep.restart(req.name, req.component, by));
      }),
      SetPolicy: unary(log, 'SetPolicy', (req, call) => this.onLeader(call, 'setPolicy', req, (_r, _d, sc, _w, by) => sc.set(req.policy ?? undefined, by))),
      GetPolicy: unary(log, 'GetPolicy', (req, call) => this.onLeader(call, 'getPolicy', req, async (_r, _d, sc) => sc.get(req.app, req.component))),
      DeletePolicy: unary(log, 'DeletePolicy', (req, call) => this.onLeader(call, 'deletePolicy', req, (_r, _d, sc, _w, by) => sc.delete(req.app, req.component, by))),
      ListPolicies: unary(log, 'ListPolicies', (req, call) => this.onLeader(call, 'listPolicies', req, async (_r, _d, sc) => ({ policies: sc.list(req.app) }))),
      ScalingHistory: unary(log, 'ScalingHistory', (req, call) => this.onLeader(call, 'scalingHistory', req, async (_r, dep, sc) => {
        if (!req.app) throw InvalidArgumentError.field('app', 'is required');
        dep.getApp(req.app);
        return { decisions: sc.history(req.app, req.component, req.limit) };
      })),
      EvaluatePolicy: unary(log, 'EvaluatePolicy', (req, call) => this.onLeader(call, 'evaluatePolicy', req, (_r, _d, sc) => sc.dryRun(req.app, req.component))),
      ListInstances: unary(log, 'ListInstances', (req, call) => {
        const limit = pageLimit(req.limit, 'instance');
        const filter = `app ${JSON.stringify(req.app)} and node ${JSON.stringify(req.nodeId)}`;
        const after = req.pageToken ? decodePageToken(req.pageToken, filter, 'ListInstances', (v): v is InstanceCursor => Array.isArray(v) && v.length === 5
          && typeof v[0] === 'string' && typeof v[1] === 'string' && typeof v[2] === 'number' && typeof v[3] === 'number' && typeof v[4] === 'string') : undefined;
        return this.onLeader(call, 'listInstances', req, async (_r, dep) => {
          const all = dep.listInstances(req.app, req.nodeId);
          // In the list's order (app, component, slot, creation, id): the ones after the page before's last.
          const wanted = after ? all.filter((i) => compareInstanceCursor(instanceCursor(i), after) > 0) : all;
          const page = limit ? wanted.slice(0, limit) : wanted;
          return { instances: page, nextPageToken: page.length < wanted.length ? encodePageToken(instanceCursor(page[page.length - 1]), filter) : '' };
        });
      }),
      WatchEvents: serverStream(log, 'WatchEvents', (call) => this.watchEvents(call)),
      ReplaceInstance: unary(log, 'ReplaceInstance', (req, call) => {
        if (!req.instanceId) throw InvalidArgumentError.field('instanceId', 'is required');
        if (req.reason.length > 200) throw InvalidArgumentError.field('reason', `is ${req.reason.length} characters; at most 200`);
        return this.onLeader(call, 'replaceInstance', req, async (_r, dep, _s, w, by) => {
          const ext = dep.instance(req.instanceId) ? undefined : w.components.external(req.instanceId);
          if (ext) throw new FailedPreconditionError(`instance ${req.instanceId} is external (a ${ext.kind} at ${ext.endpoint}, registered through the Admin API): Tessera does not run it and cannot replace it (deregister it instead)`);
          return dep.replaceInstance(req.instanceId, req.reason, by);
        });
      }),

      RegisterComponent: unary(log, 'RegisterComponent', (req, call) => this.onLeader(call, 'registerComponent', req, (_r, _d, _s, w, by) => w.components.register(req, undefined, by))),
      DeregisterComponent: unary(log, 'DeregisterComponent', (req, call) => {
        if (!req.instanceId) throw InvalidArgumentError.field('instanceId', 'is required');
        return this.onLeader(call, 'deregisterComponent', req, (_r, _d, _s, w, by) => w.components.deregister(req.instanceId, undefined, by));
      }),
      ListComponents: unary(log, 'ListComponents', (req, call) => {
        const limit = pageLimit(req.limit, 'instance');
        const filter = `kind ${JSON.stringify(req.kind)}`;
        const after = req.pageToken ? decodePageToken(req.pageToken, filter, 'ListComponents', (v): v is [string, string] => Array.isArray(v) && v.length === 2
          && typeof v[0] === 'string' && typeof v[1] === 'string') : undefined;
        return this.onLeader(call, 'listComponents', req, async (_r, _d, _s, w) => {
          const all = w.components.describe(req.kind);
          // By kind, then instance id: the ones after the page before's last.
          const wanted = after ? all.filter((i) => ((i.kind ?? '').localeCompare(after[0]) || (i.instanceId ?? '').localeCompare(after[1])) > 0) : all;
          const page = limit ? wanted.slice(0, limit) : wanted;
          const last = page[page.length - 1];
          return { instances: page, nextPageToken: page.length < wanted.length ? encodePageToken([last.kind, last.instanceId], filter) : '' };
        });
      }),
      SetQuota: unary(log, 'SetQuota', (req, call) => this.onLeader(call, 'setQuota', req, (_r, dep, _s, _w, by) => dep.setQuota(req.quota, by))),
      DeleteQuota: unary(log, 'DeleteQuota', (req, call) => {
        if (!req.kind) throw InvalidArgumentError.field('kind', 'is required');
        return this.onLeader(call, 'deleteQuota', req, (_r, dep, _s, _w, by) => dep.deleteQuota(req.kind, by));
      }),
      SetRegistryCredential: unary(log, 'SetRegistryCredential', (req, call) => this.onLeader(call, 'setRegistryCredential', req, (_r, dep, _s, _w, by) => dep.sealed.setRegistryCredential(req.credential, by))),
      DeleteRegistryCredential: unary(log, 'DeleteRegistryCredential', (req, call) => {
        if (!req.name) throw InvalidArgumentError.field('name', 'is required');
        return this.onLeader(call, 'deleteRegistryCredential', req, (_r, dep, _s, _w, by) => dep.sealed.deleteRegistryCredential(req.name, by));
      }),
      ListRegistryCredentials: unary(log, 'ListRegistryCredentials', (req, call) => this.onLeader(call, 'listRegistryCredentials', req, async (_r, dep) => ({ credentials: dep.sealed.listRegistryCredentials(req.name) }))),
      SetSecret: unary(log, 'SetSecret', (req, call) => this.onLeader(call, 'setSecret', req, (_r, dep, _s, _w, by) => dep.sealed.setSecret(req.secret, by))),
      DeleteSecret: unary(log, 'DeleteSecret', (req, call) => {
        if (!req.name) throw InvalidArgumentError.field('name', 'is required');
        return this.onLeader(call, 'deleteSecret', req, (_r, dep, _s, _w, by) => dep.sealed.deleteSecret(req.name, by));
      }),
      ListSecrets: unary(log, 'ListSecrets', (req, call) => this.onLeader(call, 'listSecrets', req, async (_r, dep) => ({ secrets: dep.sealed.listSecrets(req.name) }))),
      ListQuotas: unary(log, 'ListQuotas', (req, call) => this.onLeader(call, 'listQuotas', req, async (_r, dep) => ({ quotas: dep.listQuotas().filter((q) => !req.kind || q.kind === req.kind) }))),

      ApplyPipeline: unary(log, 'ApplyPipeline', (req, call) => this.onLeader(call, 'applyPipeline', req, async (_r, _d, _s, w, by) => pipelineToProto(await w.pipelines.apply(req.pipeline, req.dryRun, by)))),
      GetPipeline: unary(log, 'GetPipeline', (req, call) => this.onLeader(call, 'getPipeline', req, async (_r, _d, _s, w) => pipelineToProto(w.pipelines.get(req.name)))),
      ListPipelines: unary(log, 'ListPipelines', (req, call) => {
        const limit = pageLimit(req.limit, 'pipeline');
        const after = req.pageToken ? decodePageToken(req.pageToken, 'pipelines', 'ListPipelines', (v): v is string => typeof v === 'string') : undefined;
        return this.onLeader(call, 'listPipelines', req, async (_r, _d, _s, w) => {
          const all = w.pipelines.list().filter((p) => after === undefined || p.name.localeCompare(after) > 0);
          const page = limit ? all.slice(0, limit) : all;
          return { pipelines: page.map(pipelineToProto), nextPageToken: page.length < all.length ? encodePageToken(page[page.length - 1].name, 'pipelines') : '' };
        });
      }),
      DeletePipeline: unary(log, 'DeletePipeline', (req, call) => this.onLeader(call, 'deletePipeline', req, async (_r, _d, _s, w, by) => pipelineToProto(await w.pipelines.delete(req.name, by)))),

      SubmitJob: unary(log, 'SubmitJob', (req, call) => this.onLeader(call, 'submitJob', req, async (_r, _d, _s, w, by) => {
        const { job, done } = await w.jobs.submit(req, by);
        return inView(done ? await done : job, req.view);
      }, forwardBudgetMs(req))),
      GetJob: unary(log, 'GetJob', (req, call) => this.onLeader(call, 'getJob', req, (_r, _d, _s, w) => w.jobs.get(req.id))),
      ListJobs: unary(log, 'ListJobs', (req, call) => {
        if (!JOB_STATES.has(req.state)) throw InvalidArgumentError.field('state', `unknown job state ${JSON.stringify(req.state)}`);
        return this.onLeader(call, 'listJobs', req, async (_r, _d, _s, w) => w.jobs.list(req));
      }),
      CancelJob: unary(log, 'CancelJob', (req, call) => {
        if (!req.id) throw InvalidArgumentError.field('id', 'is required');
        return this.onLeader(call, 'cancelJob', req, (_r, _d, _s, w, by) => w.jobs.cancel(req.id, by));
      }),
      WatchJob: serverStream(log, 'WatchJob', (call) => this.watchJob(call)),
      InstanceLogs: serverStream(log, 'InstanceLogs', (call) => this.instanceLogs(call)),
      ExecInstance: serverStream(log, 'ExecInstance', (call) => this.execInstance(call)),
      ExecInteractive: (call: grpc.ServerDuplexStream<ExecInput__Output, ExecChunk>) => {
        void this.execInteractive(call).catch((err) => {
          log.debug({ err: (err as Error).message }, 'ExecInteractive failed');
          if (!call.cancelled) call.emit('error', toServiceError(err));
        });
      },
      SaveSnapshot: serverStream(log, 'SaveSnapshot', (call) => this.saveSnapshot(call)),
      SubmitJobs: (call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>) => {
        // On a follower, the submissions are forwarded to the leader (over a stream of its own), so that a
        // grpcurl user may open the stream on any coordinator; a client that moves to the leader
        // itself (AdminClient.jobStream, for high rates) asks not to be forwarded and is refused,
        // naming the leader. Never forwarded twice.
        const forward = !call.metadata.get(NO_FORWARD_KEY).length && !call.metadata.get(FORWARDED_KEY).length;
        if (!this.opts.leaderWork?.() && !forward) {
          // Just elected and still loading: open the stream once ready, rather than refuse it.
          void this.leaderReady().then((w) => {
            if (w) return this.serveSubmissions(call, false);
            const l = this.leadership.leader;
            call.emit('error', toServiceError(new NotLeaderError(l?.id, l?.address)));
          });
          return;
        }
        this.serveSubmissions(call, forward);
      },
      DirectJobs: (call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>) => {
        // Leader only, never forwarded: the client runs the jobs and follows the leader itself.
        void this.leaderReady().then((w) => {
          if (w) return this.serveDirect(call, w);
          const l = this.leadership.leader;
          call.emit('error', toServiceError(new NotLeaderError(l?.id, l?.address)));
        });
      },
    };
  }

  /**
   * A DirectJobs stream (see JobScheduler's direct jobs): leases, starts and ends, each answered
   * with its call_id. The leases live as long as the stream: when it ends (the client went
   * away, or this coordinator stopped leading), their jobs without an end are run again.
   */
  private serveDirect(call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>, w: LeaderWork): void {
    const caller = this.opts.auth?.enabled || this.opts.tls ? String(call.metadata.get(CALLER_KEY)[0] ?? '') : '';
    const leases = new Map<string, { lease: DirectLease; atMs: number }>();
    const jobs = w.jobs;
    const relayKeys = this.opts.relayKeys;
    const sweep = setInterval(() => {
      const now = Date.now();
      for (const [k, l] of leases) {
        jobs.sweepDirect(l.lease, now);
        // A lease past its time with no jobs left goes (its client has asked for a newer one).
        if (!l.lease.open.size && now - l.atMs > 2 * LEASE_TTL_MS) leases.delete(k);
      }
    }, 1_000);
    sweep.unref();
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      clearInterval(sweep);
      // Run again by this leader (if it still leads: else the next one finds their start records).
      if (this.opts.leaderWork?.() === w) for (const l of leases.values()) jobs.dropLease(l.lease);
      leases.clear();
    };
    call.on('close', end);
    call.on('error', end);
    call.on('cancelled', end);
    const leading = () => {
      if (this.opts.leaderWork?.() !== w) throw new NotLeaderError(this.leadership.leader?.id, this.leadership.leader?.address);
    };
    serveMux<DirectCall__Output, DirectAnswer>(call, { req: 'calls', res: 'answers' }, async (c) => {
      rejectMalformed(c, 'call');
      leading();
      if (!c.start && !c.lease) return answer(c);
      try {
        return await answer(c);
      } catch (err) {
        // Counted as SubmitJobs' refusals are (a coordinator that no longer leads refuses nothing of its own).
        if (!(err instanceof NotLeaderError || err instanceof FencedError)) jobs.refused(err);
        throw err;
      }
    }, (code, error, err) => {
      const notLeader = err instanceof NotLeaderError || err instanceof FencedError;
      return { errorCode: code, error, notLeader, leaderAddress: err instanceof NotLeaderError ? err.leaderAddress ?? '' : '' };
    });

    async function answer(c: DirectCall__Output): Promise<DirectAnswer> {
      if (c.start) {
        const l = leases.get(leasePrefix(c.start.jobId ?? ''));
        if (!l) throw new FailedPreconditionError(`start.job_id ${JSON.stringify(c.start.jobId)}: no lease of this stream has its prefix (leases live as long as the stream, on the leader that granted them)`);
        await jobs.startDirect(l.lease, c.start);
        await failpoint('directStartAck', l.lease.pipeline.name);
        return {};
      }
      if (c.end) {
        const l = leases.get(leasePrefix(c.end.jobId ?? ''));
        if (!l) throw new FailedPreconditionError(`end.job_id ${JSON.stringify(c.end.jobId)}: no lease of this stream has its prefix`);
        const job = await jobs.endDirect(l.lease, c.end);
        return job ? { job: inView(job, 'JOB_VIEW_BASIC') } : {};
      }
      if (c.lease) {
        if (!c.lease.pipeline) throw InvalidArgumentError.field('lease.pipeline', 'is required');
        const lease = jobs.leaseRoutes(c.lease.pipeline, caller);
        leases.set(lease.idPrefix, { lease, atMs: Date.now() });
        const p = lease.pipeline;
        return {
          lease: {
            pipeline: p.name, idPrefix: lease.idPrefix, routes: lease.routes.map((r) => ({ hops: r.hops })), ttlMs: LEASE_TTL_MS, maxInFlight: LEASE_MAX_IN_FLIGHT,
            maxPayloadBytes: p.maxPayloadBytes, defaultTimeoutMs: p.defaultTimeoutMs, pipelineVersion: p.version,
            relayTicket: relayKeys ? issueTicket(relayKeys.current, lease.idPrefix, Date.now() + LEASE_TTL_MS) : '',
          },
        };
      }
      throw InvalidArgumentError.field('call', 'needs one of lease, start, end');
    }
  }

  /** A write to one node on the leader (drain, cordon, remove): its id checked first, placements reconsidered after. */
  private nodeWrite<Req extends { nodeId: string }>(call: grpc.ServerUnaryCall<Req, Node>, method: string, req: Req, act: (reg: NodeRegistry, by: string) => Promise<NodeRecord>): Promise<Node> {
    validateNodeId(req.nodeId);
    return this.onLeader(call, method, req, async (reg, dep, _s, _w, by) => {
      const n = recordToProto(await act(reg, by));
      dep.kick();
      return n;
    });
  }

  /** The leader's work; while this coordinator has just been elected and loads its state, waits for it (up to LOAD_WAIT_MS). */
  private async leaderReady(): Promise<LeaderWork | undefined> {
    const w = this.opts.leaderWork?.();
    if (w || !this.leadership.isLeader || !this.opts.leaderWorkReady) return w;
    return this.opts.leaderWorkReady(LOAD_WAIT_MS);
  }

  private serveSubmissions(call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>, forward: boolean): void {
    // Set by the guard for the stream when callers are identified (see onLeader).
    const caller = this.opts.auth?.enabled || this.opts.tls ? String(call.metadata.get(CALLER_KEY)[0] ?? '') : '';
    // A follower forwards this stream's submissions over one SubmitJobs stream of its own to the
    // leader (opened with this stream's metadata: the leader checks the same token and learns
    // the same caller), batched per event-loop turn as the client's were, instead of a unary
    // SubmitJob each (measured through a follower: see the README's Jobs section).
    let upstream: { leaderKey: string; mux: MuxClient<JobSubmission__Output, JobOutcome> } | undefined;
    // A stream to a leader that no longer leads is retired, not cut: the jobs it accepted
    // before it lost the lead still send their outcomes back on it.
    const retired = new Set<MuxClient<JobSubmission__Output, JobOutcome>>();
    const closeUpstream = () => {
      upstream?.mux.close();
      upstream = undefined;
      for (const m of retired) m.close();
      retired.clear();
    };
    call.on('close', closeUpstream);
    call.on('error', closeUpstream);
    const viaLeader = async (req: SubmitJobRequest__Output, endMs: number, refusedBy?: string, firstSentMs = Date.now()): Promise<JobOutcome | undefined> => {
      // After a refusal by a leader that no longer leads: the next one, within the submission's budget.
      const leader = refusedBy ? await this.leadership.waitForLeaderOtherThan(refusedBy, Math.max(0, endMs - Date.now() - 1_000)) : await this.leadership.waitForLeader(3_000);
      // No leader known (after the same wait as onLeader's): refused, nothing accepted.
      if (!leader) throw new NotLeaderError();
      // This coordinator by now: onLeader's ways (served once loaded).
      if (this.leadership.isSelf(leader)) return undefined;
      if (upstream?.leaderKey !== leader.key) {
        if (upstream) {
          const old = upstream.mux;
          retired.add(old);
          void old.retire().then(() => retired.delete(old));
        }
        const client = this.leaderClient(leader.address);
        const md = call.metadata.clone();
        md.set(FORWARDED_KEY, this.opts.coordinatorId);
        upstream = { leaderKey: leader.key, mux: new MuxClient(() => client.SubmitJobs(md) as never, { req: 'submissions', res: 'outcomes' }) };
      }
      this.opts.metrics?.inc('tessera_jobs_forwarded_total');
      try {
        // The leader's outcome as it is (a job, or its refusal), but for a refusal because it no
        // longer leads: that accepted nothing, so it goes to the next leader (as a client would
        // after a not_leader outcome), for as long as the submission's budget lasts.
        const out = await upstream.mux.call({ request: req } as JobSubmission__Output, endMs);
        if (!out.notLeader || Date.now() >= endMs - 1_000) return out;
        this.log.debug({ leader: leader.id }, 'forwarded submission refused: the leader no longer leads; forwarding it to the next one');
        // Its timeout counts from the first send, as a client's own resend does.
        return await viaLeader(resentRequest(req, firstSentMs, Date.now()), endMs, leader.key, firstSentMs);
      } catch (err) {
        if (err instanceof NotLeaderError) throw err;
        // The stream to the leader broke: whether it took the job is not known (the client may
        // send it again with its idempotency key).
        const e = err as grpc.ServiceError;
        return { errorCode: e.code === grpc.status.DEADLINE_EXCEEDED ? e.code : grpc.status.UNAVAILABLE, error: `forwarded to the leader ${leader.id} (${leader.address}): ${e.details ?? e.message}`, notLeader: false, leaderAddress: '' };
      }
    };
    serveMux<JobSubmission__Output, JobOutcome>(call, { req: 'submissions', res: 'outcomes' }, async (sub) => {
      rejectMalformed(sub, 'submission');
      const req = sub.request;
      if (!req) throw InvalidArgumentError.field('request', 'is required');
      const w = this.opts.leaderWork?.();
      if (!w) {
        if (!forward) throw new NotLeaderError(this.leadership.leader?.id, this.leadership.leader?.address);
        if (!this.leadership.isLeader) {
          const out = await viaLeader(req, Date.now() + forwardBudgetMs(req));
          if (out) return out;
        }
        // Here if this coordinator leads by now (or is loading), else refused as onLeader does.
        const job = await this.onLeader<typeof req, Job>(call as unknown as grpc.ServerUnaryCall<typeof req, Job>, 'submitJob', req, async (_r, _d, _s, lw, by) => {
          const { job: j, done } = await lw.jobs.submit(req, by);
          return inView(done ? await done : j, req.view);
        }, forwardBudgetMs(req));
        return { job };
      }
      const { job, done } = await w.jobs.submit(req, caller);
      return { job: inView(done ? await done : job, req.view) };
    }, (code, error, err) => {
      // A refusal because this coordinator does not lead (or its write was fenced: it just
      // lost the lead) accepted nothing: the client may send it to the leader.
      const notLeader = err instanceof NotLeaderError || err instanceof FencedError;
      return { errorCode: code, error, notLeader, leaderAddress: err instanceof NotLeaderError ? err.leaderAddress ?? '' : '' };
    });
  }

  /**
   * Runs fn on the leader: here if we lead, else forwarded to the leader with the caller's
   * metadata. Writes go there because only the leader writes; app and instance reads go there
   * because what agents observe lives in the leader's memory.
   */
  private async onLeader<Req, Res>(
    call: grpc.ServerUnaryCall<Req, Res>,
    method: string,
    req: Req,
    fn: (reg: NodeRegistry, dep: Deployments, sc: Scaler, work: LeaderWork, by: string) => Promise<Res>,
    forwardTimeoutMs = 5_000,
  ): Promise<Res> {
    // Set by the guard when callers are identified (tokens or TLS); an open Admin API has no
    // guard, so what a client sent under the key is not believed.
    const by = this.opts.auth?.enabled || this.opts.tls ? String(call.metadata.get(CALLER_KEY)[0] ?? '') : '';
    const local = () => {
      const reg = this.registry();
      const dep = this.deployments();
      const sc = this.scaler();
      const w = this.opts.leaderWork?.();
      return reg && dep && sc && w ? () => fn(reg, dep, sc, w, by) : undefined;
    };
    const here = local();
    if (here) return here();
    // Elected a moment ago: served once this term's state is loaded, not refused (and not
    // forwarded: this coordinator is the leader).
    let waited = false;
    if (this.leadership.isLeader) {
      waited = true;
      await this.leaderReady();
      const ready = local();
      if (ready) return ready();
      if (this.leadership.isLeader) throw new UnavailableError(LOADING_TEXT);
    }
    if (call.metadata.get(FORWARDED_KEY).length) {
      // Never forward twice: the leader we forwarded to no longer leads.
      throw new NotLeaderError(this.leadership.leader?.id, this.leadership.leader?.address);
    }
    const leader = await this.leadership.waitForLeader(3_000);
    if (!leader) throw new NotLeaderError();
    if (this.leadership.isSelf(leader)) {
      if (!waited) await this.leaderReady();
      const again = local();
      if (again) return again();
      // Still loading if it leads; else its view of etcd is stale (e.g. cut off from it): it
      // does not lead and cannot know who does.
      throw this.leadership.isLeader ? new UnavailableError(LOADING_TEXT) : new NotLeaderError();
    }
    const client = this.leaderClient(leader.address);
    const md = call.metadata.clone();
    md.set(FORWARDED_KEY, this.opts.coordinatorId);
    type Callback = (err: grpc.ServiceError | null, res?: Res) => void;
    return new Promise<Res>((resolve, reject) => {
      const cb: Callback = (err, res) => {
        if (!err) return resolve(res!);
        if (err.code === grpc.status.UNAVAILABLE && !err.metadata.get('tessera-error-kind').length) {
          // The leader could not be reached at all: say who it is, so the caller can go there.
          return reject(new NotLeaderError(leader.id, leader.address));
        }
        reject(err);
      };
      ((client as unknown as Record<string, unknown>)[method] as (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: Callback) => void)(req, md, { deadline: deadline(forwardTimeoutMs) }, cb);
    });
  }

  private leaderClient(address: string): AdminClient {
    return this.cached(this.leaderClients, address, () => new (tesseraProto().Admin)(address, clientCredentials(this.opts.tls), CHANNEL_OPTIONS));
  }

  /** One client per address, kept (closed in close()). */
  private cached<C>(clients: Map<string, C>, address: string, make: () => C): C {
    let c = clients.get(address);
    if (!c) clients.set(address, (c = make()));
    return c;
  }

  private async etcdRead<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof TesseraError || isServiceError(err)) throw err;
      throw new UnavailableError(`etcd read failed: ${(err as Error).message}`);
    }
  }

  async clusterStatus(call?: { metadata: grpc.Metadata }): Promise<ClusterStatus> {
    const leader = this.leadership.leader;
    const reg = this.registry();
    // A follower takes the fleet's part from the leader when it answers within half a second: the
    // leader also counts the nodes silent long enough (about to go DOWN) and holds a disruption
    // while a partition heals, which a follower, reading node records, cannot see.
    const asLeader = !reg && leader && !this.leadership.isSelf(leader) && call && !call.metadata.get(FORWARDED_KEY).length ? this.leaderFleet(leader.address, call.metadata) : undefined;
    const [members, records, storageFormat, alarms, fromLeader] = await Promise.all([
      this.etcdMembers(),
      reg ? Promise.resolve(reg.list()) : withTimeout(readNodes(this.client, this.keys), 1_000, 'node read').catch(() => []),
      // Bounded like the member reads: `tessera status` answers promptly while etcd is out of reach.
      storedFormat(this.client, this.keys, 800).catch(() => -1),
      etcdAlarms(this.client, 800).catch(() => []),
      asLeader,
    ]);
    let nodesByState: Record<string, number> = {};
    for (const r of records) nodesByState[r.state] = (nodesByState[r.state] ?? 0) + 1;
    if (fromLeader) nodesByState = fromLeader.nodesByState;
    return {
      leader: leader ? { id: leader.id, address: leader.address, leader: true, version: leader.version, startedAtMs: leader.startedAtMs } : { id: '' },
      leaderTerm: leader ? Number(leader.createRevision) : 0,
      coordinators: this.leadership.allCandidates.map((c) => ({ id: c.id, address: c.address, leader: c.key === leader?.key, version: c.version, startedAtMs: c.startedAtMs, secretsKeys: c.secretsKeys ?? [] })),
      etcd: members,
      answeredBy: this.opts.coordinatorId,
      nodesByState,
      storageFormat,
      refusal: this.leadership.refusal ?? '',
      etcdAlarms: alarms.map((a) => `${a.alarm} on member ${a.memberId}`),
      // The leader counts the nodes silent long enough too; a follower that cannot ask it, only those DOWN.
      fleetDisruption: fromLeader ? fromLeader.fleetDisruption
        : ((d) => (d ? disruptionText(d) : ''))(reg ? reg.disruption() : fleetDisruption(records.map((r) => ({ state: r.state, zone: zoneOf(r, this.opts.zoneLabel ?? DEFAULT_ZONE_LABEL) })), this.opts.disruptionPercent ?? 0)),
    };
  }

  /**
   * On a follower, a node read from the leader, whose memory holds what the agents last reported
   * (usage, last seen, attachment): node records carry those as of their last refresh (each
   * --status-refresh-interval-ms). Undefined here on the leader, with no leader known, or when it
   * does not answer in time (the records then: 2 s for a list, which takes the leader ~1 s at
   * 5,000 nodes on a slow machine, 500 ms for one node); the leader's own answer (an unknown node,
   * say) stands.
   */
  private nodeReadOnLeader<Req, Res>(call: { metadata: grpc.Metadata }, method: 'listNodes' | 'getNode', req: Req): Promise<Res | undefined> {
    const waitMs = method === 'listNodes' ? 2_000 : 500;
    const leader = this.leadership.leader;
    if (this.registry() || !leader || this.leadership.isSelf(leader) || call.metadata.get(FORWARDED_KEY).length) return Promise.resolve(undefined);
    const md = call.metadata.clone();
    md.set(FORWARDED_KEY, this.opts.coordinatorId);
    return new Promise((resolve, reject) => {
      ((this.leaderClient(leader.address) as unknown as Record<string, unknown>)[method] as (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => void)(
        req, md, { deadline: deadline(waitMs) }, (err, res) => {
          if (!err) return resolve(res);
          if (LEADER_ANSWERS.has(err.code)) return reject(err);
          resolve(undefined);
        });
    });
  }

  /** Why a follower answered a node read from the records (nodeReadOnLeader gave nothing). */
  private recordsWhy(call: { metadata: grpc.Metadata }, waitedMs: number): string {
    const leader = this.leadership.leader;
    return call.metadata.get(FORWARDED_KEY).length ? 'asked by a coordinator that took it for the leader' : !leader ? 'no leader is known'
      : this.leadership.isSelf(leader) ? 'it was elected a moment ago and is still loading' : `the leader ${leader.id} did not answer within ${waitedMs / 1000} s`;
  }

  /** The fleet's part of the leader's status (undefined if it does not answer within 500 ms). */
  private leaderFleet(address: string, metadata: grpc.Metadata): Promise<{ nodesByState: Record<string, number>; fleetDisruption: string } | undefined> {
    const md = metadata.clone();
    md.set(FORWARDED_KEY, this.opts.coordinatorId);
    return new Promise((resolve) => {
      (this.leaderClient(address) as unknown as { GetClusterStatus: (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: ClusterStatus) => void) => void })
        .GetClusterStatus({}, md, { deadline: deadline(500) }, (err, res) => resolve(err || !res ? undefined : {
          nodesByState: Object.fromEntries(Object.entries(res.nodesByState ?? {}).map(([k, v]) => [k, Number(v)])), fleetDisruption: res.fleetDisruption ?? '',
        }));
    });
  }

  /** Every etcd member with its own status call, so a dead member shows as unhealthy. */
  private async etcdMembers(): Promise<EtcdMember[]> {
    let list: { name: string; endpoint: string; id: string }[];
    try {
      const res = await withTimeout(this.client.cluster.memberList({ linearizable: false } as never), 800, 'member list');
      list = res.members.map((m) => ({ name: m.name, endpoint: (m.clientURLs[0] ?? '').replace(/^https?:\/\//, ''), id: String(m.ID) }));
    } catch {
      list = this.opts.etcdEndpoints.map((e) => ({ name: '', endpoint: e, id: '' }));
    }
    return Promise.all(list.map(async (m): Promise<EtcdMember> => {
      try {
        const st = await withTimeout(this.memberClient(m.endpoint).maintenance.status(), 800, 'status');
        return { name: m.name, endpoint: m.endpoint, healthy: true, leader: String(st.leader) === String(st.header.member_id), version: st.version, dbSizeBytes: Number(st.dbSize) };
      } catch (err) {
        return { name: m.name, endpoint: m.endpoint, healthy: false, error: (err as Error).message };
      }
    }));
  }

  private memberClient(endpoint: string): Etcd3 {
    let c = this.memberClients.get(endpoint);
    if (!c) {
      c = createEtcdClient({ endpoints: [this.opts.etcdTls ? `https://${endpoint}` : endpoint], callTimeoutMs: 800, tls: this.opts.etcdTls });
      this.memberClients.set(endpoint, c);
    }
    return c;
  }

  /** WatchJob: served by the leader (job progress lives in its memory); a follower relays the leader's stream. */
  private async watchJob(call: grpc.ServerWritableStream<JobRequest__Output, Job>): Promise<void> {
    const id = call.request.id;
    if (!id) throw InvalidArgumentError.field('id', 'is required');
    const serve = async (w: LeaderWork) => {
      const { done, cancel } = w.jobs.watch(id, (j) => call.write(j));
      call.on('cancelled', cancel);
      call.on('close', cancel);
      await done;
    };
    const w = await this.leaderReady();
    if (w) return serve(w);
    if (call.metadata.get(FORWARDED_KEY).length) throw new NotLeaderError(this.leadership.leader?.id, this.leadership.leader?.address);
    const leader = await this.leadership.waitForLeader(3_000);
    if (!leader) throw new NotLeaderError();
    if (this.leadership.isSelf(leader)) {
      // Elected since the first look: served once its state is loaded, as any other call.
      const ready = this.leadership.isLeader ? await this.leaderReady() : undefined;
      if (ready) return serve(ready);
      throw this.leadership.isLeader ? new UnavailableError(LOADING_TEXT) : new NotLeaderError();
    }
    const md = call.metadata.clone();
    md.set(FORWARDED_KEY, this.opts.coordinatorId);
    const upstream = this.leaderClient(leader.address).watchJob({ id }, md);
    await new Promise<void>((resolve, reject) => {
      upstream.on('data', (j: Job) => call.write(j));
      upstream.on('end', () => resolve());
      upstream.on('error', (err) => reject(err));
      call.on('cancelled', () => { upstream.cancel(); resolve(); });
    });
  }

  /**
   * etcd's snapshot of its whole database, passed through chunk by chunk as etcd sends it (a
   * slow reader holds etcd's stream back instead of filling memory). Not forwarded: any
   * coordinator reads it from the member its client picks.
   */
  private async saveSnapshot(call: grpc.ServerWritableStream<unknown, SnapshotChunk>): Promise<void> {
    let upstream: grpc.ClientReadableStream<{ blob: Buffer; remaining_bytes: string; header?: { revision?: string } }>;
    try {
      upstream = (await this.client.maintenance.snapshot()) as unknown as typeof upstream;
    } catch (err) {
      throw new UnavailableError(`etcd did not start a snapshot: ${(err as Error).message}`);
    }
    const t0 = Date.now();
    let bytes = 0;
    let first = true;
    await relayStream(upstream, call, (r): SnapshotChunk => {
      bytes += r.blob.length;
      const chunk = { data: r.blob, remainingBytes: r.remaining_bytes, revision: first ? r.header?.revision ?? 0 : 0 };
      first = false;
      return chunk;
    }, (err) => new UnavailableError(`etcd's snapshot stream failed after ${bytes} bytes: ${err.details ?? err.message}`));
    this.log.info({ bytes, ms: Date.now() - t0, caller: String(call.metadata.get(CALLER_KEY)[0] ?? '') || undefined }, 'etcd snapshot sent');
  }

  /**
   * InstanceLogs: the leader knows where an instance runs and asks that host's agent (AgentLogs,
   * on its relay address); a follower relays the leader's stream. Chunks pass through as the
   * caller reads them (a slow reader pauses the engine's stream on the agent).
   */
  private async instanceLogs(call: grpc.ServerWritableStream<InstanceLogsRequest__Output, LogChunk>): Promise<void> {
    const req = call.request;
    if (!req.instanceId) throw InvalidArgumentError.field('instance_id', 'is required');
    await this.viaInstanceAgent(call, 'keeps no logs of it',
      (endpoint) => this.cached(this.agentLogs, endpoint, () => new (tesseraProto().AgentLogs)(endpoint, clientCredentials(this.opts.tls), CHANNEL_OPTIONS)).instanceLogs(req),
      (leader, md) => leader.instanceLogs(req, md));
  }

  /**
   * ExecInstance (operators only: see WRITE_METHODS): on the leader, an instance.exec event
   * naming the caller and the command is committed first (an audit trail of who ran what,
   * whatever the command then does), then the instance's agent runs it (AgentExec); a follower
   * relays the leader's stream. The agent enforces the command's timeout; the call to it gives up
   * EXEC_AGENT_MARGIN_MS later (a frozen agent answers nothing, and its connection stays open).
   */
  private async execInstance(call: grpc.ServerWritableStream<ExecInstanceRequest__Output, ExecChunk>): Promise<void> {
    const req = validateExec(call.request);
    await this.viaInstanceAgent(call, 'cannot run commands in it',
      (endpoint) => this.agentExecClient(endpoint).execInstance(req, { deadline: Date.now() + req.timeoutMs + EXEC_AGENT_MARGIN_MS }),
      (leader, md) => leader.execInstance(req, md),
      (inst, by, dep) => dep.recordEvent(execEvent(inst, req, by, false)),
      (err, source) => execAgentError(err, source, req, 'ExecInstance'));
  }

  /**
   * ExecInteractive (operators only, as ExecInstance; kubectl exec -i [-t]): the first message
   * names the command, the caller's next ones go on to the agent as they come (standard input as
   * typed, its end, a terminal's new size), and the agent's output comes back as it comes. On the
   * leader the event is recorded first and the instance's agent runs it; a follower relays the
   * leader's stream. The call gives up as ExecInstance does (the timeout and 5 s, or the node DOWN).
   */
  private async execInteractive(call: grpc.ServerDuplexStream<ExecInput__Output, ExecChunk>): Promise<void> {
    const it = call[Symbol.asyncIterator]() as AsyncIterator<ExecInput__Output>;
    const first = await it.next();
    if (first.done || !first.value.start) throw InvalidArgumentError.field('start', 'the first message names the command (instance_id, command, tty)');
    const req = validateExec({ ...first.value.start, stdin: Buffer.alloc(0) });
    const w = await this.leaderReady();
    const dep = this.deployments();
    const reg = this.registry();
    let upstream: grpc.ClientDuplexStream<ExecInput, ExecChunk__Output>;
    let source: string;
    let ofAgent = true;
    let watch: NodeJS.Timeout | undefined;
    let cut: string | undefined;
    const via = w && dep && reg ? undefined : this.viaAgent(call);
    if (w && dep && reg) {
      const { inst, node } = this.instanceAgent(req.instanceId, 'cannot run commands in it', dep, reg, w);
      await dep.recordEvent(execEvent(inst, req, this.callerOf(call), true));
      if (call.cancelled) return;
      const relay = this.relayOf(node);
      let stream: typeof upstream;
      if (relay) {
        source = `coordinator ${relay.id} (${relay.address}), which node ${node.id}'s agent is attached through`;
        ofAgent = false;
        stream = this.leaderClient(relay.address).execInteractive(this.viaAgentMetadata(call.metadata, node));
      } else {
        source = `the agent of node ${node.id} (${node.endpoint})`;
        stream = this.agentExecClient(node.endpoint).execInteractive({ deadline: Date.now() + req.timeoutMs + EXEC_AGENT_MARGIN_MS });
      }
      upstream = stream;
      watch = watchNode(reg, inst, (why) => { cut = why; stream.cancel(); });
    } else if (via) {
      source = `the agent of node ${via.nodeId} (${via.endpoint}), through coordinator ${this.opts.coordinatorId}`;
      upstream = this.agentExecClient(via.endpoint).execInteractive({ deadline: Date.now() + req.timeoutMs + EXEC_AGENT_MARGIN_MS });
    } else {
      const leader = await this.forwardTarget(call);
      if (call.cancelled) return;
      const md = call.metadata.clone();
      md.set(FORWARDED_KEY, this.opts.coordinatorId);
      source = `the leader ${leader.id} (${leader.address})`;
      ofAgent = false;
      upstream = this.leaderClient(leader.address).execInteractive(md);
    }
    upstream.write({ start: req });
    // The caller's input on as it comes; its end ends the upstream's.
    void (async () => {
      for (let n = await it.next(); !n.done; n = await it.next()) upstream.write(n.value);
    })().catch(() => {}).finally(() => upstream.end());
    try {
      await new Promise<void>((resolve, reject) => {
        upstream.on('data', (c: ExecChunk__Output) => {
          if (call.write(c)) return;
          upstream.pause();
          call.once('drain', () => upstream.resume());
        });
        upstream.on('end', () => resolve());
        upstream.on('error', (err: grpc.ServiceError) => {
          if (call.cancelled) return resolve();
          if (cut) return reject(new UnavailableError(cut));
          const mapped = ofAgent ? execAgentError(err, source, req, 'ExecInteractive') : undefined;
          reject(mapped ?? (err.code === grpc.status.UNAVAILABLE && !err.metadata?.get(ERROR_KIND_KEY).length ? new UnavailableError(`${source} did not answer: ${err.details}`) : err));
        });
        call.on('cancelled', () => { upstream.cancel(); resolve(); });
      });
    } finally {
      clearInterval(watch);
    }
    call.end();
  }

  /**
   * A server stream from the agent of the node an instance runs on, passed through to the
   * caller: on the leader (which knows where instances run) straight from that agent, on a
   * follower through the leader. `before` runs on the leader once the instance is found, with
   * the caller's name (for an event); `agentError` may turn an agent's error into another one
   * (not a leader's: a follower passes the leader's answer on).
   */
  private async viaInstanceAgent<Req extends { instanceId: string }, Chunk>(
    call: grpc.ServerWritableStream<Req, Chunk>,
    externalText: string,
    fromAgent: (endpoint: string) => grpc.ClientReadableStream<Chunk>,
    fromLeader: (leader: AdminClient, md: grpc.Metadata) => grpc.ClientReadableStream<Chunk>,
    before?: (inst: InstanceRecord, by: string, dep: Deployments) => Promise<void>,
    agentError?: (err: grpc.ServiceError, source: string) => Error | undefined,
  ): Promise<void> {
    const id = call.request.instanceId;
    const w = await this.leaderReady();
    const dep = this.deployments();
    const reg = this.registry();
    let upstream: grpc.ClientReadableStream<Chunk>;
    let source: string;
    let ofAgent = agentError;
    /** Why the leader cut the agent's stream: its node went DOWN (a frozen or cut-off agent keeps its connection open). */
    let cut: string | undefined;
    let watch: NodeJS.Timeout | undefined;
    const via = w && dep && reg ? undefined : this.viaAgent(call);
    if (w && dep && reg) {
      const { inst, node } = this.instanceAgent(id, externalText, dep, reg, w);
      await before?.(inst, this.callerOf(call), dep);
      // No deadline: a whole log (or a command) may take long; the caller's cancel reaches the agent.
      if (call.cancelled) return;
      const relay = this.relayOf(node);
      let stream: grpc.ClientReadableStream<Chunk>;
      if (relay) {
        // Its agent reaches this leader only through a follower: ask it through that follower,
        // which passes on (and words) the agent's answer.
        source = `coordinator ${relay.id} (${relay.address}), which node ${node.id}'s agent is attached through`;
        ofAgent = undefined;
        stream = fromLeader(this.leaderClient(relay.address), this.viaAgentMetadata(call.metadata, node));
      } else {
        source = `the agent of node ${node.id} (${node.endpoint})`;
        stream = fromAgent(node.endpoint);
      }
      upstream = stream;
      watch = watchNode(reg, inst, (why) => { cut = why; stream.cancel(); });
    } else if (via) {
      source = `the agent of node ${via.nodeId} (${via.endpoint}), through coordinator ${this.opts.coordinatorId}`;
      upstream = fromAgent(via.endpoint);
    } else {
      const leader = await this.forwardTarget(call);
      const md = call.metadata.clone();
      md.set(FORWARDED_KEY, this.opts.coordinatorId);
      if (call.cancelled) return;
      source = `the leader ${leader.id} (${leader.address})`;
      ofAgent = undefined;
      upstream = fromLeader(this.leaderClient(leader.address), md);
    }
    try {
      await relayStream(upstream, call, (c: Chunk) => c,
        (err) => (cut ? new UnavailableError(cut) : undefined) ?? ofAgent?.(err, source) ?? (err.code === grpc.status.UNAVAILABLE && !err.metadata?.get('tessera-error-kind').length ? new UnavailableError(`${source} did not answer: ${err.details}`) : err));
    } finally {
      clearInterval(watch);
    }
  }

  private agentExecClient(endpoint: string): AgentExecClient {
    return this.cached(this.agentExec, endpoint, () => new (tesseraProto().AgentExec)(endpoint, clientCredentials(this.opts.tls), CHANNEL_OPTIONS));
  }

  /** On the leader: the follower a node's agent is attached through (it cannot reach this leader itself), if any. */
  private relayOf(node: NodeRecord): { id: string; address: string } | undefined {
    if (!node.relayedBy) return undefined;
    const c = this.leadership.allCandidates.find((x) => x.id === node.relayedBy);
    return c && !this.leadership.isSelf(c) ? { id: c.id, address: c.address } : undefined;
  }

  /** The caller's metadata (its token, its name) marked for the relaying follower: which agent to ask. */
  private viaAgentMetadata(md: grpc.Metadata, node: NodeRecord): grpc.Metadata {
    const out = md.clone();
    out.set(FORWARDED_KEY, this.opts.coordinatorId);
    out.set(VIA_AGENT_KEY, `${node.id} ${node.endpoint}`);
    return out;
  }

  /** On a follower: the agent the leader asks this coordinator to call itself (see VIA_AGENT_KEY), or none. */
  private viaAgent(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>): { nodeId: string; endpoint: string } | undefined {
    const v = String(call.metadata.get(VIA_AGENT_KEY)[0] ?? '');
    if (!v) return undefined;
    const leader = this.leadership.leader;
    const by = String(call.metadata.get(FORWARDED_KEY)[0] ?? '');
    if (!leader || this.leadership.isSelf(leader) || by !== leader.id) throw new FailedPreconditionError(`only the leader asks a coordinator to call an agent for it (asked by ${JSON.stringify(by)}, the leader is ${leader?.id ?? 'unknown'})`);
    if (this.opts.tls && peerIdentity(call as never).role !== 'coordinator') throw new PermissionDeniedError('only a coordinator\'s certificate may ask this coordinator to call an agent for it');
    const [nodeId, endpoint] = v.split(' ');
    if (!nodeId || !/^[\w.-]+:\d+$/.test(endpoint ?? '')) throw InvalidArgumentError.field(VIA_AGENT_KEY, `must be "<node id> <host:port>", got ${JSON.stringify(v)}`);
    return { nodeId, endpoint };
  }

  /** On the leader: an instance Tessera runs and its node's agent, or why that agent cannot be asked. */
  private instanceAgent(id: string, externalText: string, dep: Deployments, reg: NodeRegistry, w: LeaderWork): { inst: InstanceRecord; node: ReturnType<NodeRegistry['get']> } {
    const inst = dep.instance(id);
    const ext = inst ? undefined : w.components.external(id);
    if (ext) throw new FailedPreconditionError(`instance ${id} is external (a ${ext.kind} at ${ext.endpoint}, registered through the Admin API): Tessera does not run it and ${externalText}`);
    if (!inst) throw new NotFoundError('instance', id);
    const node = reg.get(inst.nodeId);
    if (node.state === 'DOWN' || !node.endpoint) throw new UnavailableError(`instance ${inst.id} is on node ${node.id}, which is ${node.state}: its agent cannot be asked now`);
    return { inst, node };
  }

  /** On a follower: the leader to relay a stream to (never a second time), or why there is none. */
  private async forwardTarget(call: { metadata: grpc.Metadata }): Promise<{ id: string; address: string }> {
    if (call.metadata.get(FORWARDED_KEY).length) throw new NotLeaderError(this.leadership.leader?.id, this.leadership.leader?.address);
    const leader = await this.leadership.waitForLeader(3_000);
    if (!leader || this.leadership.isSelf(leader)) throw this.leadership.isLeader ? new UnavailableError(LOADING_TEXT) : new NotLeaderError();
    return leader;
  }

  /** Who called (a token's name or a certificate's CN) when callers are identified; an open Admin API has no guard, so what a client sent is not believed. */
  private callerOf(call: { metadata: grpc.Metadata }): string {
    return this.opts.auth?.enabled || this.opts.tls ? String(call.metadata.get(CALLER_KEY)[0] ?? '') : '';
  }

  private async watchEvents(call: grpc.ServerWritableStream<WatchEventsRequest__Output, Event>): Promise<void> {
    const req = call.request;
    const history = req.history === 0 ? 20 : req.history;
    if (history < -1) throw InvalidArgumentError.field('history', 'must be -1 (none), 0 (default 20) or a positive count');
    const match = (e: StoredEvent) => (!req.kinds.length || req.kinds.some((k) => e.kind.startsWith(k))) && (!req.involving || involves(e, req.involving));
    // A filter reads further back for its history (newest first, at most 10,000 events).
    const reach = (req.kinds.length ? 20 : 1) * (req.involving ? 50 : 1);
    const res = await this.etcdRead(() => this.client.getAll().prefix(this.keys.events).sort('Key', 'Descend').limit(history > 0 ? Math.min(history * reach, 10_000) : 1).exec());
    const past = res.kvs.map((kv) => JSON.parse(kv.value.toString()) as StoredEvent).filter(match).slice(0, Math.max(history, 0)).reverse();
    for (const e of past) call.write(toProtoEvent(e));
    if (!req.follow) return;
    const watcher = await this.client.watch().prefix(this.keys.events).startRevision(String(Number(res.header.revision) + 1)).create();
    await new Promise<void>((resolve, reject) => {
      const stop = () => { void watcher.cancel(); resolve(); };
      watcher.on('put', (kv) => {
        const e = JSON.parse(kv.value.toString()) as StoredEvent;
        if (match(e)) call.write(toProtoEvent(e));
      });
      watcher.on('error', (err) => { void watcher.cancel(); reject(new UnavailableError(`event watch failed: ${err.message}`)); });
      call.on('cancelled', stop);
      call.on('close', stop);
    });
  }
}

function validateNodeId(id: string): void {
  if (!id) throw InvalidArgumentError.field('nodeId', 'is required');
  if (!NODE_ID_RE.test(id)) throw InvalidArgumentError.field('nodeId', `must match ${NODE_ID_RE.source}`);
}

/** An event about an app, node or instance (WatchEventsRequest.involving). */
function involves(e: StoredEvent, name: string): boolean {
  return e.subject === name || e.subject.startsWith(`${name}/`) || e.fields?.app === name || e.fields?.node === name;
}

function toProtoEvent(e: StoredEvent): Event {
  return { id: e.id, atMs: e.atMs, kind: e.kind, subject: e.subject, message: e.message, fields: e.fields, coordinatorId: e.coordinatorId, leaderTerm: e.leaderTerm };
}

const JOB_STATE_NUMBER: Record<string, number> = Object.fromEntries(
  ((tesseraPackageDefinition()['tessera.v1.JobState'] as unknown as { type: { value: { name: string; number: number }[] } }).type.value).map((v) => [v.name, v.number]),
);

/**
 * A submission's answer in the view it asked for: BASIC leaves out the path and the steps.
 * The state goes as its number, so the answer encodes without a conversion pass (common/proto.ts).
 */
function inView(job: Job, view: JobView | undefined): Job {
  const state = (typeof job.state === 'string' ? JOB_STATE_NUMBER[job.state] ?? job.state : job.state) as Job['state'];
  if (view === 'JOB_VIEW_BASIC') return { ...job, state, path: [], steps: [] };
  return { ...job, state };
}

/** A direct job id's lease prefix (everything before its last "."). */
function leasePrefix(id: string): string {
  const dot = id.lastIndexOf('.');
  return dot > 0 ? id.slice(0, dot) : '';
}

/**
 * A list call's next_page_token: where its page ended (the last item's sort key) and the filter
 * it was listed with, which the next page keeps (ListNodes, ListInstances, ListComponents).
 */
function encodePageToken(after: unknown, filter: string): string {
  return Buffer.from(JSON.stringify({ after, f: filter })).toString('base64url');
}

function decodePageToken<T>(token: string, filter: string, rpc: string, valid: (after: unknown) => after is T): T {
  let v: { after?: unknown; f?: unknown };
  try {
    v = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as typeof v;
  } catch {
    v = {};
  }
  if (typeof v !== 'object' || v === null || typeof v.f !== 'string' || !valid(v.after)) {
    throw InvalidArgumentError.field('pageToken', `is not a token ${rpc} gave (pass next_page_token as it came)`);
  }
  if (v.f !== filter) throw InvalidArgumentError.field('pageToken', `was given for ${v.f}, not ${filter}: a page goes on with the filter of the first`);
  return v.after as T;
}

/** The limit of a list call: 0 (every item) up to 10,000. */
function pageLimit(limit: number | undefined, what: string): number {
  const n = Number(limit ?? 0);
  if (!Number.isInteger(n) || n < 0 || n > 10_000) throw InvalidArgumentError.field('limit', `must be 0..10000 (0: every ${what})`);
  return n;
}

/** An instance's place in ListInstances' order: [app, component, slot, created at, id]. */
type InstanceCursor = [string, string, number, number, string];

function instanceCursor(i: { app?: string; component?: string; slot?: number; createdAtMs?: number | string | { toString(): string }; id?: string }): InstanceCursor {
  return [i.app ?? '', i.component ?? '', Number(i.slot ?? 0), Number(i.createdAtMs ?? 0), i.id ?? ''];
}

function compareInstanceCursor(a: InstanceCursor, b: InstanceCursor): number {
  return a[0].localeCompare(b[0]) || a[1].localeCompare(b[1]) || a[2] - b[2] || a[3] - b[3] || a[4].localeCompare(b[4]);
}
