// Relay tickets: what lets a direct-jobs client (an admin certificate) hand an agent a route.
// Under mTLS an agent's StepRelay takes routes from coordinators and agents by their certificate;
// an admin certificate alone would let anyone who holds one (a read-only token with it, say) run
// steps on instances with nothing recorded. So the leader signs each route lease it grants
// (Admin.DirectJobs, an operator's call): HMAC-SHA256, under a key of this coordinator process
// that it gives the agents in its Welcome (over their mTLS stream), of the lease's id prefix and
// its expiry. An agent runs a route from an admin certificate only for a job whose id carries a
// prefix it holds a valid ticket for (the ticket comes once per relay stream and lease). A
// ticket lives as long as its lease (2 s) plus TICKET_SKEW_MS, since the hosts' clocks need not
// agree.
//
// Keys rotate (RelayKeyRing, --relay-key-rotation-ms, and on SIGHUP): the new key goes to the
// agents first (CoordinatorMessage.relay_key_update) and signs only KEY_ACTIVATE_MS later, so
// that agents hold it before any ticket needs it. An agent keeps a key until KEY_RETIRE_MS after
// a newer one came (from its leader's rotation or a new leader's Welcome), long enough for the
// tickets signed with it to expire, and at most KEYS_KEPT keys; a key that leaked is then
// worthless within a rotation and half a minute. An agent that missed a key (it was away when
// the key was pushed) refuses the tickets signed with it, and the direct client's failed relay is
// run by the leader instead (the job goes on, slower).
//
//   ticket = <key id> "." <expires at, ms, base 36> "." base64url(HMAC(key, key id "|" id prefix "|" expires))
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** How far an agent's clock may run ahead of the leader's before its tickets look expired. */
export const TICKET_SKEW_MS = 60_000;
const KEYS_KEPT = 8;
/** How long after a new key is pushed to agents it starts signing tickets. */
export const KEY_ACTIVATE_MS = 5_000;
/** How long an agent keeps taking a key's tickets after a newer key came (its last tickets' lease, and then some). */
export const KEY_RETIRE_MS = 30_000;
/** The longest a ticket's expiry may lie ahead of an agent's clock: a lease's TTL (2 s) is well under it, plus the clock skew allowed. */
export const TICKET_AHEAD_MS = TICKET_SKEW_MS + 10_000;

export interface RelayKey {
  id: string;
  key: Buffer;
}

/** A fresh key for tickets (random; it never leaves the coordinator's memory but for its agents). */
export function newRelayKey(): RelayKey {
  return { id: randomBytes(6).toString('hex'), key: randomBytes(32) };
}

/**
 * A coordinator's relay keys: the one that signs now, and during a rotation the next one, given
 * to agents KEY_ACTIVATE_MS before it signs. A rotation asked for while one is under way is that
 * one, its key given out again (keys change at most once per KEY_ACTIVATE_MS).
 */
export class RelayKeyRing {
  private signing = newRelayKey();
  private next?: RelayKey;
  private timer?: NodeJS.Timeout;
  private readonly listeners: ((k: RelayKey) => void)[] = [];
  rotations = 0;

  constructor(private readonly activateMs = KEY_ACTIVATE_MS) {}

  /** The key tickets are signed with now. */
  get current(): RelayKey {
    return this.signing;
  }

  /** The key that will sign once its rotation completes (agents are given it already), if one is under way. */
  get pending(): RelayKey | undefined {
    return this.next;
  }

  /** Called with each new key as its rotation starts (the gateway pushes it to the agents). */
  onRotate(fn: (k: RelayKey) => void): void {
    this.listeners.push(fn);
  }

  /** Starts a rotation: a new key, pushed now, signing after activateMs (returned). */
  rotate(): RelayKey {
    if (this.next) {
      for (const l of this.listeners) l(this.next);
      return this.next;
    }
    const k = newRelayKey();
    this.next = k;
    for (const l of this.listeners) l(k);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.signing = k;
      this.next = undefined;
      this.rotations++;
    }, this.activateMs);
    this.timer.unref?.();
    return k;
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}

function mac(key: Buffer, id: string, prefix: string, expires: string): Buffer {
  return createHmac('sha256', key).update(`${id}|${prefix}|${expires}`).digest();
}

/** The ticket of a lease whose job ids are `<idPrefix>.<n>`, valid until expiresAtMs (the leader's clock). */
export function issueTicket(k: RelayKey, idPrefix: string, expiresAtMs: number): string {
  const expires = expiresAtMs.toString(36);
  return `${k.id}.${expires}.${mac(k.key, k.id, idPrefix, expires).toString('base64url')}`;
}

/** The id prefix a job id carries: everything before its last dot. */
export function idPrefixOf(jobId: string): string {
  const i = jobId.lastIndexOf('.');
  return i > 0 ? jobId.slice(0, i) : '';
}

/**
 * The keys an agent knows tickets by (from its leader's Welcome and relay key updates). A key
 * that comes retires the others KEY_RETIRE_MS later (its leader rotated, or the agent attached to
 * a new leader); one that comes again (a Welcome after a reconnect) is taken back.
 */
export class TicketKeys {
  private keys = new Map<string, { key: Buffer; retiresAtMs: number }>();

  /** Takes a key (the others retire KEY_RETIRE_MS later); true when it is one this agent did not hold. */
  add(id: string, key: Buffer | Uint8Array | undefined, nowMs = Date.now()): boolean {
    if (!id || !key?.length) return false;
    const known = this.keys.has(id);
    for (const [other, k] of this.keys) if (other !== id && !k.retiresAtMs) k.retiresAtMs = nowMs + KEY_RETIRE_MS;
    this.keys.delete(id);
    this.keys.set(id, { key: Buffer.from(key), retiresAtMs: 0 });
    if (this.keys.size > KEYS_KEPT) this.keys.delete(this.keys.keys().next().value!);
    return !known;
  }

  /** The ids of the keys held, and when each retires (0: the newest; not retiring). */
  held(): { id: string; retiresAtMs: number }[] {
    return [...this.keys].map(([id, k]) => ({ id, retiresAtMs: k.retiresAtMs }));
  }

  get size(): number {
    return this.keys.size;
  }

  /** Whether key `id` is held and not retired (a ticket a stream has checked already counts only while its key does). */
  live(id: string, nowMs = Date.now()): boolean {
    const k = this.keys.get(id);
    return !!k && (!k.retiresAtMs || nowMs <= k.retiresAtMs);
  }

  /**
   * Checks a ticket for job ids with this prefix: its expiry (ms, the leader's clock) when it
   * holds, else why not (the text of a PERMISSION_DENIED).
   */
  verify(ticket: string, idPrefix: string, nowMs = Date.now()): { expiresAtMs: number } | { error: string } {
    const parts = ticket.split('.');
    if (parts.length !== 3) return { error: 'malformed lease ticket' };
    const [id, expires, sig] = parts;
    const k = this.keys.get(id);
    if (!k) return { error: `lease ticket signed by key ${id}, which this agent has not been given (its leader's Welcome or a relay key update gives it)` };
    if (k.retiresAtMs && nowMs > k.retiresAtMs) {
      this.keys.delete(id);
      return { error: `lease ticket signed by key ${id}, which this agent has retired (a newer key came ${KEY_RETIRE_MS / 1000} s before)` };
    }
    const want = mac(k.key, id, idPrefix, expires);
    const got = Buffer.from(sig, 'base64url');
    if (got.length !== want.length || !timingSafeEqual(got, want)) return { error: `lease ticket not valid for job ids ${idPrefix}.*` };
    const expiresAtMs = parseInt(expires, 36);
    if (!Number.isFinite(expiresAtMs) || nowMs > expiresAtMs + TICKET_SKEW_MS) return { error: `lease ticket for ${idPrefix}.* expired (at ${new Date(expiresAtMs).toISOString()})` };
    // No lease lives this long: signed by a key that leaked, say, to outlive its retirement.
    if (expiresAtMs > nowMs + TICKET_AHEAD_MS) return { error: `lease ticket for ${idPrefix}.* expires too far ahead (at ${new Date(expiresAtMs).toISOString()}; a lease lives seconds)` };
    return { expiresAtMs };
  }
}

/**
 * One relay stream's tickets, agent side: the ticket a request brings counts for its prefix on
 * this stream (a client sends each once). Checked again until it holds (the key may come after
 * the ticket: an agent that has just attached to a new leader).
 */
export class StreamTickets {
  private byPrefix = new Map<string, { ticket: string; keyId: string; expiresAtMs: number }>();

  constructor(private readonly keys: TicketKeys) {}

  /** Undefined when job `jobId` may run (a valid ticket for its prefix, brought now or before on this stream); else why not. */
  check(jobId: string, ticket: string | undefined, nowMs = Date.now()): string | undefined {
    const prefix = idPrefixOf(jobId);
    if (!prefix) return `job id ${JSON.stringify(jobId)} carries no lease prefix (an admin certificate relays only leased routes, with their lease ticket: Admin.DirectJobs)`;
    let e = this.byPrefix.get(prefix);
    if (ticket && ticket !== e?.ticket) {
      if (this.byPrefix.size >= 64) this.prune(nowMs);
      e = { ticket, keyId: ticket.slice(0, Math.max(0, ticket.indexOf('.'))), expiresAtMs: 0 };
      this.byPrefix.set(prefix, e);
    }
    if (!e) return `no lease ticket for job ids ${prefix}.* on this stream (an admin certificate relays only leased routes: Admin.DirectJobs)`;
    if (e.expiresAtMs && nowMs <= e.expiresAtMs + TICKET_SKEW_MS && this.keys.live(e.keyId, nowMs)) return undefined;
    const v = this.keys.verify(e.ticket, prefix, nowMs);
    if ('error' in v) return v.error;
    e.expiresAtMs = v.expiresAtMs;
    return undefined;
  }

  private prune(nowMs: number): void {
    for (const [p, e] of this.byPrefix) if (!e.expiresAtMs || nowMs > e.expiresAtMs + TICKET_SKEW_MS) this.byPrefix.delete(p);
    while (this.byPrefix.size >= 64) this.byPrefix.delete(this.byPrefix.keys().next().value!);
  }
}
