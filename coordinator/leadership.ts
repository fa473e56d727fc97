// Leader election in etcd, with fencing and self-demotion.
//
//   candidate:  lease(TTL) ──put──> <prefix>election/<leaseId> = {id, address, nonce}
//   leader:     the candidate key with the lowest create revision
//   fence:      every leader write is a transaction comparing its key's create revision,
//               so a deposed leader's late writes are refused by etcd itself
//   demotion:   lease keepalive stale for TTL - margin, the lease lost, the key gone, or a
//               write refused by the fence; then a new candidacy after a backoff
//
// A leader cut off from etcd only hears that its lease expired after about 2 x TTL, while a
// successor is elected after 1 x TTL: so we step down on our own clock first.
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Etcd3, Lease, Watcher } from 'etcd3';
import { Backoff, sleep } from '../common/backoff';
import { monoMs } from '../common/clock';
import { LogThrottle } from '../common/log-throttle';
import { endpointHealth, withTimeout } from '../common/etcd';
import type { Logger } from '../common/logger';
import { VERSION } from '../common/version';
import type { Keys } from './keys';

export interface CandidateInfo {
  id: string;
  address: string;
  version: string;
  nonce: string;
  startedAtMs: number;
  /** Its --secrets-key-file keys as name:fingerprint, the sealing one first (none: secrets stored in the clear). */
  secretsKeys?: string[];
  /** etcd key and create revision: the fencing token when this candidate leads. */
  key: string;
  createRevision: string;
}

export interface FenceToken {
  key: string;
  createRevision: string;
  /** The create revision as a number: increases with every election. */
  term: number;
}

export type Role = 'follower' | 'leader' | 'stopped';

export interface LeadershipOptions {
  ttlSeconds: number;
  marginMs: number;
  /** Asked before each candidacy: a reason not to lead this cluster at all (then no candidacy, for good). */
  mayLead?: () => Promise<string | undefined>;
}

export declare interface Leadership {
  on(event: 'elected', fn: (token: FenceToken) => void): this;
  on(event: 'demoted', fn: (reason: string) => void): this;
  on(event: 'leaderChanged', fn: (leader: CandidateInfo | undefined) => void): this;
}

interface Candidacy {
  lease: Lease;
  key: string;
  createRevision: string;
  lastKeepaliveOk: number;
  /** A one-off keepalive is under way (see checkStaleness). */
  hedging?: boolean;
}

export class Leadership extends EventEmitter {
  private role: Role = 'follower';
  private candidacy?: Candidacy;
  private token?: FenceToken;
  private currentLeader?: CandidateInfo;
  private candidates: CandidateInfo[] = [];
  private watcher?: Watcher;
  private readonly abort = new AbortController();
  private wake: () => void = () => {};
  private staleTimer?: NodeJS.Timeout;
  private pollTimer?: NodeJS.Timeout;
  private readonly nonce = randomBytes(8).toString('hex');
  private readonly startedAtMs = Date.now();
  private loop?: Promise<void>;
  private lastRefreshOk = monoMs();
  private resigned = false;
  private refusedWhy?: string;
  /** An older candidate with this coordinator's id and another address (see idClash). */
  private clash?: CandidateInfo;
  private clashLoggedAtMs = -Infinity;
  private readonly campaignWarnings = new LogThrottle(30_000);

  constructor(
    private readonly client: Etcd3,
    private readonly keys: Keys,
    private readonly self: { id: string; address: string; secretsKeys?: string[] },
    private readonly opts: LeadershipOptions,
    private readonly log: Logger,
  ) {
    super();
  }

  get isLeader(): boolean { return this.role === 'leader'; }
  get leader(): CandidateInfo | undefined { return this.currentLeader; }
  get allCandidates(): CandidateInfo[] { return this.candidates; }
  get selfId(): string { return this.self.id; }
  /** Set when this coordinator does not lead this cluster (for good, refuse(); or while another uses its id), with the reason. */
  get refusal(): string | undefined { return this.refusedWhy ?? (this.clash ? this.clashText(this.clash) : undefined); }
  /**
   * Another coordinator, there first, campaigns under this one's id from another address (a
   * config copied from host to host): this one does not campaign while it does, as Consul and
   * Nomad refuse a server whose node id another holds. It still serves as a follower (forwarding
   * writes and sending agents to the leader; self is known by the candidacy's nonce, not the id).
   */
  get idClash(): CandidateInfo | undefined { return this.clash; }
  /** Whether a candidate is this process's own (its nonce: ids may clash). */
  isSelf(c: CandidateInfo | undefined): boolean { return !!c && c.nonce === this.nonce; }

  /** The fencing token, or undefined when this process does not lead. */
  fence(): FenceToken | undefined { return this.role === 'leader' ? this.token : undefined; }

  start(): void {
    this.loop = this.campaignLoop();
    void this.startObserver();
    this.staleTimer = setInterval(() => this.checkStaleness(), 100);
    this.staleTimer.unref();
  }

  /** Graceful stop: revoking the lease deletes the key, so a successor is elected at once. */
  async stop(): Promise<void> {
    if (this.role === 'stopped') return;
    const wasLeader = this.role === 'leader';
    this.setRole('stopped', 'shutting down');
    if (wasLeader) this.emit('demoted', 'shutting down');
    this.abort.abort();
    this.wake();
    clearInterval(this.staleTimer);
    clearInterval(this.pollTimer);
    await this.dropCandidacy('resign');
    // Bounded: cancelling a watch waits for etcd's answer, and a stop while etcd is out of reach
    // (or its connection is being re-made) must not hang on it (seen: a test's cleanup stuck 60 s).
    if (this.watcher) await withTimeout(this.watcher.cancel(), 1_000, 'election watch cancel').catch(() => {});
    if (this.loop) await withTimeout(this.loop, 2_000, 'campaign loop').catch(() => {});
  }

  /** Called by the store when etcd refused a fenced write: we are not the leader any more. */
  demote(reason: string): void {
    if (this.role !== 'leader') return;
    this.log.warn({ reason }, 'stepping down');
    this.setRole('follower', reason);
    this.token = undefined;
    this.emit('demoted', reason);
    void this.dropCandidacy(reason).finally(() => this.wake());
  }

  /** Waits until some leader is known (or the timeout passes). */
  async waitForLeader(timeoutMs: number): Promise<CandidateInfo | undefined> {
    if (this.currentLeader) return this.currentLeader;
    return new Promise((resolve) => {
      const done = (l?: CandidateInfo) => {
        clearTimeout(t);
        this.off('leaderChanged', onChange);
        resolve(l ?? this.currentLeader);
      };
      const onChange = (l: CandidateInfo | undefined) => { if (l) done(l); };
      const t = setTimeout(() => done(), timeoutMs);
      t.unref();
      this.on('leaderChanged', onChange);
    });
  }

  /** Waits until the leader is someone other than the candidate with this key (or times out). */
  async waitForLeaderOtherThan(key: string, timeoutMs: number): Promise<CandidateInfo | undefined> {
    if (this.currentLeader && this.currentLeader.key !== key) return this.currentLeader;
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.off('leaderChanged', onChange);
        resolve(this.currentLeader && this.currentLeader.key !== key ? this.currentLeader : undefined);
      };
      const onChange = (l: CandidateInfo | undefined) => { if (l && l.key !== key) done(); };
      const t = setTimeout(done, timeoutMs);
      t.unref();
      this.on('leaderChanged', onChange);
    });
  }

  /**
   * Does not lead this cluster for good: steps down if it leads, drops its candidacy and never
   * campaigns again (it still observes the election and forwards to the leader). For a reason
   * only a restart can change, e.g. a storage format newer than this coordinator knows.
   */
  async refuse(why: string): Promise<void> {
    if (this.refusedWhy) return;
    this.refusedWhy = why;
    this.log.error({ reason: why }, 'not leading this cluster');
    await this.resign();
  }

  /**
   * Steps down for good (graceful shutdown) while still observing the election, so the caller
   * can tell its agents who leads next. stop() finishes the teardown.
   */
  async resign(): Promise<void> {
    this.resigned = true;
    if (this.role === 'leader') {
      this.setRole('follower', 'resigning');
      this.token = undefined;
      this.emit('demoted', 'resigning');
    }
    await this.dropCandidacy('resign');
  }

  private setRole(role: Role, reason: string): void {
    if (this.role === role) return;
    this.log.info({ from: this.role, to: role, reason, term: this.token?.term }, 'leadership role change');
    this.role = role;
  }

  private async campaignLoop(): Promise<void> {
    const backoff = new Backoff({ initialMs: 200, maxMs: 2_000, multiplier: 2, jitter: 0.2 });
    while (!this.abort.signal.aborted) {
      if (this.resigned) return;
      if (!this.candidacy) {
        if (this.clash) {
          await sleep(500, this.abort.signal);
          continue;
        }
        try {
          const why = await this.opts.mayLead?.();
          if (why) {
            await this.refuse(why);
            return;
          }
          // Who campaigns already, read first: a coordinator started under an id another one
          // campaigns with puts no key of its own, not even for the moment until the observer's
          // next read (a CI run saw the second one listed as a candidate beside the first).
          await this.refreshLeader();
          if (this.clash) continue;
          await this.becomeCandidate();
          backoff.reset();
          if (this.campaignWarnings.reset()) this.log.info('campaigning again');
          await this.refreshLeader();
        } catch (err) {
          // While etcd is away this fails at every backoff step: a warning, then one each 30 s.
          const held = this.campaignWarnings.take();
          if (held === undefined) this.log.debug({ err: (err as Error).message }, 'campaign failed; retrying');
          else this.log.warn({ err: (err as Error).message, ...(held ? { failedMeanwhile: held } : {}) }, held ? `campaign failed; retrying (${held} more failures since the last warning)` : 'campaign failed; retrying');
          await this.dropCandidacy('campaign failed');
          await sleep(backoff.next(), this.abort.signal);
          continue;
        }
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      if (!this.candidacy) await sleep(backoff.next(), this.abort.signal);
    }
  }

  private async becomeCandidate(): Promise<void> {
    if (this.resigned) throw new Error('resigned');
    const lease = this.client.lease(this.opts.ttlSeconds, { autoKeepAlive: true });
    const leaseId = await withTimeout(lease.grant(), this.opts.ttlSeconds * 1000, 'lease grant');
    const key = `${this.keys.election}${leaseId}`;
    const candidacy: Candidacy = { lease, key, createRevision: '', lastKeepaliveOk: monoMs() };
    this.candidacy = candidacy;
    lease.on('keepaliveSucceeded', () => { candidacy.lastKeepaliveOk = monoMs(); });
    lease.on('lost', (err) => {
      if (this.candidacy !== candidacy) return;
      this.log.warn({ err: err.message }, 'election lease lost');
      this.loseCandidacy('election lease lost');
    });
    await withTimeout(lease.put(key).value(this.candidacyValue()).exec(), this.opts.ttlSeconds * 1000, 'candidate put');
    const res = await withTimeout(this.client.get(key).exec(), this.opts.ttlSeconds * 1000, 'candidate read');
    if (!res.kvs.length) throw new Error('candidate key vanished right after it was written');
    candidacy.createRevision = String(res.kvs[0].create_revision);
    this.log.debug({ key, createRevision: candidacy.createRevision }, 'campaigning');
  }

  private candidacyValue(): string {
    return JSON.stringify({ id: this.self.id, address: this.self.address, version: VERSION, nonce: this.nonce, startedAtMs: this.startedAtMs, ...(this.self.secretsKeys?.length ? { secretsKeys: this.self.secretsKeys } : {}) });
  }

  /**
   * This coordinator's secrets keys changed (SIGHUP): its candidacy says so at once (tessera
   * status compares every coordinator's). Written again under the same key and lease: the
   * create revision, which orders the election and fences the leader's writes, stays.
   */
  async setSecretsKeys(fingerprints: string[]): Promise<void> {
    this.self.secretsKeys = fingerprints;
    const c = this.candidacy;
    if (!c) return; // the next candidacy carries them
    await withTimeout(c.lease.put(c.key).value(this.candidacyValue()).exec(), this.opts.ttlSeconds * 1000, 'candidate put');
  }

  private loseCandidacy(reason: string): void {
    if (this.role === 'leader') this.demote(reason);
    else void this.dropCandidacy(reason).finally(() => this.wake());
  }

  private async dropCandidacy(reason: string): Promise<void> {
    const c = this.candidacy;
    if (!c) return;
    this.candidacy = undefined;
    this.log.debug({ key: c.key, reason }, 'dropping candidacy');
    try {
      await withTimeout(c.lease.revoke(), 1_000, 'lease revoke');
    } catch {
      c.lease.release(); // etcd unreachable: stop the keepalives; the lease expires on its own
    }
  }

  /** Step down on our own clock before etcd's lease runs out for everyone else. */
  private checkStaleness(): void {
    const c = this.candidacy;
    if (!c) return;
    const quietMs = Math.round(monoMs() - c.lastKeepaliveOk);
    if (quietMs > (this.opts.ttlSeconds * 1000) / 2 && !c.hedging) {
      // The keepalive stream has missed a beat and a half: it may sit on an etcd member that
      // hangs (etcd3 leaves it there until its own TTL timeout, after we would have stepped
      // down). One more keepalive, sent where it can be answered, counts from when it was sent.
      c.hedging = true;
      const sentAtMs = monoMs();
      const timeoutMs = (this.opts.ttlSeconds * 1000) / 3;
      const health = endpointHealth(this.client);
      // Through every member that answers at once when the client probes them; else one more
      // keepalive on a fresh stream (a random member).
      const once = health
        ? c.lease.grant().then((id) => health.keepAliveEverywhere(id, timeoutMs)).then((ok) => { if (!ok) throw new Error('no member answered'); })
        : withTimeout(c.lease.keepaliveOnce(), timeoutMs, 'one-off lease keepalive');
      once
        .then(() => {
          c.lastKeepaliveOk = Math.max(c.lastKeepaliveOk, sentAtMs);
          this.log.debug({ quietMs }, 'one-off lease keepalive answered');
        })
        .catch((err) => this.log.debug({ err: (err as Error).message }, 'one-off lease keepalive failed'))
        .finally(() => { c.hedging = false; });
    }
    if (quietMs > this.opts.ttlSeconds * 1000 - this.opts.marginMs) {
      this.log.warn({ quietMs }, 'lease keepalive stale');
      this.loseCandidacy(`lease keepalive has not succeeded for ${quietMs} ms`);
    }
  }

  private async startObserver(): Promise<void> {
    let inFlight = false;
    const poll = () => {
      // Cut off from etcd for longer than a TTL, we cannot know who leads: say so, rather
      // than sending agents and forwarded writes to a leader that may be gone.
      if (this.currentLeader && monoMs() - this.lastRefreshOk > this.opts.ttlSeconds * 1000) {
        this.currentLeader = undefined;
        this.log.warn('leader unknown: etcd has not answered for longer than the lease TTL');
        this.emit('leaderChanged', undefined);
      }
      if (inFlight) return;
      inFlight = true;
      withTimeout(this.refreshLeader(), this.opts.ttlSeconds * 1000, 'leader refresh')
        .catch((err) => this.log.debug({ err: (err as Error).message }, 'leader refresh failed'))
        .finally(() => (inFlight = false));
    };
    this.pollTimer = setInterval(poll, Math.max(250, (this.opts.ttlSeconds * 1000) / 4));
    this.pollTimer.unref();
    for (;;) {
      if (this.abort.signal.aborted) return;
      try {
        const watcher = await this.client.watch().prefix(this.keys.election).create();
        this.watcher = watcher;
        watcher.on('put', poll).on('delete', poll).on('connected', poll);
        watcher.on('error', (err) => this.log.debug({ err: err.message }, 'election watch error'));
        poll();
        return;
      } catch (err) {
        this.log.debug({ err: (err as Error).message }, 'election watch failed; retrying');
        await sleep(500, this.abort.signal);
      }
    }
  }

  private clashText(c: CandidateInfo): string {
    return `coordinator id ${this.self.id} is in use by the coordinator at ${c.address} (a candidate since revision ${c.createRevision}): give each coordinator its own --id; this one (${this.self.address}) does not campaign while that one does`;
  }

  /** An older candidate under this id from another address: drop (or do not start) this one's candidacy while it stays. */
  private checkClash(candidates: CandidateInfo[]): void {
    const mine = this.candidacy;
    const clash = candidates.find((c) => c.id === this.self.id && c.nonce !== this.nonce && c.address !== this.self.address
      && (!mine?.createRevision || BigInt(c.createRevision) < BigInt(mine.createRevision)));
    const now = monoMs();
    if (clash && (!this.clash || now - this.clashLoggedAtMs >= 60_000)) {
      this.clashLoggedAtMs = now;
      this.log.error({ other: clash.address, key: clash.key }, this.clashText(clash));
    } else if (!clash && this.clash) {
      this.log.info({ other: this.clash.address }, `the other coordinator with id ${this.self.id} is gone: campaigning again`);
    }
    const cleared = !clash && !!this.clash;
    this.clash = clash;
    if (clash && mine) this.loseCandidacy(`coordinator id ${this.self.id} is in use by ${clash.address}`);
    // The campaign loop may be waiting to be woken (it saw the clash after a candidacy): go on.
    if (cleared) this.wake();
  }

  /** Reads the candidates; the lowest create revision leads. Pure bookkeeping after the read. */
  private async refreshLeader(): Promise<void> {
    if (this.abort.signal.aborted) return;
    const res = await this.client.getAll().prefix(this.keys.election).sort('Create', 'Ascend').exec();
    this.lastRefreshOk = monoMs();
    const candidates: CandidateInfo[] = [];
    for (const kv of res.kvs) {
      try {
        const v = JSON.parse(kv.value.toString());
        candidates.push({ ...v, key: kv.key.toString(), createRevision: String(kv.create_revision) });
      } catch {
        this.log.warn({ key: kv.key.toString() }, 'ignoring malformed election value');
      }
    }
    this.candidates = candidates;
    this.checkClash(candidates);
    const first = candidates[0];
    if (first?.key !== this.currentLeader?.key) {
      this.currentLeader = first;
      this.log.info({ leader: first?.id, address: first?.address, term: first?.createRevision }, 'leader observed');
      this.emit('leaderChanged', first);
    }
    const mine = this.candidacy;
    if (this.role === 'leader' && (!mine || first?.key !== mine.key)) {
      this.demote('election key is no longer the first');
    } else if (this.role === 'follower' && mine && first?.key === mine.key && mine.createRevision) {
      this.token = { key: mine.key, createRevision: mine.createRevision, term: Number(mine.createRevision) };
      this.setRole('leader', 'won election');
      this.emit('elected', this.token);
    }
  }
}
