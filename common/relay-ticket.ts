// Relay tickets: what lets a direct-jobs client (an admin certificate) hand an agent a route.
// Under mTLS an agent's StepRelay takes routes from coordinators and agents by their certificate;
// an admin certificate alone would let anyone who holds one (a read-only token with it, say) run
// steps on instances with nothing recorded. So the leader signs each route lease it grants
// (Admin.DirectJobs, an operator's call): HMAC-SHA256, under a key of this coordinator process
// that it gives the agents in its Welcome (over their mTLS stream), of the lease's id prefix and
// its expiry. An agent runs a route from an admin certificate only for a job whose id carries a
// prefix it holds a valid ticket for (the ticket comes once per relay stream and lease). A
// ticket lives as long as its lease (2 s) plus TICKET_SKEW_MS, since the hosts' clocks need not
// agree; agents keep the last KEYS_KEPT keys (a new leader brings its own).
//
//   ticket = <key id> "." <expires at, ms, base 36> "." base64url(HMAC(key, key id "|" id prefix "|" expires))
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** How far an agent's clock may run ahead of the leader's before its tickets look expired. */
export const TICKET_SKEW_MS = 60_000;
const KEYS_KEPT = 8;

export interface RelayKey {
  id: string;
  key: Buffer;
}

/** A key for this process's tickets (it lives as long as the process). */
export function newRelayKey(): RelayKey {
  return { id: randomBytes(6).toString('hex'), key: randomBytes(32) };
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

/** The keys an agent knows tickets by (from its coordinators' Welcome messages). */
export class TicketKeys {
  private keys = new Map<string, Buffer>();

  add(id: string, key: Buffer | Uint8Array | undefined): void {
    if (!id || !key?.length) return;
    this.keys.delete(id);
    this.keys.set(id, Buffer.from(key));
    if (this.keys.size > KEYS_KEPT) this.keys.delete(this.keys.keys().next().value!);
  }

  get size(): number {
    return this.keys.size;
  }

  /**
   * Checks a ticket for job ids with this prefix: its expiry (ms, the leader's clock) when it
   * holds, else why not (the text of a PERMISSION_DENIED).
   */
  verify(ticket: string, idPrefix: string, nowMs = Date.now()): { expiresAtMs: number } | { error: string } {
    const parts = ticket.split('.');
    if (parts.length !== 3) return { error: 'malformed lease ticket' };
    const [id, expires, sig] = parts;
    const key = this.keys.get(id);
    if (!key) return { error: `lease ticket signed by key ${id}, which this agent has not been given (a coordinator's Welcome gives it)` };
    const want = mac(key, id, idPrefix, expires);
    const got = Buffer.from(sig, 'base64url');
    if (got.length !== want.length || !timingSafeEqual(got, want)) return { error: `lease ticket not valid for job ids ${idPrefix}.*` };
    const expiresAtMs = parseInt(expires, 36);
    if (!Number.isFinite(expiresAtMs) || nowMs > expiresAtMs + TICKET_SKEW_MS) return { error: `lease ticket for ${idPrefix}.* expired (at ${new Date(expiresAtMs).toISOString()})` };
    return { expiresAtMs };
  }
}

/**
 * One relay stream's tickets, agent side: the ticket a request brings counts for its prefix on
 * this stream (a client sends each once). Checked again until it holds (the key may come after
 * the ticket: an agent that has just attached to a new leader).
 */
export class StreamTickets {
  private byPrefix = new Map<string, { ticket: string; expiresAtMs: number }>();

  constructor(private readonly keys: TicketKeys) {}

  /** Undefined when job `jobId` may run (a valid ticket for its prefix, brought now or before on this stream); else why not. */
  check(jobId: string, ticket: string | undefined, nowMs = Date.now()): string | undefined {
    const prefix = idPrefixOf(jobId);
    if (!prefix) return `job id ${JSON.stringify(jobId)} carries no lease prefix (an admin certificate relays only leased routes, with their lease ticket: Admin.DirectJobs)`;
    let e = this.byPrefix.get(prefix);
    if (ticket && ticket !== e?.ticket) {
      if (this.byPrefix.size >= 64) this.prune(nowMs);
      e = { ticket, expiresAtMs: 0 };
      this.byPrefix.set(prefix, e);
    }
    if (!e) return `no lease ticket for job ids ${prefix}.* on this stream (an admin certificate relays only leased routes: Admin.DirectJobs)`;
    if (e.expiresAtMs && nowMs <= e.expiresAtMs + TICKET_SKEW_MS) return undefined;
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
