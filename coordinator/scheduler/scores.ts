// Scores: pure functions (node, request) -> 0..100, higher is better, combined by weight.
// A strategy is picked by name from a registry; an unknown name is a spec error upstream.
import type { NodeView, PlacementRequest } from './types';

export type Scorer = (node: NodeView, req: PlacementRequest) => number;

function utilisationAfter(n: NodeView, r: PlacementRequest): number {
  const cpu = n.capacity.cpuMillis > 0 ? (n.allocated.cpuMillis + r.resources.cpuMillis) / n.capacity.cpuMillis : 1;
  const mem = n.capacity.memoryMib > 0 ? (n.allocated.memoryMib + r.resources.memoryMib) / n.capacity.memoryMib : 1;
  return Math.min(1, (cpu + mem) / 2);
}

/** Fill nodes up: the fuller after placement, the better (fewer hosts busy). */
export const binpack: Scorer = (n, r) => 100 * utilisationAfter(n, r);
/** Keep headroom everywhere: the emptier after placement, the better. */
export const spread: Scorer = (n, r) => 100 * (1 - utilisationAfter(n, r));
/** Keep instances of one component apart: 100 with none here, falling with each one. */
export const antiAffinity: Scorer = (n, r) => 100 / (1 + (n.groups.get(r.group) ?? 0));
/** A soft push away from nodes the request asks to avoid. */
export const avoid: Scorer = (n, r) => (r.avoid?.has(n.id) ? 0 : 100);

export const STRATEGIES: Record<'spread' | 'binpack', { scorer: Scorer; weight: number }[]> = {
  spread: [{ scorer: antiAffinity, weight: 3 }, { scorer: spread, weight: 1 }, { scorer: avoid, weight: 2 }],
  binpack: [{ scorer: binpack, weight: 3 }, { scorer: antiAffinity, weight: 1 }, { scorer: avoid, weight: 2 }],
};

/** Weighted mean of the strategy's scores: 0..100. */
export function score(n: NodeView, r: PlacementRequest): number {
  const parts = STRATEGIES[r.placement];
  let total = 0;
  let weights = 0;
  for (const p of parts) {
    total += p.weight * p.scorer(n, r);
    weights += p.weight;
  }
  return total / weights;
}
