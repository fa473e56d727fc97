// Node lifecycle: the states, the one transition function with its allowed-from table, and
// the pure rule that says which state a node should be in. Desired (drain) and observed
// (last report) inputs are kept apart; the state is derived from both.
export type NodeState = 'READY' | 'DOWN' | 'DRAINING';

const ALLOWED_FROM: Record<NodeState, ReadonlyArray<NodeState | 'NEW'>> = {
  READY: ['NEW', 'DOWN', 'DRAINING'],
  DRAINING: ['NEW', 'READY', 'DOWN'],
  DOWN: ['READY', 'DRAINING'],
};

export class IllegalTransitionError extends Error {
  constructor(readonly from: NodeState | 'NEW', readonly to: NodeState) {
    super(`node state cannot go from ${from} to ${to}`);
  }
}

/** The only way a node's state changes. Same-state is a no-op, not a transition. */
export function transition(from: NodeState | 'NEW', to: NodeState): NodeState {
  if (from === to) return to;
  if (!ALLOWED_FROM[to].includes(from)) throw new IllegalTransitionError(from, to);
  return to;
}

export interface LivenessInput {
  current: NodeState | 'NEW';
  drain: boolean;
  /** When the leader last heard from the node (0: never during this leadership). */
  lastSeenMs: number;
  nowMs: number;
  heartbeatTimeoutMs: number;
  /** Until this time a new leader does not mark nodes DOWN: agents are reconnecting. */
  graceUntilMs: number;
}

export interface StateDecision {
  state: NodeState;
  reason: string;
}

/** Which state the node should be in now. Pure. */
export function decideNodeState(i: LivenessInput): StateDecision {
  const silentMs = i.nowMs - i.lastSeenMs;
  const alive = i.lastSeenMs > 0 && silentMs <= i.heartbeatTimeoutMs;
  const live: StateDecision = i.drain
    ? { state: 'DRAINING', reason: 'drain requested' }
    : { state: 'READY', reason: 'agent reporting' };
  if (alive) return live;
  if (i.nowMs < i.graceUntilMs && i.current !== 'DOWN' && i.current !== 'NEW') {
    // A new leader has not heard from this agent yet; keep what the previous leader saw.
    return { state: i.current, reason: 'failover grace: waiting for the agent to reconnect' };
  }
  const secs = i.lastSeenMs > 0 ? `${(silentMs / 1000).toFixed(1)} s` : 'since this leader was elected';
  return { state: 'DOWN', reason: `no report for ${secs} (timeout ${i.heartbeatTimeoutMs / 1000} s)` };
}
