// Named records with one secret part that the leader keeps sealed at rest (--secrets-key-file):
// registry credentials (their password) and secrets (their data). Etcd holds the record's other
// fields in the clear and the secret part either in the clear (no key file: as Kubernetes stores
// Secrets unless told otherwise) or sealed with the keyring's first key, bound to its etcd key.
// The leader holds every record opened; one it cannot open (a key it lacks) is kept as stored
// and says why, until a key file with its key is read again (rekeyed) or the record is set anew.
import type { Logger } from '../common/logger';
import type { Store } from './store';
import { isSealed, noKeyring, type Keyring, type Sealed } from './secrets';

/** A record as the leader holds it: its fields, its secret part, and how etcd holds that. */
export interface Held<M> {
  meta: M;
  /** The secret part in the clear ('' when unreadable). */
  plain: string;
  /** The key that sealed it; '' for plaintext. */
  storedWith: string;
  /** Why it cannot be opened: then it is not used, and `stored` is kept for a later try. */
  unreadable?: string;
  stored?: Record<string, unknown>;
}

export interface SealedRecordsOptions {
  /** As messages name one: "registry credential". */
  what: string;
  /** The events' kind prefix: "registry-credential" (-> registry-credential.resealed). */
  eventKind: string;
  /** The stored field that holds the secret part in the clear: "password". */
  plainField: string;
  /** Its etcd key, which sealing binds the value to. */
  keyOf: (name: string) => string;
  keyring: () => Keyring | undefined;
}

export class SealedRecords<M extends object> {
  private held = new Map<string, Held<M>>();

  constructor(private readonly opts: SealedRecordsOptions, private readonly store: Store, private readonly log: Logger) {}

  /** The stored values under a prefix (name = key minus prefix), opened; then resealed as a new leader does. */
  async load(values: Record<string, string>, prefix: string): Promise<void> {
    this.held.clear();
    for (const [k, v] of Object.entries(values)) {
      const name = k.slice(prefix.length);
      this.held.set(name, this.open(name, JSON.parse(v) as Record<string, unknown>));
    }
    await this.reseal();
  }

  get(name: string): Held<M> | undefined { return this.held.get(name); }
  has(name: string): boolean { return this.held.has(name); }
  names(): string[] { return [...this.held.keys()].sort(); }

  /** The put that stores a record (sealed with the first key when there is a keyring), and the record as held once it commits. */
  prepare(name: string, meta: M, plain: string): { value: string; held: Held<M> } {
    const held: Held<M> = { meta, plain, storedWith: this.opts.keyring()?.primary ?? '' };
    return { value: this.storedValue(name, held), held };
  }

  /** After the put or delete committed. */
  commit(name: string, held: Held<M> | undefined): void {
    if (held) this.held.set(name, held);
    else this.held.delete(name);
  }

  /** How etcd holds its secret part, as the API says it. */
  atRest(name: string): string {
    const h = this.held.get(name);
    if (!h) return '';
    return h.unreadable ? `unreadable: ${h.unreadable}` : h.storedWith ? `aes-256-gcm, key ${h.storedWith}` : 'plaintext';
  }

  /**
   * The keyring's keys changed (SIGHUP read the key file again): records that could not be
   * opened are tried again, and those stored with another key than the new first one are
   * resealed with it, as a new leader does (rotation without a restart).
   */
  async rekeyed(): Promise<void> {
    for (const [name, h] of this.held) {
      if (h.unreadable && h.stored) {
        const again = this.open(name, h.stored);
        if (!again.unreadable) this.log.info({ [this.opts.eventKind]: name, key: again.storedWith }, `${this.opts.what} opens with the reloaded key file`);
        this.held.set(name, again);
      }
    }
    await this.reseal();
  }

  private storedValue(name: string, h: Held<M>): string {
    const k = this.opts.keyring();
    return JSON.stringify({ ...h.meta, ...(k ? { sealed: k.seal(h.plain, this.opts.keyOf(name)) } : { [this.opts.plainField]: h.plain }) });
  }

  private open(name: string, s: Record<string, unknown>): Held<M> {
    const { sealed, [this.opts.plainField]: plain, ...meta } = s;
    if (!isSealed(sealed)) return { meta: meta as M, plain: typeof plain === 'string' ? plain : '', storedWith: '' };
    try {
      const k = this.opts.keyring();
      if (!k) throw noKeyring(sealed);
      return { meta: meta as M, plain: k.open(sealed, this.opts.keyOf(name)), storedWith: (sealed as Sealed).k };
    } catch (e) {
      const why = (e as Error).message;
      this.log.error({ [this.opts.eventKind]: name, reason: why }, `${this.opts.what} cannot be opened: what names it goes without it`);
      // The stored value is kept: a key file reloaded with its key opens it (rekeyed()).
      return { meta: meta as M, plain: '', storedWith: (sealed as Sealed).k, unreadable: why, stored: s };
    }
  }

  /**
   * With a keyring, a new leader seals what is stored in the clear or with a key other than the
   * primary one (key rotation: the new key first in every coordinator's file, then reload them
   * (SIGHUP: rekeyed()) or restart them; once every record says the new key, the old one can go).
   */
  private async reseal(): Promise<void> {
    const k = this.opts.keyring();
    if (!k) return;
    const stale = [...this.held].filter(([, h]) => !h.unreadable && h.storedWith !== k.primary);
    // A transaction each 40 (with their events: 80 ops, under etcd's 128).
    for (let i = 0; i < stale.length; i += 40) {
      const part = stale.slice(i, i + 40);
      try {
        await this.store.commit(part.map(([name, h]) => ({ type: 'put' as const, key: this.opts.keyOf(name), value: this.storedValue(name, h) })), part.map(([name, h]) => ({
          kind: `${this.opts.eventKind}.resealed`, subject: name, message: `${this.opts.what} ${name} sealed with key ${k.primary} (was ${h.storedWith ? `key ${h.storedWith}` : 'plaintext'})`,
        })));
        for (const [, h] of part) h.storedWith = k.primary;
        this.log.info({ names: part.map(([n]) => n), key: k.primary }, `${this.opts.what}s resealed`);
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, `resealing ${this.opts.what}s failed: the next leader tries again`);
        return;
      }
    }
  }
}
