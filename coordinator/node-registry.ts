// The leader's view of nodes. Registration (what the agent said in its hello) and the node
// state are durable in etcd; liveness (last report, usage, which stream) lives in memory. A
// node's record is written again (batched, each statusPersistIntervalMs) when the stream it is
// attached on or its number of instances changed, and otherwise its usage and last-seen time once
// a statusRefreshMs (a minute): before session 28 every node's record was written at every
// report, ~0.7 MB a second of etcd history at 5,000 nodes. Followers ask the leader for a node's
// live figures and read the records when it does not answer. State changes are committed with
// their events.
import { steadyNow } from '../common/clock';
import { Serial } from '../common/serial';
import type { Etcd3 } from 'etcd3';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../common/errors';
import { failpoint } from '../common/failpoints';
import type { Logger } from '../common/logger';
import type { AgentHello__Output } from '../common/generated/tessera/v1/AgentHello';
import type { AgentReport__Output } from '../common/generated/tessera/v1/AgentReport';
import type { HostUsage__Output } from '../common/generated/tessera/v1/HostUsage';
import type { Node } from '../common/generated/tessera/v1/Node';
import type { InstanceStatus__Output } from '../common/generated/tessera/v1/InstanceStatus';
import type { NodeCondition__Output } from '../common/generated/tessera/v1/NodeCondition';
import type { Keys } from './keys';
import { decideNodeState, NodeState, transition } from './node-state';
import { attributed, EventDraft, Store, WriteUnit } from './store';

/** The longest drain deadline (DrainNodeRequest.deadline_ms): 7 days. */
export const MAX_DRAIN_DEADLINE_MS = 7 * 86_400_000;

/** What etcd holds for a node. */
export interface NodeRecord {
  id: string;
  hostname: string;
  labels: Record<string, string>;
  capacity: { cpuMillis: number; memoryMib: number; diskMib: number };
  agentVersion: string;
  endpoint: string;
  state: NodeState;
  stateReason: string;
  stateChangedAtMs: number;
  drain: boolean;
  drainReason: string;
  /** A drain's deadline (DrainNodeRequest.deadline_ms): past it, the instances still here are stopped. */
  drainDeadlineAtMs?: number;
  registeredAtMs: number;
  lastSeenMs: number;
  usage?: HostUsage__Output;
  connectedTo: string;
  instanceCount: number;
  portRange?: { start: number; end: number };
  /** The conditions that hold on the node (from its agent's reports; see NodeCondition) by type: no new instances here while any does. */
  conditions?: Record<string, { message: string; sinceMs: number }>;
  /** Set by CordonNode: no new instances here; those it runs stay. */
  cordon?: { reason: string; atMs: number };
  /** The uid of the agent that holds this node id (AgentHello.agent_uid); none from agents before it. */
  agentUid?: string;
  /** How far the host's system clock is ahead of the leader's (ms), from its agent's reports (see clockOffset). */
  clockOffsetMs?: number;
  /** The follower relaying the agent's stream (AgentHello.relayed_by), as of its last hello; none when direct. */
  relayedBy?: string;
}

/** A host's clock this far from the leader's is worth a warning (an event and the log); it clears under half. */
export const CLOCK_SKEW_WARN_MS = 5_000;

/**
 * A host's clock offset from the leader's, from the agent's last reports: each report's send
 * time on the agent's clock minus its arrival on the leader's is the offset less the report's
 * transit time, so the largest of the last five is the closest (as NTP keeps the sample with the
 * least delay).
 */
export function clockOffset(samples: number[]): number | undefined {
  return samples.length ? Math.max(...samples) : undefined;
}

interface PendingHello {
  h: AgentHello__Output;
  streamId: string;
  nowMs: number;
  resolve: (r: NodeRecord) => void;
  reject: (err: unknown) => void;
}

interface Liveness {
  lastSeenMs: number;
  /** The leader's id of the stream the agent's hello came on (not the agent's own session id: one agent process may hold two streams in turn). */
  streamId: string;
  connectedTo: string;
  usage?: HostUsage__Output;
  instances: InstanceStatus__Output[];
  /** Each instance's task report time: [the agent's, this leader's] (see onLeaderClock). */
  taskTimes?: Map<string, [number, number]>;
  /** The agent's last reports' send times less their arrival, on the two system clocks (see clockOffset). */
  clockSamples?: number[];
  /** Whether this leader has warned that the node's clock is off (until it is back under half the threshold). */
  clockWarned?: boolean;
}

/**
 * Puts the agent's task reports on this leader's clock, in place. An agent stamps each report
 * with its own clock (reported_at_ms), which may be off by any amount: a host whose clock ran
 * 30 s behind made every report read as 30 s old, past the scaler's 15 s freshness, and a
 * queue-depth policy saw nothing. A report whose agent time changed since the last report is
 * fresh now (within a report interval); one that did not change keeps the time it was first seen
 * (a component that stopped reporting grows stale). After a change of leader, a report that was
 * stale already reads as fresh for the freshness window.
 */
export function onLeaderClock(prev: Map<string, [number, number]> | undefined, instances: InstanceStatus__Output[], nowMs: number): Map<string, [number, number]> {
  const next = new Map<string, [number, number]>();
  for (const i of instances) {
    const t = i.task;
    const agentAt = Number(t?.reportedAtMs ?? 0);
    if (!t || !agentAt) continue;
    const seen = prev?.get(i.instanceId);
    const at = seen && seen[0] === agentAt ? seen[1] : nowMs;
    next.set(i.instanceId, [agentAt, at]);
    t.reportedAtMs = at;
  }
  return next;
}

/**
 * Up to a quarter of the refresh interval, the same for a node each time: the nodes of a fleet
 * that attached together (a new leader, a rack back) are refreshed at their own moments, not in
 * one burst of transactions each interval.
 */
export function refreshJitter(nodeId: string, refreshMs: number): number {
  let h = 2166136261;
  for (let i = 0; i < nodeId.length; i++) h = Math.imul(h ^ nodeId.charCodeAt(i), 16777619);
  return (h >>> 0) % Math.max(1, Math.floor(refreshMs / 4));
}

export function recordToProto(r: NodeRecord): Node {
  return {
    id: r.id,
    hostname: r.hostname,
    labels: r.labels,
    capacity: r.capacity,
    agentVersion: r.agentVersion,
    state: `NODE_STATE_${r.state}`,
    stateReason: r.stateReason,
    stateChangedAtMs: r.stateChangedAtMs,
    drain: r.drain,
    drainDeadlineAtMs: r.drain ? r.drainDeadlineAtMs ?? 0 : 0,
    registeredAtMs: r.registeredAtMs,
    lastSeenMs: r.lastSeenMs,
    usage: r.usage,
    connectedTo: r.connectedTo,
    instanceCount: r.instanceCount,
    endpoint: r.endpoint,
    portRange: r.portRange,
    conditions: Object.entries(r.conditions ?? {}).map(([type, c]) => ({ type, message: c.message, sinceMs: c.sinceMs })),
    cordoned: !!r.cordon,
    cordonReason: r.cordon?.reason ?? '',
    clockOffsetMs: Math.round(r.clockOffsetMs ?? 0),
    relayedBy: r.relayedBy ?? '',
  };
}

/** Reads node records straight from etcd (used by followers and at leader start). */
export async function readNodes(client: Etcd3, keys: Keys): Promise<NodeRecord[]> {
  const res = await client.getAll().prefix(keys.nodes).strings();
  return Object.values(res).map((v) => JSON.parse(v) as NodeRecord).sort((a, b) => a.id.localeCompare(b.id));
}

export async function readNode(client: Etcd3, keys: Keys, id: string): Promise<NodeRecord> {
  const v = await client.get(keys.node(id)).string();
  if (v === null) throw new NotFoundError('node', id);
  return JSON.parse(v) as NodeRecord;
}

export const DEFAULT_PORT_RANGE = { start: 20000, end: 32000 };

/** A disruption needs at least this many nodes DOWN (Kubernetes: more than two NotReady in a zone). */
export const DISRUPTION_MIN_DOWN = 3;

/** The label that names a node's zone, unless --zone-label says another (nodes without it: zone ''). */
export const DEFAULT_ZONE_LABEL = 'zone';

export interface ZoneCount {
  /** The value of the node's zone label ('' for nodes without it). */
  zone: string;
  /** DOWN, or silent long enough that they are about to be (see silentAfterMs). */
  down: number;
  total: number;
  /** Held only for the failover grace after its disruption ended (see NodeRegistry.disruption). */
  settling?: boolean;
}

export interface Disruption {
  /** Over the held zones. */
  down: number;
  total: number;
  percent: number;
  /** The zones whose DOWN nodes keep their instances. */
  zones: ZoneCount[];
  /** Every held zone is only settling. */
  settling?: boolean;
}

/**
 * Which zones are disrupted: their DOWN nodes' instances stay where they are rather than being
 * replaced on the nodes left. Per zone (by the zone label; a fleet without it is one zone), as
 * Kubernetes' node lifecycle controller judges each zone (--unhealthy-zone-threshold 0.55):
 * - a zone with more than `percent` of its nodes DOWN or SILENT, at least DISRUPTION_MIN_DOWN of
 *   them, and some still up is partly disrupted: so many lost at once is more likely the leader
 *   (or its network) cut off from them than that many hosts dead; replacing all their instances
 *   on the few left would crowd those out, and restart every one once the partition heals;
 * - a zone with every node DOWN is held only when every zone is (and DISRUPTION_MIN_DOWN nodes
 *   are down in all): then the leader is the one cut off. A whole zone lost while others answer
 *   is a zone outage, and its instances move to the zones left, as there.
 * Nodes long dead count too, as there: remove them (`tessera node remove`, or node GC after
 * --node-gc-threshold-ms).
 */
export function fleetDisruption(nodes: Iterable<{ state: string; zone?: string }>, percent: number): Disruption | undefined {
  if (percent <= 0) return undefined;
  const zones = new Map<string, ZoneCount>();
  for (const n of nodes) {
    const zone = n.zone ?? '';
    let z = zones.get(zone);
    if (!z) zones.set(zone, (z = { zone, down: 0, total: 0 }));
    z.total++;
    if (n.state === 'DOWN' || n.state === 'SILENT') z.down++;
  }
  const all = [...zones.values()].sort((a, b) => a.zone.localeCompare(b.zone));
  const down = all.reduce((t, z) => t + z.down, 0);
  const held = all.length && all.every((z) => z.down === z.total) && down >= DISRUPTION_MIN_DOWN
    ? all
    : all.filter((z) => z.down < z.total && z.down >= DISRUPTION_MIN_DOWN && z.down * 100 > percent * z.total);
  return held.length ? summed(held, percent) : undefined;
}

function summed(zones: ZoneCount[], percent: number): Disruption {
  return {
    down: zones.reduce((t, z) => t + z.down, 0), total: zones.reduce((t, z) => t + z.total, 0), percent, zones,
    ...(zones.every((z) => z.settling) ? { settling: true } : {}),
  };
}

/** A node's zone: the value of its zone label, '' without one. */
export function zoneOf(r: { labels?: Record<string, string> }, label: string): string {
  return (label && r.labels?.[label]) || '';
}

/**
 * How long a node not yet DOWN must have been silent to count as lost in a disruption. Nodes
 * that die together go DOWN over one report interval (each last reported at its own moment), a
 * tick or a few apart: counting only the DOWN ones, the first few were below the threshold and
 * had their instances replaced before the rest made it a disruption (seen: 3 of 6). When the
 * first of them reaches the heartbeat timeout, the others have been silent for at least the
 * timeout less one interval; a live node is silent for at most about one interval.
 */
export function silentAfterMs(heartbeatTimeoutMs: number, reportIntervalMs: number): number {
  return Math.max(reportIntervalMs, heartbeatTimeoutMs - 1.5 * reportIntervalMs);
}

export function disruptionText(d: Disruption): string {
  const counts = d.zones.map((z) => `${z.down} of ${z.total} nodes${z.zone ? ` in zone ${z.zone}` : ''}${z.settling && !d.settling ? ' (settling)' : ''}`).join(', ');
  return d.settling
    ? `${counts} are still DOWN or silent after a disruption: their instances are not replaced for the failover grace, while the rest of the fleet attaches again`
    : `${counts} are DOWN or silent (over ${d.percent}%): their instances are not replaced elsewhere while so many are (a partition between the leader and the fleet looks like this)`;
}

export class NodeRegistry {
  private records = new Map<string, NodeRecord>();
  private live = new Map<string, Liveness>();
  private graceUntilMs = 0;
  private ticking = false;

  constructor(
    private readonly store: Store,
    private readonly keys: Keys,
    private readonly opts: { heartbeatTimeoutMs: number; failoverGraceMs: number; coordinatorId: string; disruptionPercent?: number; zoneLabel?: string; reportIntervalMs?: number; statusRefreshMs?: number },
    private readonly log: Logger,
  ) {}

  /** Called when this coordinator becomes leader: load every node and start the grace period. */
  async load(nowMs = steadyNow()): Promise<void> {
    this.records = new Map((await readNodes(this.store.client, this.keys)).map((r) => [r.id, r]));
    this.live.clear();
    this.refusedAgents.clear();
    this.disruptionSaid.clear();
    this.disruptedAtMs.clear();
    this.graceUntilMs = nowMs + this.opts.failoverGraceMs;
    this.log.info({ nodes: this.records.size, graceMs: this.opts.failoverGraceMs }, 'node registry loaded');
  }

  /** When this leader last found each zone disrupted (steady ms). */
  private disruptedAtMs = new Map<string, number>();

  /**
   * The disruption now (see fleetDisruption), or undefined. Once a zone's no longer holds, the
   * zone is kept for the failover grace (`settling`): a partition heals node by node, as agents
   * attach again each after its own backoff, and the first few back ended it while the rest were
   * still DOWN, whose instances were then replaced moments before they came back too (seen: 3 of 6).
   */
  disruption(nowMs = steadyNow()): Disruption | undefined {
    const silentMs = silentAfterMs(this.opts.heartbeatTimeoutMs, this.opts.reportIntervalMs ?? this.opts.heartbeatTimeoutMs / 2);
    const label = this.opts.zoneLabel ?? DEFAULT_ZONE_LABEL;
    const nodes = [...this.records.values()].map((r) => {
      // Only nodes attached to this leader since it leads: the others are re-attaching (its grace).
      const l = this.live.get(r.id);
      return { state: r.state !== 'DOWN' && l && nowMs - l.lastSeenMs >= silentMs ? 'SILENT' : r.state, zone: zoneOf(r, label) };
    });
    const percent = this.opts.disruptionPercent ?? 0;
    const d = fleetDisruption(nodes, percent);
    for (const z of d?.zones ?? []) this.disruptedAtMs.set(z.zone, nowMs);
    const held = new Map((d?.zones ?? []).map((z) => [z.zone, z]));
    for (const [zone, at] of this.disruptedAtMs) {
      if (held.has(zone)) continue;
      if (nowMs - at >= this.opts.failoverGraceMs) {
        this.disruptedAtMs.delete(zone);
        continue;
      }
      const mine = nodes.filter((n) => n.zone === zone);
      const down = mine.filter((n) => n.state === 'DOWN' || n.state === 'SILENT').length;
      if (down) held.set(zone, { zone, down, total: mine.length, settling: true });
    }
    return held.size ? summed([...held.values()].sort((a, b) => a.zone.localeCompare(b.zone)), percent) : undefined;
  }

  /** The zones whose DOWN nodes keep their instances now (empty: none). */
  heldZones(nowMs = steadyNow()): Set<string> {
    return new Set(this.disruption(nowMs)?.zones.map((z) => z.zone) ?? []);
  }

  /** A node's zone, by this leader's --zone-label. */
  zoneOf(r: { labels?: Record<string, string> }): string {
    return zoneOf(r, this.opts.zoneLabel ?? DEFAULT_ZONE_LABEL);
  }

  /** The zones this leader last recorded a disruption event for. */
  private disruptionSaid = new Set<string>();

  /** One event when a zone (or the fleet, without zones) is found disrupted, and one when it is not any more. */
  private async noteDisruption(nowMs: number): Promise<void> {
    const d = this.disruption(nowMs);
    const now = new Map((d?.zones ?? []).map((z) => [z.zone, z]));
    const events: EventDraft[] = [];
    const percent = this.opts.disruptionPercent ?? 0;
    for (const [zone, z] of now) {
      if (this.disruptionSaid.has(zone)) continue;
      const message = `${zone ? `zone ${zone}` : 'fleet'} disrupted: ${disruptionText(summed([z], percent))}`;
      events.push({ kind: 'fleet.disrupted', subject: 'fleet', message, fields: { zone, down: String(z.down), total: String(z.total), percent: String(percent) } });
    }
    for (const zone of this.disruptionSaid) {
      if (now.has(zone)) continue;
      events.push({ kind: 'fleet.disruption_over', subject: 'fleet', message: `${zone ? `zone ${zone}` : 'fleet'} disruption over: instances of DOWN nodes${zone ? ' there' : ''} are replaced again`, fields: { zone } });
    }
    if (!events.length) return;
    await this.store.commit([], events);
    this.disruptionSaid = new Set(now.keys());
    for (const e of events) if (e.kind === 'fleet.disrupted') this.log.error({ zone: e.fields?.zone, down: Number(e.fields?.down), total: Number(e.fields?.total) }, e.message);
  }

  /**
   * The nodes in id order with what they last reported: those `keep` keeps, the first `limit` of
   * them (0: all). Filtered and cut before the live figures are added, so a page of a large fleet
   * costs the page, not the fleet.
   */
  list(keep?: (r: NodeRecord) => boolean, limit = 0): NodeRecord[] {
    let rs = [...this.records.values()];
    if (keep) rs = rs.filter(keep);
    rs.sort((a, b) => a.id.localeCompare(b.id));
    if (limit) rs = rs.slice(0, limit);
    return rs.map((r) => this.withLive(r));
  }

  /** A node's state, or undefined when it is not (or no longer) in the list: cheap, for watches. */
  stateOf(id: string): NodeRecord['state'] | undefined {
    return this.records.get(id)?.state;
  }

  get(id: string): NodeRecord {
    const r = this.records.get(id);
    if (!r) throw new NotFoundError('node', id);
    return this.withLive(r);
  }

  private withLive(r: NodeRecord): NodeRecord {
    const l = this.live.get(r.id);
    if (!l) return { ...r, connectedTo: '' };
    const offset = clockOffset(l.clockSamples ?? []);
    return { ...r, lastSeenMs: l.lastSeenMs, usage: l.usage ?? r.usage, connectedTo: l.connectedTo, instanceCount: l.instances.length, ...(offset !== undefined ? { clockOffsetMs: offset } : {}) };
  }

  /** Nodes whose new labels are being written (a report each few seconds would queue them again). */
  private relabeling = new Map<string, string>();
  /** Nodes whose conditions (their types, sorted) are being written. */
  private conditionsWriting = new Map<string, string>();
  /** Told when a node's conditions changed (the leader reconciles: placements may now fit, or not). */
  onConditionsChange?: (nodeId: string) => void;
  /**
   * Node records are written by hello, relabel, drain, tick and persistStatus, each reading the record and
   * storing its copy after the write's await: they run one at a time, or a status write that read
   * a node before a drain stored its stale copy over it and the acknowledged drain was lost (seen
   * in CI: a drain through a follower answered DRAINING and the leader kept the node READY).
   */
  private writes = new Serial();

  /** Hellos waiting for the next batch (see hello). */
  private hellos: PendingHello[] = [];

  /**
   * An agent said hello on a stream to this leader: register or refresh it, durably. The hellos
   * that arrive while one batch is being stored go together in the next, in as few transactions
   * as etcd takes: a new leader takes thousands of agents back at once, and one transaction each,
   * in turn, took 5,000 nodes past the failover grace on a slow machine (some went DOWN).
   */
  hello(h: AgentHello__Output, streamId: string, nowMs = steadyNow()): Promise<NodeRecord> {
    return new Promise((resolve, reject) => {
      this.hellos.push({ h, streamId, nowMs, resolve, reject });
      if (this.hellos.length === 1) void this.writes.run(() => this.helloBatch());
    });
  }

  private async helloBatch(): Promise<void> {
    const batch = this.hellos.splice(0);
    const units: WriteUnit<[PendingHello, NodeRecord]>[] = [];
    const ids = new Set<string>();
    for (const p of batch) {
      // A node's second hello in one batch (its agent attached again at once) goes in the next, after the first.
      if (ids.has(p.h.nodeId)) {
        this.hellos.push(p);
        continue;
      }
      ids.add(p.h.nodeId);
      try {
        const { next, events } = this.helloRecord(p.h, p.nowMs);
        units.push({ ops: [{ type: 'put', key: this.keys.node(next.id), value: JSON.stringify(next) }], events, item: [p, next] });
      } catch (err) {
        p.reject(err);
      }
    }
    if (this.hellos.length) void this.writes.run(() => this.helloBatch());
    if (!units.length) return;
    const stored = new Set<PendingHello>();
    try {
      await failpoint('nodeHelloStore');
      await this.store.commitInParts(units, (items) => {
        for (const [p, next] of items) {
          this.records.set(next.id, next);
          this.live.set(next.id, { lastSeenMs: p.nowMs, streamId: p.streamId, connectedTo: this.opts.coordinatorId, instances: p.h.instances, taskTimes: onLeaderClock(undefined, p.h.instances, p.nowMs) });
          stored.add(p);
          p.resolve(next);
        }
      });
    } catch (err) {
      for (const u of units) if (!stored.has(u.item[0])) u.item[0].reject(err);
    }
  }

  /** (node, uid) pairs refused since this leader loaded: one event each, not one per retry. */
  private refusedAgents = new Set<string>();

  /**
   * Whether this hello comes from another agent than the one holding its node id (a second host
   * given the same --node-id, a cloned config): refused while the node is not DOWN, as Nomad
   * refuses a node whose secret id does not match, so the two do not take turns on the node
   * (each hello replacing the other's stream, the leader reading each one's containers as the
   * node's). Once the node is DOWN (its agent silent past the heartbeat timeout) or removed,
   * another agent may take the id over: a host rebuilt under its old name.
   */
  refusal(h: AgentHello__Output, nowMs = steadyNow()): AlreadyExistsError | undefined {
    const prev = this.records.get(h.nodeId);
    if (!prev?.agentUid || !h.agentUid || prev.agentUid === h.agentUid || prev.state === 'DOWN') return undefined;
    const seen = this.live.get(h.nodeId)?.lastSeenMs ?? prev.lastSeenMs;
    const ago = Math.max(0, nowMs - seen) / 1000;
    const key = `${h.nodeId}\0${h.agentUid}`;
    if (!this.refusedAgents.has(key) && this.refusedAgents.size < 10_000) {
      this.refusedAgents.add(key);
      const message = `a second agent (host ${h.hostname}, uid ${h.agentUid.slice(0, 8)}) said hello as node ${h.nodeId}, held by the agent of host ${prev.hostname} (uid ${prev.agentUid.slice(0, 8)}): refused while the node is ${prev.state}`;
      this.log.warn({ node: h.nodeId, hostname: h.hostname, holder: prev.hostname }, message);
      void this.store.commit([], [{ kind: 'node.agent_refused', subject: h.nodeId, message, fields: { hostname: h.hostname, agentUid: h.agentUid, holderHostname: prev.hostname, holderAgentUid: prev.agentUid } }])
        .catch((err) => this.log.warn({ node: h.nodeId, err: (err as Error).message }, 'node.agent_refused event not recorded'));
    }
    return new AlreadyExistsError(`node id ${h.nodeId} is held by another agent (host ${prev.hostname}, uid ${prev.agentUid.slice(0, 8)}, last heard from ${ago.toFixed(1)} s ago) and is ${prev.state}: `
      + `give this agent its own --node-id, or stop the other agent; once the node is DOWN this one may take it over (or \`tessera node remove ${h.nodeId}\` then)`);
  }

  /** A hello's node record and events (refused: another agent holds the node id). */
  private helloRecord(h: AgentHello__Output, nowMs: number): { next: NodeRecord; events: EventDraft[] } {
    const refused = this.refusal(h, nowMs);
    if (refused) throw refused;
    const prev = this.records.get(h.nodeId);
    const capacity = { cpuMillis: h.capacity?.cpuMillis ?? 0, memoryMib: h.capacity?.memoryMib ?? 0, diskMib: h.capacity?.diskMib ?? 0 };
    const base: NodeRecord = prev ?? {
      id: h.nodeId, hostname: h.hostname, labels: {}, capacity, agentVersion: '', endpoint: '',
      state: 'READY', stateReason: 'registered', stateChangedAtMs: nowMs, drain: false, drainReason: '',
      registeredAtMs: nowMs, lastSeenMs: nowMs, connectedTo: this.opts.coordinatorId, instanceCount: 0,
    };
    const decided = decideNodeState({ current: prev ? prev.state : 'NEW', drain: base.drain, lastSeenMs: nowMs, nowMs, heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs, graceUntilMs: this.graceUntilMs });
    const next: NodeRecord = {
      ...base, hostname: h.hostname, labels: { ...h.labels }, capacity, agentVersion: h.agentVersion, endpoint: h.endpoint,
      portRange: h.portRange && h.portRange.end >= h.portRange.start && h.portRange.start > 0 ? { start: h.portRange.start, end: h.portRange.end } : DEFAULT_PORT_RANGE,
      lastSeenMs: nowMs, connectedTo: this.opts.coordinatorId, instanceCount: h.instances.length,
    };
    if (h.agentUid) next.agentUid = h.agentUid;
    if (h.relayedBy) next.relayedBy = h.relayedBy;
    else delete next.relayedBy;
    const events: EventDraft[] = [];
    if (!prev) {
      events.push({ kind: 'node.registered', subject: h.nodeId, message: `node ${h.nodeId} (${h.hostname}) registered`, fields: { hostname: h.hostname, agentVersion: h.agentVersion } });
    } else if (prev.agentUid && h.agentUid && prev.agentUid !== h.agentUid) {
      // Logged by the store once stored (a warn here came before a commit that may be refused).
      const message = `node ${h.nodeId}: its agent changed (host ${prev.hostname}, uid ${prev.agentUid.slice(0, 8)} -> host ${h.hostname}, uid ${h.agentUid.slice(0, 8)}) while it was ${prev.state}`;
      events.push({ kind: 'node.agent_replaced', subject: h.nodeId, message, fields: { from: prev.agentUid, to: h.agentUid, fromHostname: prev.hostname, toHostname: h.hostname } });
    }
    // A node that reaches the leader only through a follower (a partition), and back: in the
    // event history too, not only in the log and the node's record while it is attached.
    const wasRelayedBy = prev?.relayedBy ?? '';
    if (wasRelayedBy !== (h.relayedBy ?? '')) {
      events.push(h.relayedBy
        ? { kind: 'node.relayed', subject: h.nodeId, message: `node ${h.nodeId} reaches the leader only through coordinator ${h.relayedBy} (its network to ${this.opts.coordinatorId} is cut?)`, fields: { relayedBy: h.relayedBy } }
        : { kind: 'node.relayed_over', subject: h.nodeId, message: `node ${h.nodeId} reaches the leader itself again (it was relayed by coordinator ${wasRelayedBy})`, fields: { relayedBy: wasRelayedBy } });
    }
    if (!prev || prev.state !== decided.state) {
      next.state = transition(prev ? prev.state : 'NEW', decided.state);
      next.stateReason = decided.reason;
      next.stateChangedAtMs = nowMs;
      if (prev) events.push(this.stateEvent(next, prev.state));
    }
    return { next, events };
  }

  report(nodeId: string, r: AgentReport__Output, nowMs = steadyNow()): void {
    const l = this.live.get(nodeId);
    if (!l) return;
    l.lastSeenMs = nowMs;
    if (r.host) l.usage = r.host;
    l.taskTimes = onLeaderClock(l.taskTimes, r.instances, nowMs);
    l.instances = r.instances;
    if (Number(r.sentAtMs) > 0) this.clockSample(nodeId, l, Number(r.sentAtMs) - Date.now());
    if (r.labels) this.relabel(nodeId, r.labels.values ?? {});
    this.conditionsReported(nodeId, r.conditions ?? []);
  }

  /** One more clock sample from a report; an event when the node's clock is found off, and when it is right again. */
  private clockSample(nodeId: string, l: Liveness, sampleMs: number): void {
    const samples = (l.clockSamples ??= []);
    samples.push(sampleMs);
    if (samples.length > 5) samples.shift();
    const offset = clockOffset(samples)!;
    const off = Math.abs(offset) >= CLOCK_SKEW_WARN_MS;
    if (off === !!l.clockWarned || (!off && Math.abs(offset) >= CLOCK_SKEW_WARN_MS / 2) || samples.length < 3) return;
    l.clockWarned = off;
    const how = `${(Math.abs(offset) / 1000).toFixed(1)} s ${offset > 0 ? 'ahead of' : 'behind'} the leader's`;
    const event: EventDraft = off
      ? { kind: 'node.clock_skew', subject: nodeId, message: `node ${nodeId}: its clock is ${how} (is NTP running there? if every node is off alike, the leader's clock is): Tessera does not depend on it, but logs and times it stamps are misdated`, fields: { offsetMs: String(Math.round(offset)) } }
      : { kind: 'node.clock_skew_over', subject: nodeId, message: `node ${nodeId}: its clock is within ${(Math.abs(offset) / 1000).toFixed(1)} s of the leader's again`, fields: { offsetMs: String(Math.round(offset)) } };
    void this.store.commit([], [event]).catch((err) => this.log.warn({ node: nodeId, err: (err as Error).message }, `${event.kind} event not recorded`));
  }

  /**
   * Conditions that began or ended on a node (its agent sends the whole set in every report):
   * recorded durably with an event each (node.runtime_down and node.runtime_up, node.disk_pressure
   * and node.disk_pressure_over), once per change; a new leader compares with the record. While
   * any holds the node takes no new instances (the placer names it as the reason).
   */
  private conditionsReported(nodeId: string, reported: NodeCondition__Output[]): void {
    const rec = this.records.get(nodeId);
    if (!rec) return;
    const now = new Map(reported.filter((c) => c.type).map((c) => [c.type, c]));
    const had = rec.conditions ?? {};
    const key = [...now.keys()].sort().join(',');
    if (key === Object.keys(had).sort().join(',') || this.conditionsWriting.get(nodeId) === key) return;
    this.conditionsWriting.set(nodeId, key);
    void this.writes.run(async () => {
      const cur = this.records.get(nodeId);
      if (!cur) return;
      const before = cur.conditions ?? {};
      const after: NonNullable<NodeRecord['conditions']> = {};
      const began: EventDraft[] = [];
      const ended: EventDraft[] = [];
      for (const [type, c] of now) {
        // Since when by this leader's clock (an agent's may be off: the runtime-down grace counts from this).
        after[type] = before[type] ?? { message: c.message || type, sinceMs: steadyNow() };
        if (!before[type]) began.push(conditionEvent(nodeId, type, true, after[type]));
      }
      for (const [type, c] of Object.entries(before)) if (!now.has(type)) ended.push(conditionEvent(nodeId, type, false, c));
      const events = [...began, ...ended];
      if (!events.length) return;
      const next: NodeRecord = { ...cur };
      if (Object.keys(after).length) next.conditions = after;
      else delete next.conditions;
      await this.store.commit([{ type: 'put', key: this.keys.node(nodeId), value: JSON.stringify(next) }], events);
      this.records.set(nodeId, next);
      for (const e of began) this.log.warn({ node: nodeId }, e.message);
      for (const e of ended) this.log.info({ node: nodeId }, e.message);
      this.onConditionsChange?.(nodeId);
    }).catch((err) => this.log.warn({ node: nodeId, err: (err as Error).message }, 'node conditions not recorded; the next report tries again'))
      .finally(() => this.conditionsWriting.delete(nodeId));
  }

  /**
   * New labels from the agent (its settings reloaded): recorded durably with an event, once
   * (reports carry them until the next hello). Placements from then on see them; instances
   * placed already stay (as Kubernetes' IgnoredDuringExecution and Nomad's node metadata).
   */
  private relabel(nodeId: string, labels: Record<string, string>): void {
    const same = (a: Record<string, string>) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(labels).sort());
    const rec = this.records.get(nodeId);
    if (!rec || same(rec.labels) || this.relabeling.get(nodeId) === JSON.stringify(labels)) return;
    this.relabeling.set(nodeId, JSON.stringify(labels));
    void this.writes.run(async () => {
      const cur = this.records.get(nodeId);
      if (!cur || same(cur.labels)) return;
      const show = (x: Record<string, string>) => Object.entries(x).map(([k, v]) => `${k}=${v}`).sort().join(',') || '(none)';
      const next: NodeRecord = { ...cur, labels: { ...labels } };
      await this.store.commit([{ type: 'put', key: this.keys.node(nodeId), value: JSON.stringify(next) }], [
        { kind: 'node.labels_changed', subject: nodeId, message: `labels of node ${nodeId}: ${show(cur.labels)} -> ${show(labels)}`, fields: { from: show(cur.labels), to: show(labels) } },
      ]);
      this.records.set(nodeId, next);
      this.log.info({ node: nodeId, labels }, 'node labels changed');
    }).catch((err) => this.log.warn({ node: nodeId, err: (err as Error).message }, 'node labels not recorded; the next report tries again'))
      .finally(() => this.relabeling.delete(nodeId));
  }

  /** Any message from the agent counts as a heartbeat. */
  touch(nodeId: string, nowMs = steadyNow()): void {
    const l = this.live.get(nodeId);
    if (l) l.lastSeenMs = nowMs;
  }

  /** The agent's stream closed. Liveness keeps its last-seen time; the timeout decides DOWN. */
  disconnected(nodeId: string, streamId: string): void {
    const l = this.live.get(nodeId);
    if (l && l.streamId === streamId) l.connectedTo = '';
  }

  /** What the agent last said it runs (hello, then every report). */
  observed(nodeId: string): InstanceStatus__Output[] {
    return this.live.get(nodeId)?.instances ?? [];
  }

  /** Whether the node's agent has said what it runs to this leader (hello or a report) since it loaded. */
  reported(nodeId: string): boolean {
    return this.live.has(nodeId);
  }

  /** Records of all nodes, as known now (state, capacity, labels). */
  allRecords(): IterableIterator<NodeRecord> {
    return this.records.values();
  }

  /** Whether the node is registered (false once removed). */
  known(nodeId: string): boolean {
    return this.records.has(nodeId);
  }

  isConnected(nodeId: string): boolean {
    return !!this.live.get(nodeId)?.connectedTo;
  }

  /** CordonNode: no new instances on the node (undo: placements may go there again); what it runs stays. Recorded with an event when it changes. */
  cordon(nodeId: string, undo: boolean, reason: string, nowMs = steadyNow(), by = ''): Promise<NodeRecord> {
    return this.writes.run(async () => {
      const prev = this.records.get(nodeId);
      if (!prev) throw new NotFoundError('node', nodeId);
      const why = reason || 'requested by operator';
      if (undo ? !prev.cordon : prev.cordon?.reason === why) return this.withLive(prev);
      const next: NodeRecord = { ...prev };
      if (undo) delete next.cordon;
      else next.cordon = { reason: why, atMs: nowMs };
      await this.store.commit([{ type: 'put', key: this.keys.node(nodeId), value: JSON.stringify(next) }], [attributed(undo
        ? { kind: 'node.uncordoned', subject: nodeId, message: `node ${nodeId} uncordoned: new instances may be placed there` }
        : { kind: 'node.cordoned', subject: nodeId, message: `node ${nodeId} cordoned (${why}): no new instances are placed there; those it runs stay`, fields: { reason: why } }, by)]);
      this.records.set(nodeId, next);
      return this.withLive(next);
    });
  }

  drain(nodeId: string, undo: boolean, reason: string, nowMs = steadyNow(), by = '', deadlineMs = 0): Promise<NodeRecord> {
    if (!Number.isInteger(deadlineMs) || deadlineMs < 0 || deadlineMs > MAX_DRAIN_DEADLINE_MS) {
      return Promise.reject(InvalidArgumentError.field('deadlineMs', `must be a whole number of ms from 0 (none) to ${MAX_DRAIN_DEADLINE_MS} (7 days), got ${deadlineMs}`));
    }
    if (undo && deadlineMs) return Promise.reject(InvalidArgumentError.field('deadlineMs', 'is for a drain, not for undoing one'));
    return this.writes.run(() => this.drainNow(nodeId, undo, reason, nowMs, by, deadlineMs));
  }

  private async drainNow(nodeId: string, undo: boolean, reason: string, nowMs: number, by: string, deadlineMs: number): Promise<NodeRecord> {
    const prev = this.records.get(nodeId);
    if (!prev) throw new NotFoundError('node', nodeId);
    const { drainDeadlineAtMs: _was, ...rest } = prev;
    const next: NodeRecord = { ...rest, drain: !undo, drainReason: undo ? '' : reason || 'requested by operator', ...(!undo && deadlineMs ? { drainDeadlineAtMs: nowMs + deadlineMs } : {}) };
    const within = deadlineMs ? `; instances still here in ${deadlineMs / 1000} s are stopped then` : '';
    const events: EventDraft[] = [attributed({
      kind: undo ? 'node.eligible' : 'node.drain',
      subject: nodeId,
      message: undo ? `node ${nodeId} is eligible for placement again` : `drain requested for node ${nodeId}: ${next.drainReason}${within}`,
    }, by)];
    if (prev.state !== 'DOWN') {
      const to: NodeState = undo ? 'READY' : 'DRAINING';
      if (to !== prev.state) {
        next.state = transition(prev.state, to);
        next.stateReason = undo ? 'drain lifted' : `drain: ${next.drainReason}`;
        next.stateChangedAtMs = nowMs;
        events.push(this.stateEvent(next, prev.state));
      }
    }
    await this.store.commit([{ type: 'put', key: this.keys.node(nodeId), value: JSON.stringify(next) }], events);
    this.records.set(nodeId, next);
    return this.withLive(next);
  }

  /**
   * Forgets a DOWN node (an operator's `tessera node remove`): its record goes from etcd, with an
   * event. A node that is not DOWN is refused: drain it and stop its agent first. (DOWN is
   * decided by silence, so an agent whose stream the leader still holds may be DOWN: if it
   * speaks again, the gateway closes its stream and it registers anew.)
   */
  remove(nodeId: string, reason: string, nowMs = steadyNow(), by = ''): Promise<NodeRecord> {
    return this.writes.run(async () => {
      const r = this.records.get(nodeId);
      if (!r) throw new NotFoundError('node', nodeId);
      const why = this.unremovable(r);
      if (why) throw new FailedPreconditionError(`node ${nodeId} ${why}: only a DOWN node can be removed (drain it and stop its agent first)`);
      await this.forget([r], reason || 'removed by operator', nowMs, by);
      return this.withLive(r);
    });
  }

  /**
   * Node garbage collection (Nomad's node_gc_threshold): forgets nodes DOWN for longer than
   * thresholdMs, up to 50 a transaction (a delete and an event each: etcd takes 128 operations
   * a transaction); the rest at the next call. Returns how many went.
   */
  collect(thresholdMs: number, nowMs = steadyNow()): Promise<number> {
    if (thresholdMs <= 0) return Promise.resolve(0);
    const due = () => [...this.records.values()].filter((r) => !this.unremovable(r) && nowMs - r.stateChangedAtMs >= thresholdMs);
    if (!due().length) return Promise.resolve(0);
    return this.writes.run(async () => {
      const gone = due().slice(0, 50);
      if (gone.length) await this.forget(gone, `DOWN for more than ${Math.round(thresholdMs / 1000)} s (node garbage collection)`, nowMs);
      return gone.length;
    });
  }

  private unremovable(r: NodeRecord): string | undefined {
    return r.state !== 'DOWN' ? `is ${r.state}` : undefined;
  }

  private async forget(nodes: NodeRecord[], reason: string, nowMs: number, by = ''): Promise<void> {
    await this.store.commit(nodes.map((r) => ({ type: 'delete', key: this.keys.node(r.id) })), nodes.map((r) => attributed({
      kind: 'node.removed', subject: r.id, message: `node ${r.id} (${r.hostname}) removed: ${reason}`,
      fields: { reason, downForS: String(Math.round((nowMs - r.stateChangedAtMs) / 1000)) },
    }, by)));
    for (const r of nodes) {
      this.records.delete(r.id);
      this.live.delete(r.id);
    }
    this.log.info({ nodes: nodes.map((r) => r.id), reason }, 'nodes removed');
  }

  /** Evaluates liveness for every node and commits all state changes in one transaction. */
  tick(nowMs = steadyNow()): Promise<number> {
    if (this.ticking) return Promise.resolve(0);
    return this.writes.run(() => this.tickNow(nowMs));
  }

  private async tickNow(nowMs: number): Promise<number> {
    if (this.ticking) return 0;
    this.ticking = true;
    try {
      const changed: NodeRecord[] = [];
      const events: EventDraft[] = [];
      for (const r of this.records.values()) {
        const l = this.live.get(r.id);
        const d = decideNodeState({ current: r.state, drain: r.drain, lastSeenMs: l?.lastSeenMs ?? 0, nowMs, heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs, graceUntilMs: this.graceUntilMs });
        if (d.state === r.state) continue;
        const next = { ...this.withLive(r), state: transition(r.state, d.state), stateReason: d.reason, stateChangedAtMs: nowMs };
        changed.push(next);
        events.push(this.stateEvent(next, r.state));
      }
      if (!changed.length) {
        await this.noteDisruption(nowMs);
        return 0;
      }
      // In parts: a rack that loses power takes its nodes DOWN in one tick, and one transaction
      // for hundreds of them was refused by etcd at every tick (more than 128 operations), so
      // none ever went DOWN and none of their instances was replaced.
      await this.store.commitInParts(changed.map((r, i) => ({ ops: [{ type: 'put', key: this.keys.node(r.id), value: JSON.stringify(r) }], events: [events[i]], item: r })),
        (stored) => { for (const r of stored) this.records.set(r.id, r); });
      await this.noteDisruption(nowMs);
      return changed.length;
    } finally {
      this.ticking = false;
    }
  }

  /**
   * Writes the records of the nodes whose status changed (attached or detached, another number of
   * instances) and of those whose usage and last-seen time were last written a refresh interval
   * ago and have news, in as few transactions as etcd takes; how many were written.
   */
  persistStatus(nowMs = steadyNow()): Promise<number> {
    return this.writes.run(() => this.persistStatusNow(nowMs));
  }

  private async persistStatusNow(nowMs: number): Promise<number> {
    const refreshMs = this.opts.statusRefreshMs ?? 60_000;
    const units: WriteUnit<NodeRecord>[] = [];
    for (const [id, l] of this.live) {
      const r = this.records.get(id);
      if (!r) continue;
      const changed = r.connectedTo !== l.connectedTo || r.instanceCount !== l.instances.length || (!r.usage && !!l.usage);
      const due = l.lastSeenMs > r.lastSeenMs && nowMs - r.lastSeenMs >= refreshMs - refreshJitter(id, refreshMs);
      if (!changed && !due) continue;
      const next = this.withLive(r);
      units.push({ ops: [{ type: 'put', key: this.keys.node(id), value: JSON.stringify(next) }], item: next });
    }
    if (!units.length) return 0;
    // In parts (etcd takes at most 128 operations a transaction): past that many nodes, one
    // transaction for all of them was refused at every turn.
    await this.store.commitInParts(units, (stored) => {
      for (const r of stored) this.records.set(r.id, r);
    });
    return units.length;
  }

  private stateEvent(r: NodeRecord, from: NodeState): EventDraft {
    return {
      kind: `node.${r.state.toLowerCase()}`,
      subject: r.id,
      message: `node ${r.id}: ${from} -> ${r.state} (${r.stateReason})`,
      fields: { from, to: r.state, reason: r.stateReason },
    };
  }
}

/** Event kinds when a condition begins and when it ends (a type a newer agent reports: the generic pair). */
const CONDITION_KINDS: Record<string, [string, string]> = {
  'runtime-down': ['node.runtime_down', 'node.runtime_up'],
  'disk-pressure': ['node.disk_pressure', 'node.disk_pressure_over'],
  default: ['node.condition', 'node.condition_over'],
};

function conditionEvent(nodeId: string, type: string, begins: boolean, c: { message: string; sinceMs: number }): EventDraft {
  const [on, off] = CONDITION_KINDS[type] ?? CONDITION_KINDS.default;
  const forS = String(Math.round((steadyNow() - c.sinceMs) / 1000));
  return begins
    ? { kind: on, subject: nodeId, message: `node ${nodeId}: ${type}: ${c.message}; no new instances are placed there`, fields: { type, message: c.message } }
    : { kind: off, subject: nodeId, message: `node ${nodeId}: ${type} over after ${forS} s`, fields: { type, forS } };
}
