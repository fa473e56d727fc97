// The job scheduler's path choice (the second seed's "optimal execution path"), as a pure
// function: for a pipeline of stages, pick one instance per stage (and, where a stage offers
// alternative kinds, the kind) minimising the cost of the whole path:
//
//   instance cost = measured latency (peak EWMA) x its cost hint x (1 + load + queued)
//   load          = the steps expected on it now: each job holding it counts with its step's
//                   share of its path's latency (Little's law), not as a whole job
//   hop cost      = sameHostHopMs when two consecutive steps share a host, else hopMs
//
// The hop term couples neighbouring stages, so the path is solved as a whole (a Viterbi pass
// over the stages), not stage by stage: a slightly slower instance next to the previous step
// can beat a faster one across the network. The job
// runner (jobs/scheduler.ts) builds on it.

export interface Candidate {
  instanceId: string;
  kind: string;
  nodeId: string;
  /** Peak-EWMA latency of one step on this instance, ms. */
  latencyMs: number;
  /** Jobs whose planned path holds this instance (for saturation and display). */
  inFlight: number;
  /**
   * The steps expected on it at a moment: each job holding it weighted by this instance's share
   * of its path's latency (a job spends about that share of its time here). inFlight when absent.
   */
  load?: number;
  queueDepth: number;
  healthy: boolean;
  /** At its admission bound: takes no more work now. */
  saturated?: boolean;
  /** On a node the leader cannot reach (its agent is attached through a follower): not healthy for routing. */
  unreachable?: boolean;
}

export interface StageAlternative {
  kind: string;
  /** Multiplies the latency of instances of this kind (e.g. 0.5: expected twice as fast here). */
  costHint?: number;
}

export interface Stage {
  name: string;
  alternatives: StageAlternative[];
  /** Further conditions on an instance (a version range, an operation it must offer). */
  accept?: (c: Candidate) => boolean;
}

export interface PathOptions {
  hopMs: number;
  sameHostHopMs: number;
  /** Where the job enters (the node of the first hop's sender), if known. */
  originNodeId?: string;
  /** Instances to leave out (a retry after a failure on them). */
  exclude?: ReadonlySet<string>;
  /** Per stage, keep only the cheapest this many instances before the path search. */
  topK?: number;
}

export interface PathStep {
  stage: string;
  kind: string;
  instanceId: string;
  nodeId: string;
  /** This step's instance cost plus the hop into it. */
  costMs: number;
}

export interface PathChoice {
  steps: PathStep[];
  totalMs: number;
}

export class NoPathError extends Error {
  constructor(readonly stage: string, readonly why: string) {
    super(`stage "${stage}": ${why}`);
  }
}

export function instanceCost(c: Candidate, hint = 1): number {
  return Math.max(0.001, c.latencyMs) * hint * (1 + (c.load ?? c.inFlight) + c.queueDepth);
}

/**
 * A stage's pool (the candidates of its kinds that it accepts), kept while the same candidate
 * list is passed again: the scheduler plans every job, and the list (its live figures refreshed
 * in place) is rebuilt only when the registry changes.
 */
const pools = new WeakMap<Stage, { of: Candidate[]; kinds: Map<string, number>; pool: Candidate[] }>();

function poolOf(s: Stage, candidates: Candidate[]): { kinds: Map<string, number>; pool: Candidate[] } {
  const memo = pools.get(s);
  if (memo && memo.of === candidates) return memo;
  const kinds = new Map(s.alternatives.map((a) => [a.kind, a.costHint ?? 1]));
  const fresh = { of: candidates, kinds, pool: candidates.filter((c) => kinds.has(c.kind) && (!s.accept || s.accept(c))) };
  pools.set(s, fresh);
  return fresh;
}

/** ", N on nodes cut off from the leader" when some are. */
function cutOff(pool: Candidate[]): string {
  const n = pool.filter((c) => c.unreachable).length;
  return n ? `, ${n} on nodes cut off from the leader (attached through a follower)` : '';
}

export function choosePath(stages: Stage[], candidates: Candidate[], o: PathOptions): PathChoice {
  type Node = { c: Candidate; own: number; best: number; prev: number };
  const layers: Node[][] = stages.map((s) => {
    const { kinds, pool } = poolOf(s, candidates);
    let usable = pool;
    for (const c of pool) {
      if (c.healthy && !c.saturated && !o.exclude?.has(c.instanceId)) continue;
      usable = pool.filter((x) => x.healthy && !x.saturated && !o.exclude?.has(x.instanceId));
      break;
    }
    if (!usable.length) {
      const why = !pool.length
        ? `no instance of ${s.alternatives.map((a) => a.kind).join(' or ')} is registered`
        : `none of ${pool.length} instance(s) of ${[...kinds.keys()].join(' or ')} can take work (${pool.filter((c) => !c.healthy && !c.unreachable).length} unhealthy, ${pool.filter((c) => c.saturated).length} saturated, ${pool.filter((c) => o.exclude?.has(c.instanceId)).length} excluded${cutOff(pool)})`;
      throw new NoPathError(s.name, why);
    }
    const nodes = usable.map((c) => ({ c, own: instanceCost(c, kinds.get(c.kind)), best: Infinity, prev: -1 }));
    nodes.sort((a, b) => a.own - b.own);
    return o.topK ? keepLocalOptions(nodes, o.topK) : nodes;
  });
  const hop = (from: string | undefined, to: string) => (from === undefined ? 0 : from === to ? o.sameHostHopMs : o.hopMs);
  for (const n of layers[0]) n.best = n.own + hop(o.originNodeId, n.c.nodeId);
  for (let i = 1; i < layers.length; i++) {
    for (const n of layers[i]) {
      for (let j = 0; j < layers[i - 1].length; j++) {
        const p = layers[i - 1][j];
        const v = p.best + hop(p.c.nodeId, n.c.nodeId) + n.own;
        if (v < n.best) {
          n.best = v;
          n.prev = j;
        }
      }
    }
  }
  const last = layers[layers.length - 1];
  let k = last.reduce((bi, n, i) => (n.best < last[bi].best ? i : bi), 0);
  const steps: PathStep[] = [];
  for (let i = layers.length - 1; i >= 0; i--) {
    const n = layers[i][k];
    const prevNode = i > 0 ? layers[i - 1][n.prev].c.nodeId : o.originNodeId;
    steps.unshift({ stage: stages[i].name, kind: n.c.kind, instanceId: n.c.instanceId, nodeId: n.c.nodeId, costMs: round(n.own + hop(prevNode, n.c.nodeId)) });
    k = n.prev;
  }
  return { steps, totalMs: round(last.reduce((m, n) => Math.min(m, n.best), Infinity)) };
}

/** Keeps the k cheapest, plus the cheapest on every node among them (locality options). */
function keepLocalOptions<T extends { c: Candidate; own: number }>(sorted: T[], k: number): T[] {
  if (sorted.length <= k) return sorted;
  const keep = sorted.slice(0, k);
  const nodes = new Set(keep.map((n) => n.c.nodeId));
  for (const n of sorted.slice(k)) {
    if (!nodes.has(n.c.nodeId)) {
      keep.push(n);
      nodes.add(n.c.nodeId);
    }
  }
  return keep;
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
