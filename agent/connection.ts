// The agent's link to the coordinators: one AgentGateway.Connect stream at a time.
//
//   IDLE ─> CONNECTING ─welcome─> CONNECTED ─stream ends─> BACKOFF ─> CONNECTING ...
//                 └─redirect─> CONNECTING (to the leader's address, at once)
//
// Addresses are tried in turn; a redirect names the leader. Delays are jittered so that a
// fleet that lost the same coordinator does not return in lockstep. Every state change goes
// through transition(), which checks it against the table and logs it.
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { Backoff, BackoffOptions, sleep } from '../common/backoff';
import { monoMs } from '../common/clock';
import { AGENT_CHANNEL_OPTIONS, AGENT_REFUSALS, clientCredentials, dial, DIAL_TIMEOUT_MS } from '../common/grpc';
import type { Logger } from '../common/logger';
import { tesseraProto } from '../common/proto';
import type { AgentGatewayClient } from '../common/generated/tessera/v1/AgentGateway';
import type { AgentHello } from '../common/generated/tessera/v1/AgentHello';
import type { AgentMessage } from '../common/generated/tessera/v1/AgentMessage';
import type { CoordinatorMessage__Output } from '../common/generated/tessera/v1/CoordinatorMessage';
import type { Instruction__Output } from '../common/generated/tessera/v1/Instruction';
import type { RelayKeyUpdate__Output } from '../common/generated/tessera/v1/RelayKeyUpdate';
import type { Welcome__Output } from '../common/generated/tessera/v1/Welcome';

/** How often an agent attached through a follower's relay tries the leader directly. */
export const RELAY_PROBE_MS = 10_000;
const LEFT_RELAY = 'the leader answers directly again';

export type ConnState = 'IDLE' | 'CONNECTING' | 'CONNECTED' | 'BACKOFF' | 'STOPPED';

const ALLOWED_FROM: Record<ConnState, readonly ConnState[]> = {
  IDLE: [],
  CONNECTING: ['IDLE', 'BACKOFF', 'CONNECTING', 'CONNECTED'],
  CONNECTED: ['CONNECTING'],
  BACKOFF: ['CONNECTING', 'CONNECTED'],
  STOPPED: ['IDLE', 'CONNECTING', 'CONNECTED', 'BACKOFF'],
};

export declare interface CoordinatorConnection {
  on(event: 'welcome', fn: (w: Welcome__Output, address: string) => void): this;
  on(event: 'instruction', fn: (i: Instruction__Output) => void): this;
  on(event: 'relayKey', fn: (k: RelayKeyUpdate__Output) => void): this;
  on(event: 'disconnected', fn: () => void): this;
}

interface StreamOutcome {
  welcomed: boolean;
  redirected: boolean;
  redirectTo?: string;
  reason: string;
}

export class CoordinatorConnection extends EventEmitter {
  private state: ConnState = 'IDLE';
  private call?: grpc.ClientDuplexStream<AgentMessage, CoordinatorMessage__Output>;
  private clients = new Map<string, AgentGatewayClient>();
  private readonly abort = new AbortController();
  private loop?: Promise<void>;
  connectedTo = '';

  constructor(
    private readonly addresses: string[],
    private readonly hello: (unreachableLeader: string) => AgentHello,
    private readonly log: Logger,
    private readonly backoffOpts: BackoffOptions | undefined,
    private readonly tls?: import('../common/tls').LiveTls,
    /** While not attached to a leader, a warning this often. */
    private readonly detachedWarnMs = 60_000,
  ) {
    super();
  }

  get current(): ConnState { return this.state; }

  private transition(to: ConnState, detail: Record<string, unknown> = {}): void {
    if (!ALLOWED_FROM[to].includes(this.state)) throw new Error(`connection state cannot go from ${this.state} to ${to}`);
    this.log.debug({ from: this.state, to, ...detail }, 'connection state');
    this.state = to;
  }

  start(): void {
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    if (this.state === 'STOPPED') return;
    this.transition('STOPPED');
    this.abort.abort();
    try { this.call?.end(); } catch { /* gone */ }
    this.call?.cancel();
    await this.loop;
    for (const c of this.clients.values()) c.close();
  }

  /** Sends a message on the current stream; false when not connected. */
  send(msg: AgentMessage): boolean {
    if (this.state !== 'CONNECTED' || !this.call) return false;
    this.call.write(msg);
    return true;
  }

  private client(address: string): AgentGatewayClient {
    let c = this.clients.get(address);
    if (!c) {
      c = new (tesseraProto().AgentGateway)(address, clientCredentials(this.tls), AGENT_CHANNEL_OPTIONS);
      this.clients.set(address, c);
    }
    return c;
  }

  /**
   * Tries coordinators until one welcomes us. Without a welcome, each address is tried once
   * in quick succession (a redirect is followed at once); only after a whole round fails is
   * there a jittered backoff. When the leader's stream dies, its address goes into the next
   * hello as unreachable, so a follower whose view is still the dead leader holds us until the
   * election moves on instead of sending us back there.
   */
  private async run(): Promise<void> {
    const backoff = new Backoff(this.backoffOpts ?? { initialMs: 200, maxMs: 5_000, multiplier: 1.6, jitter: 0.2 });
    let next = 0;
    let redirectTo: string | undefined;
    let unreachable = '';
    /** The next pick skips this address once: the leader whose stream just died. */
    let avoid = '';
    let attempts = 0;
    while (!this.abort.signal.aborted) {
      let address = redirectTo ?? this.addresses[next++ % this.addresses.length];
      // Not straight back to the leader whose stream just died (it may hang: the dial timeout
      // would eat the new leader's failover grace); a follower knows where the election went.
      // Once only: it may be the one coordinator that comes back.
      if (!redirectTo && address === avoid && this.addresses.length > 1) address = this.addresses[next++ % this.addresses.length];
      avoid = '';
      const wasRedirect = redirectTo !== undefined;
      redirectTo = undefined;
      this.transition('CONNECTING', { address });
      const out = await this.runStream(address, unreachable);
      if (this.abort.signal.aborted) return;
      attempts++;
      if (out.welcomed) {
        backoff.reset();
        attempts = 0;
        unreachable = out.redirected ? '' : address;
        avoid = unreachable;
        this.detachedAtMs = monoMs();
        this.detachedLoggedAtMs = this.detachedAtMs;
        // A leader's graceful stop redirects its agents: routine. Anything else is worth a warning.
        if (out.redirected) this.log.info({ address, reason: out.reason }, out.reason === LEFT_RELAY ? 'leaving the relay: attaching to the leader itself' : 'the leader handed this agent over: attaching to the new one');
        else this.log.warn({ address, reason: out.reason }, 'lost the stream to the leader: attaching again (the instances here keep running)');
        this.emit('disconnected');
      } else if (!out.redirected && wasRedirect) {
        unreachable = address; // sent to a leader that does not answer
      }
      // Still not attached: a warning a minute, with the last attempt's outcome (each attempt is a debug line).
      const now = monoMs();
      if (!out.welcomed && now - this.detachedLoggedAtMs >= this.detachedWarnMs) {
        this.detachedLoggedAtMs = now;
        this.log.warn({ address, reason: out.reason, forS: Math.round((now - this.detachedAtMs) / 1000) },
          `not attached to a leader for ${Math.round((now - this.detachedAtMs) / 1000)} s: still trying ${this.addresses.join(', ')} (the instances here keep running)`);
      }
      if (out.redirectTo && out.redirectTo !== address) {
        this.log.info({ from: address, to: out.redirectTo }, 'redirected to the leader');
        redirectTo = out.redirectTo;
      }
      if (attempts <= this.addresses.length + 2) continue;
      const delay = backoff.next();
      this.transition('BACKOFF', { reason: out.reason, delayMs: delay });
      await sleep(delay, this.abort.signal);
      attempts = 0;
    }
  }

  /**
   * The coordinator refused this agent (its certificate, its node id held by another agent, a
   * malformed hello): nothing a retry mends by itself, so an error, once per reason and then at
   * most once a minute while it lasts (the loop keeps trying with its backoff).
   */
  private refused(address: string, err: grpc.ServiceError): void {
    const now = Date.now();
    if (this.lastRefusal.reason === err.details && now - this.lastRefusal.atMs < 60_000) return;
    this.lastRefusal = { reason: err.details, atMs: now };
    this.log.error({ address, code: grpc.status[err.code], reason: err.details }, `the coordinator refused this agent: ${err.details}`);
  }

  private lastRefusal = { reason: '', atMs: 0 };
  /** Since when this agent has had no leader's stream (monotonic ms; its start at first), and when it last said so. */
  private detachedAtMs = monoMs();
  private detachedLoggedAtMs = monoMs();

  private async runStream(address: string, unreachableLeader: string): Promise<StreamOutcome> {
    if (this.addresses.length > 1 || this.addresses[0] !== address) {
      // Another coordinator to go to: one that does not even connect (hung) is left after the
      // dial timeout; a stream opened to it waited for ever (keepalive watches only open streams).
      const dialed = await dial(this.client(address) as unknown as grpc.Client, DIAL_TIMEOUT_MS);
      if (dialed === 'timeout') return { welcomed: false, redirected: false, reason: `${address} did not connect within ${DIAL_TIMEOUT_MS} ms (hung, or its network drops packets)` };
    }
    return this.openStream(address, unreachableLeader);
  }

  private openStream(address: string, unreachableLeader: string): Promise<StreamOutcome> {
    return new Promise((resolve) => {
      const out: StreamOutcome = { welcomed: false, redirected: false, reason: '' };
      let settled = false;
      let probe: NodeJS.Timeout | undefined;
      const call = this.client(address).Connect();
      this.call = call;
      const finish = (reason: string) => {
        if (settled) return;
        settled = true;
        clearInterval(probe);
        if (out.reason !== LEFT_RELAY) out.reason = reason;
        if (this.call === call) this.call = undefined;
        this.connectedTo = '';
        call.removeAllListeners('data');
        resolve(out);
      };
      call.on('data', (msg: CoordinatorMessage__Output) => {
        if (msg.welcome) {
          out.welcomed = true;
          // Channels to other coordinators are idle now: close them (each holds buffers).
          for (const [a, c] of this.clients) if (a !== address) { c.close(); this.clients.delete(a); }
          this.connectedTo = msg.welcome.coordinatorId;
          if (this.state === 'CONNECTING') this.transition('CONNECTED', { address, coordinator: msg.welcome.coordinatorId, term: msg.welcome.leaderTerm });
          this.log.info({ address, coordinator: msg.welcome.coordinatorId, term: msg.welcome.leaderTerm, afterMs: Math.round(monoMs() - this.detachedAtMs) }, 'attached to leader');
          const leader = msg.welcome.leaderAddress;
          if (msg.welcome.relayedBy && leader) {
            // Through a follower: this host cannot reach the leader. Try it now and then; once it
            // answers, leave the relay and attach to it directly.
            this.log.warn({ address, relayedBy: msg.welcome.relayedBy, leader }, `attached through ${msg.welcome.relayedBy}, which relays this agent's stream: the leader at ${leader} does not answer this host; trying it every ${RELAY_PROBE_MS / 1000} s`);
            probe = setInterval(() => {
              void dial(this.client(leader) as unknown as grpc.Client, DIAL_TIMEOUT_MS).then((d) => {
                if (d !== 'ready' || settled) return;
                this.log.info({ relayedBy: msg.welcome!.relayedBy, leader }, 'the leader answers this host directly again: leaving the relay');
                out.redirected = true;
                out.redirectTo = leader;
                out.reason = LEFT_RELAY;
                call.cancel();
              });
            }, RELAY_PROBE_MS);
            probe.unref();
          }
          this.emit('welcome', msg.welcome, address);
        } else if (msg.redirect) {
          out.redirected = true;
          out.redirectTo = msg.redirect.leaderAddress || undefined;
          out.reason = `redirect: ${msg.redirect.reason}`;
        } else if (msg.instruction) {
          this.emit('instruction', msg.instruction);
        } else if (msg.relayKeyUpdate && out.welcomed) {
          this.emit('relayKey', msg.relayKeyUpdate);
        }
      });
      call.on('error', (err: grpc.ServiceError) => {
        if (AGENT_REFUSALS.has(err.code)) this.refused(address, err);
        finish(`${grpc.status[err.code] ?? err.code}: ${err.details}`);
      });
      call.on('end', () => finish(out.reason || 'stream ended by coordinator'));
      call.on('close', () => finish(out.reason || 'stream closed'));
      call.write({ hello: this.hello(unreachableLeader) });
    });
  }
}
