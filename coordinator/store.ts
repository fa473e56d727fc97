// Fenced writes. Only the leader writes, and every write is one etcd transaction that first
// compares the leader's campaign key create revision: if the key is gone (lease expired, a
// successor elected), etcd refuses the whole transaction and nothing is half-written.
// Events that describe a change are committed in the same transaction as the change.
import { Etcd3, Range } from 'etcd3';
import { FencedError, InvalidArgumentError, NotLeaderError, ResourceExhaustedError, UnavailableError } from '../common/errors';
import { isNoSpace, isTooLarge } from '../common/etcd';
import { failpoint } from '../common/failpoints';
import type { Logger } from '../common/logger';
import type { Keys } from './keys';
import type { Leadership } from './leadership';

/** What a write refused by a full etcd answers (RESOURCE_EXHAUSTED): nothing was written. */
export const NO_SPACE_TEXT = 'etcd is out of space (its NOSPACE alarm is raised: the database reached --quota-backend-bytes) and takes no writes, so nothing was changed: '
  + 'an operator frees space (compact, defragment each member, `etcdctl alarm disarm`: see the README, "etcd out of space"), and writes resume by themselves';

export type Op =
  | { type: 'put'; key: string; value: string; lease?: string }
  | { type: 'delete'; key: string }
  | { type: 'deleteRange'; start: string; end: string };

export interface EventDraft {
  kind: string;
  subject: string;
  message: string;
  fields?: Record<string, string>;
}

/** The event with who made the write (`by`, from an Admin call's token or certificate), when known. */
export function attributed(e: EventDraft, by?: string): EventDraft {
  return by ? { ...e, fields: { ...e.fields, by } } : e;
}

/**
 * etcd refuses a transaction of more than --max-txn-ops operations (128 by default) or a request
 * over --max-request-bytes (1.5 MiB). Writes whose size grows with the fleet (every node's
 * status, the nodes that went DOWN at once, the events of a mass deregistration) are split into
 * transactions under both: at most this many operations (events included) ...
 */
export const MAX_TXN_OPS = 100;
/** ... and about this many bytes of keys and values. */
export const MAX_TXN_BYTES = 1024 * 1024;

/** Writes that must land together (a node's record and its event); parts of a larger write. */
export interface WriteUnit<T> {
  ops: Op[];
  events?: EventDraft[];
  /** What the caller updates once this unit is stored. */
  item: T;
}

/** Units packed into transactions of at most MAX_TXN_OPS operations and about MAX_TXN_BYTES, in order. */
export function packUnits<T>(units: WriteUnit<T>[], maxOps = MAX_TXN_OPS, maxBytes = MAX_TXN_BYTES): WriteUnit<T>[][] {
  const parts: WriteUnit<T>[][] = [];
  let part: WriteUnit<T>[] = [];
  let n = 0;
  let bytes = 0;
  for (const u of units) {
    const un = u.ops.length + (u.events?.length ?? 0);
    const ub = u.ops.reduce((b, op) => b + opBytes(op), 0) + (u.events ?? []).reduce((b, e) => b + 200 + e.message.length + JSON.stringify(e.fields ?? {}).length, 0);
    if (part.length && (n + un > maxOps || bytes + ub > maxBytes)) {
      parts.push(part);
      part = [];
      n = 0;
      bytes = 0;
    }
    part.push(u);
    n += un;
    bytes += ub;
  }
  if (part.length) parts.push(part);
  return parts;
}

function opBytes(op: Op): number {
  return op.type === 'deleteRange' ? op.start.length + op.end.length : op.key.length + (op.type === 'put' ? Buffer.byteLength(op.value) : 0);
}

export interface StoredEvent extends EventDraft {
  id: string;
  atMs: number;
  coordinatorId: string;
  leaderTerm: number;
  fields: Record<string, string>;
}

export class Store {
  private counter = 0;

  constructor(
    readonly client: Etcd3,
    readonly keys: Keys,
    private readonly leadership: Leadership,
    private readonly log: Logger,
    private readonly metrics?: import('../common/metrics').Metrics,
  ) {}

  /** Commits ops and events atomically, fenced on the leader's campaign key. */
  async commit(ops: Op[], events: EventDraft[] = []): Promise<void> {
    const token = this.leadership.fence();
    if (!token) {
      const l = this.leadership.leader;
      throw new NotLeaderError(l?.id, l?.address);
    }
    const all = [...ops, ...events.map((e) => this.eventOp(e, token.term))];
    const builders = all.map((op) => {
      switch (op.type) {
        case 'put': return op.lease ? this.client.put(op.key).value(op.value).lease(op.lease) : this.client.put(op.key).value(op.value);
        case 'delete': return this.client.delete().key(op.key);
        case 'deleteRange': return this.client.delete().range(new Range(op.start, op.end));
      }
    });
    let res;
    const t0 = performance.now();
    try {
      res = await this.client.if(token.key, 'Create', '==', token.createRevision).then(...builders).commit();
    } catch (err) {
      if (isNoSpace(err)) throw new ResourceExhaustedError(NO_SPACE_TEXT);
      if (isTooLarge(err)) {
        const bytes = all.reduce((n, op) => n + opBytes(op), 0);
        throw InvalidArgumentError.field('', `the write is ${bytes.toLocaleString('en-US')} bytes, more than etcd takes in one request (--max-request-bytes, 1.5 MiB by default): nothing was changed (${(err as Error).message})`);
      }
      throw new UnavailableError(`etcd write failed: ${(err as Error).message}`);
    }
    this.metrics?.observe('tessera_fenced_write_seconds', {}, (performance.now() - t0) / 1000);
    if (!res.succeeded) {
      this.metrics?.inc('tessera_fenced_writes_refused_total');
      this.leadership.demote('a fenced write was refused');
      throw new FencedError();
    }
    // Logged once stored: a refused write's events did not happen (a leader thawed after a
    // freeze logged every node DOWN before its write was refused).
    for (const e of events) this.log.info({ event: e.kind, subject: e.subject, fields: e.fields }, e.message);
  }

  /**
   * Commits units that need not land together in as few fenced transactions as etcd takes (see
   * MAX_TXN_OPS), one after another; onStored is told each part's items once it is stored, so
   * the caller's memory follows what etcd holds even when a later part fails (which then throws:
   * the parts before it stay written, each unit whole).
   */
  async commitInParts<T>(units: WriteUnit<T>[], onStored: (items: T[]) => void = () => {}): Promise<void> {
    let first = true;
    for (const part of packUnits(units)) {
      // (A test fails a write between its parts here, as an etcd outage would.)
      if (!first) await failpoint('commitInPartsBetween');
      first = false;
      await this.commit(part.flatMap((u) => u.ops), part.flatMap((u) => u.events ?? []));
      onStored(part.map((u) => u.item));
    }
  }

  private eventOp(e: EventDraft, term: number): Op {
    const atMs = Date.now();
    const id = `${String(atMs).padStart(15, '0')}-${String(term).padStart(10, '0')}-${String(this.counter++ % 1e6).padStart(6, '0')}`;
    const stored: StoredEvent = { ...e, fields: e.fields ?? {}, id, atMs, coordinatorId: this.leadership.selfId, leaderTerm: term };
    return { type: 'put', key: this.keys.event(id), value: JSON.stringify(stored) };
  }

  /** Keeps the event log bounded: deletes the oldest events beyond max, in a fenced write. */
  async trimEvents(max: number): Promise<number> {
    const count = await this.client.getAll().prefix(this.keys.events).count();
    if (count <= max) return 0;
    const excess = count - max;
    const oldest = await this.client.getAll().prefix(this.keys.events).sort('Key', 'Ascend').limit(excess).keys();
    const last = oldest[oldest.length - 1];
    await this.commit([{ type: 'deleteRange', start: this.keys.events, end: last + '\0' }]);
    return excess;
  }
}
