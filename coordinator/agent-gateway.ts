// AgentGateway.Connect: one bidirectional stream per agent. The first message must be a hello.
// A follower answers with a redirect to the leader (waiting briefly if no leader is known yet,
// so agents re-attach right after an election rather than after a backoff). An agent that says
// it cannot reach the leader the follower believes in (a partition between them alone, or a
// leader that died with its lease still running) has its stream relayed to the leader by the
// follower, as Nomad's servers forward client RPCs; if the leader does not answer the follower
// either, it holds the stream until the election moves on. On the leader the stream carries
// reports up and instructions down. Each stream's messages are handled in order; a malformed
// message closes that stream alone with INVALID_ARGUMENT.
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, PermissionDeniedError, TesseraError, toServiceError, UnavailableError } from '../common/errors';
import { peerIdentity } from '../common/tls';
import { AGENT_REFUSALS, dial, malformedReason } from '../common/grpc';
import type { Logger } from '../common/logger';
import type { AgentMessage, AgentMessage__Output } from '../common/generated/tessera/v1/AgentMessage';
import type { AgentHello__Output } from '../common/generated/tessera/v1/AgentHello';
import type { AgentGatewayClient, AgentGatewayHandlers } from '../common/generated/tessera/v1/AgentGateway';
import type { CoordinatorMessage, CoordinatorMessage__Output } from '../common/generated/tessera/v1/CoordinatorMessage';
import type { Instruction } from '../common/generated/tessera/v1/Instruction';
import type { InstructionAck__Output } from '../common/generated/tessera/v1/InstructionAck';
import type { InstanceEvent__Output } from '../common/generated/tessera/v1/InstanceEvent';
import type { RelayKey, RelayKeyRing } from '../common/relay-ticket';
import { failpoint } from '../common/failpoints';
import type { CandidateInfo, Leadership } from './leadership';
import type { NodeRegistry } from './node-registry';

type Stream = grpc.ServerDuplexStream<AgentMessage__Output, CoordinatorMessage>;

export const NODE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export interface GatewayOptions {
  coordinatorId: string;
  reportIntervalMs: number;
  heartbeatTimeoutMs: number;
  helloTimeoutMs?: number;
  /** How long a follower holds a new stream while no leader is known. */
  leaderWaitMs?: number;
  /** mTLS: only agent certificates may connect, and only as the node their certificate names (or a coordinator's, relaying an agent's stream). */
  requireAgentCert?: boolean;
  /** A client of a leader's AgentGateway with this coordinator's credentials: for relaying the stream of an agent that cannot reach the leader. */
  leaderGateway?: (address: string) => AgentGatewayClient;
  /** How long a follower waits for the leader's transport before it gives up relaying (default 3 s). */
  relayDialMs?: number;
  /** The keys this coordinator signs relay tickets with (common/relay-ticket.ts): given to agents in the Welcome, and pushed to them as they rotate. */
  relayKeys?: RelayKeyRing;
}

/** What the leader's other parts hear from agents. */
export interface AgentListener {
  onInstanceEvent?(nodeId: string, e: InstanceEvent__Output): void;
  onAck?(nodeId: string, a: InstructionAck__Output): void;
  onAttached?(nodeId: string): void;
}

interface Session {
  id: string;
  nodeId: string;
  call: Stream;
  closed: boolean;
  /** On a follower: the stream to the leader this agent's stream is relayed on. */
  relay?: grpc.ClientDuplexStream<AgentMessage, CoordinatorMessage__Output>;
}

export class AgentGateway {
  private sessions = new Map<string, Session>();
  private listeners: AgentListener[] = [];

  constructor(
    private readonly leadership: Leadership,
    private readonly registry: () => NodeRegistry | undefined,
    private readonly opts: GatewayOptions,
    private readonly log: Logger,
  ) {
    opts.relayKeys?.onRotate((k) => this.pushRelayKey(k));
  }

  /** A rotated relay ticket key, to every agent attached to this leader (before it signs anything). */
  private pushRelayKey(k: RelayKey): void {
    const sessions = [...this.sessions.values()];
    // relayKeyPush: a test withholds the key from the agents (as from an agent that was away), to see the leader run the refused relays.
    // relayKeyPushTo@<node>: from one agent only (it gets the key back with its next Welcome).
    void failpoint('relayKeyPush').then(() => {
      const update = { relayKeyUpdate: { coordinatorId: this.opts.coordinatorId, keyId: k.id, key: k.key } };
      for (const s of sessions) {
        void failpoint('relayKeyPushTo', s.nodeId).then(() => {
          if (!s.closed) s.call.write(update);
        }, (err) => this.log.warn({ keyId: k.id, node: s.nodeId, err: (err as Error).message }, 'relay ticket key not given to the agent'));
      }
      if (sessions.length) this.log.debug({ keyId: k.id, agents: sessions.length }, 'relay ticket key given to the agents');
    }, (err) => this.log.warn({ keyId: k.id, err: (err as Error).message }, 'relay ticket key not given to the agents'));
  }

  addListener(l: AgentListener): void {
    this.listeners.push(l);
  }

  handlers(): AgentGatewayHandlers {
    return { Connect: (call: Stream) => this.connect(call) };
  }

  connectedNodes(): string[] {
    return [...this.sessions.keys()];
  }

  /** Whether a node's agent has a stream to this leader (a lookup: connectedNodes() copies the list). */
  isConnected(nodeId: string): boolean {
    return this.sessions.has(nodeId);
  }

  /** Sends an instruction to a connected agent; false if it has no stream to this leader. */
  send(nodeId: string, instruction: Instruction): boolean {
    const s = this.sessions.get(nodeId);
    if (!s || s.closed) return false;
    s.call.write({ instruction });
    return true;
  }

  /** On demotion or shutdown: tell every agent where to go, and close its stream. */
  closeAll(reason: string): void {
    for (const s of [...this.sessions.values()]) this.handOver(s, reason);
  }

  /** Ends a session with a redirect to the leader this coordinator knows of (none: the agent tries its other addresses). */
  private handOver(s: Session, reason: string): void {
    const leader = this.leadership.leader;
    const redirectTo = leader && !this.leadership.isSelf(leader) ? leader : undefined;
    this.close(s, { redirect: { leaderId: redirectTo?.id ?? '', leaderAddress: redirectTo?.address ?? '', reason } });
  }

  private close(s: Session, last?: CoordinatorMessage, err?: TesseraError | grpc.StatusObject): void {
    if (s.closed) return;
    s.closed = true;
    this.dropRelay(s);
    if (this.sessions.get(s.nodeId) === s) this.sessions.delete(s.nodeId);
    this.registry()?.disconnected(s.nodeId, s.id);
    try {
      if (last) s.call.write(last);
      if (err) s.call.emit('error', err instanceof TesseraError ? toServiceError(err) : err);
      else s.call.end();
    } catch {
      /* the transport is already gone */
    }
  }

  private connect(call: Stream): void {
    const peer = call.getPeer();
    const session: Session = { id: randomUUID(), nodeId: '', call, closed: false };
    let chain = Promise.resolve();
    const helloTimer = setTimeout(() => {
      if (!session.nodeId) this.close(session, undefined, InvalidArgumentError.field('hello', `no hello within ${this.opts.helloTimeoutMs ?? 10_000} ms`));
    }, this.opts.helloTimeoutMs ?? 10_000);
    helloTimer.unref();

    const fail = (err: unknown) => {
      const e = err instanceof TesseraError ? err : undefined;
      this.log.warn({ peer, node: session.nodeId, err: (err as Error).message }, 'agent stream closed on error');
      this.close(session, undefined, e);
      if (!e && !session.closed) call.emit('error', toServiceError(err));
    };

    call.on('data', (msg: AgentMessage__Output) => {
      chain = chain.then(() => (session.closed ? undefined : this.handle(session, msg, peer))).catch(fail);
    });
    call.on('end', () => {
      clearTimeout(helloTimer);
      chain = chain.then(() => this.close(session));
    });
    call.on('error', (err) => {
      clearTimeout(helloTimer);
      this.log.debug({ node: session.nodeId, err: err.message }, 'agent stream error');
      session.closed = true;
      this.dropRelay(session);
      if (this.sessions.get(session.nodeId) === session) this.sessions.delete(session.nodeId);
      this.registry()?.disconnected(session.nodeId, session.id);
    });
    call.on('cancelled', () => {
      session.closed = true;
      this.dropRelay(session);
      if (this.sessions.get(session.nodeId) === session) this.sessions.delete(session.nodeId);
      this.registry()?.disconnected(session.nodeId, session.id);
    });
  }

  private async handle(s: Session, msg: AgentMessage__Output, peer: string): Promise<void> {
    const bad = malformedReason(msg);
    if (bad !== undefined) throw InvalidArgumentError.field('AgentMessage', `malformed protobuf message: ${bad}`);
    if (!s.nodeId) {
      if (msg.msg !== 'hello' || !msg.hello) throw InvalidArgumentError.field('AgentMessage.msg', `the first message on the stream must be a hello, got ${msg.msg ?? 'nothing'}`);
      await this.hello(s, msg, peer);
      return;
    }
    if (s.relay) {
      s.relay.write(msg as AgentMessage);
      return;
    }
    const registry = this.registry();
    if (!registry) {
      // No longer leading (resigned on a graceful stop, or demoted) with the agent's stream still
      // open: hand it over as closeAll does. An error here named this coordinator itself as the
      // leader while its view was stale, and the agent took a graceful stop for a lost leader.
      this.handOver(s, 'this coordinator no longer leads');
      return;
    }
    if (!registry.known(s.nodeId)) {
      // Removed (tessera node remove, node GC) while its stream stayed open: it registers again
      // with the hello of its next stream.
      this.close(s, undefined, new UnavailableError(`node ${s.nodeId} was removed; connect again to register`));
      return;
    }
    registry.touch(s.nodeId);
    switch (msg.msg) {
      case 'report':
        registry.report(s.nodeId, msg.report!);
        return;
      case 'event':
        for (const l of this.listeners) l.onInstanceEvent?.(s.nodeId, msg.event!);
        return;
      case 'ack':
        for (const l of this.listeners) l.onAck?.(s.nodeId, msg.ack!);
        return;
      case 'hello':
        throw InvalidArgumentError.field('AgentMessage.hello', 'hello was already received on this stream');
      default:
        throw InvalidArgumentError.field('AgentMessage.msg', 'empty message');
    }
  }

  private async hello(s: Session, msg: AgentMessage__Output, peer: string): Promise<void> {
    const h = msg.hello!;
    if (!NODE_ID_RE.test(h.nodeId)) {
      throw InvalidArgumentError.field('hello.nodeId', `must match ${NODE_ID_RE.source}, got ${JSON.stringify(h.nodeId)}`);
    }
    if (!h.hostname) throw InvalidArgumentError.field('hello.hostname', 'must not be empty');
    if (this.opts.requireAgentCert) {
      const peer = peerIdentity(s.call);
      if (h.relayedBy) {
        // A follower relays the stream of an agent whose certificate it checked.
        if (peer.role !== 'coordinator') throw new PermissionDeniedError(`only a coordinator may relay an agent's stream (this certificate is ${peer.role})`);
      } else {
        if (peer.role !== 'agent') throw new PermissionDeniedError(`only agent certificates may connect here (this one is ${peer.role})`);
        if (peer.cn !== h.nodeId) throw new PermissionDeniedError(`the certificate is for node "${peer.cn}"; it cannot report as "${h.nodeId}"`);
      }
    }
    s.nodeId = h.nodeId;

    let registry = this.registry();
    if (!registry) {
      let leader = await this.leadership.waitForLeader(this.opts.leaderWaitMs ?? 5_000);
      if (leader && h.unreachableLeader && leader.address === h.unreachableLeader && !h.relayedBy && !this.leadership.isSelf(leader)) {
        // The agent could not reach the leader we believe in: cut off from it alone (relay its
        // stream there), or the leader is dead with its lease not yet expired (it does not answer
        // us either: hold the stream until the election moves on, then redirect).
        if (await this.relay(s, h, leader)) return;
        leader = await this.leadership.waitForLeaderOtherThan(leader.key, this.opts.leaderWaitMs ?? 5_000);
      }
      registry = this.registry();
      if (!registry || !this.leadership.isSelf(leader)) {
        const target = leader && !this.leadership.isSelf(leader) ? leader : undefined;
        this.log.debug({ node: h.nodeId, leader: target?.address }, 'redirecting agent');
        this.close(s, { redirect: { leaderId: target?.id ?? '', leaderAddress: target?.address ?? '', reason: target ? 'not the leader' : 'no leader elected yet' } });
        return;
      }
    }
    const refused = registry.refusal(h);
    if (refused) {
      // Another agent holds this node id: its stream stays; this one is told why.
      this.close(s, undefined, refused);
      return;
    }
    const fence = this.leadership.fence();
    await registry.hello(h, s.id);
    if (s.closed) {
      registry.disconnected(h.nodeId, s.id);
      return;
    }
    // Connected only once the registry knows what the agent runs: before, a dispatch while the
    // hello was being stored saw the node connected with nothing observed and sent the RUN of
    // every instance it runs (a new leader that could not open an instance's secret then said the
    // running instance was not started).
    const old = this.sessions.get(h.nodeId);
    this.sessions.set(h.nodeId, s);
    if (old && old !== s) {
      this.log.info({ node: h.nodeId }, 'agent reconnected; closing its older stream');
      this.close(old);
    }
    s.call.write({
      welcome: {
        coordinatorId: this.opts.coordinatorId,
        leaderTerm: fence?.term ?? 0,
        reportIntervalMs: this.opts.reportIntervalMs,
        heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs,
        relayKeyId: this.opts.relayKeys?.current.id ?? '',
        relayKey: this.opts.relayKeys?.current.key ?? Buffer.alloc(0),
      },
    });
    // A rotation under way: its key too, before it signs.
    const pending = this.opts.relayKeys?.pending;
    if (pending) s.call.write({ relayKeyUpdate: { coordinatorId: this.opts.coordinatorId, keyId: pending.id, key: pending.key } });
    if (h.relayedBy) this.log.warn({ node: h.nodeId, hostname: h.hostname, relayedBy: h.relayedBy, instances: h.instances.length }, `agent attached through ${h.relayedBy}: it cannot reach this leader itself`);
    else this.log.info({ node: h.nodeId, hostname: h.hostname, peer, instances: h.instances.length }, 'agent attached');
    for (const l of this.listeners) l.onAttached?.(h.nodeId);
  }

  /**
   * On a follower: opens a stream to the leader for an agent that cannot reach it and passes the
   * messages both ways (the hello marked relayed). True once the leader has answered on it (the
   * stream is then the agent's way to the leader until either side ends it); false when the
   * leader cannot be reached from here either.
   */
  private async relay(s: Session, h: AgentHello__Output, leader: CandidateInfo): Promise<boolean> {
    const client = this.opts.leaderGateway?.(leader.address);
    if (!client) return false;
    if ((await dial(client as unknown as grpc.Client, this.opts.relayDialMs ?? 3_000)) !== 'ready') return false;
    if (s.closed) return true;
    const up = client.Connect();
    // Held by the session from the start: an agent that leaves before the leader answers has it cancelled too.
    s.relay = up;
    return new Promise<boolean>((resolve) => {
      let answered = false;
      up.on('data', (m: CoordinatorMessage__Output) => {
        if (!answered) {
          answered = true;
          this.log.warn({ node: h.nodeId, leader: leader.id, address: leader.address }, `relaying the stream of node ${h.nodeId} to the leader ${leader.id}: the agent cannot reach it`);
          resolve(true);
        }
        // The welcome says it is relayed, and where the leader is: the agent goes back to it directly once it can.
        const out = (m.welcome ? { ...m, welcome: { ...m.welcome, relayedBy: this.opts.coordinatorId, leaderAddress: leader.address } } : m) as CoordinatorMessage;
        if (!s.closed) s.call.write(out);
      });
      const ended = (err?: grpc.ServiceError) => {
        if (!answered) {
          answered = true;
          if (s.relay === up) s.relay = undefined;
          // The leader refused the agent itself: the agent hears why. Otherwise it is held as before.
          if (err && AGENT_REFUSALS.has(err.code)) {
            this.close(s, undefined, { code: err.code, details: err.details, metadata: err.metadata });
            resolve(true);
          } else resolve(false);
          return;
        }
        if (s.relay !== up) return;
        s.relay = undefined;
        this.close(s, undefined, err ? { code: grpc.status.UNAVAILABLE, details: `the leader ended the stream relayed through ${this.opts.coordinatorId}: ${err.details}`, metadata: new grpc.Metadata() } : undefined);
      };
      up.on('error', (err: grpc.ServiceError) => ended(err));
      up.on('end', () => ended());
      up.write({ hello: { ...h, unreachableLeader: '', relayedBy: this.opts.coordinatorId } } as AgentMessage);
    });
  }

  private dropRelay(s: Session): void {
    const up = s.relay;
    if (!up) return;
    s.relay = undefined;
    try {
      up.cancel();
    } catch {
      /* gone */
    }
  }
}
