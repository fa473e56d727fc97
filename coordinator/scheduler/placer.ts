// place(): requests -> plan, over a snapshot it does not modify. For each request it walks the
// nodes from a rotating random offset, keeps the feasible ones until it has sampleSize of them
// (Nomad and kube-scheduler sample the same way on large clusters), scores those, and takes the
// best. It accounts each placement in a working copy, so one plan never over-commits a node.
// When nothing fits it scans every node, so the answer says per node why not.
import { firstRejection } from './filters';
import { score } from './scores';
import type { NodeView, Placement, PlacementFailure, PlacementRequest, Plan, SchedulerOptions } from './types';

export const DEFAULT_OPTIONS: SchedulerOptions = { sampleSize: 0, random: Math.random };

function cloneNode(n: NodeView): NodeView {
  return { ...n, allocated: { ...n.allocated }, usedPorts: new Set(n.usedPorts), groups: new Map(n.groups) };
}

export function adaptiveSample(nodes: number): number {
  return Math.max(50, Math.ceil(nodes * 0.02));
}

export class Placer {
  private readonly nodes: NodeView[];
  private readonly sample: number;
  private readonly portCursor = new Map<string, number>();

  constructor(snapshot: readonly NodeView[], private readonly opts: SchedulerOptions = DEFAULT_OPTIONS) {
    this.nodes = snapshot.map(cloneNode);
    this.sample = opts.sampleSize > 0 ? opts.sampleSize : adaptiveSample(this.nodes.length);
  }

  /** The working copy after the placements so far (for tests and for chaining plans). */
  get view(): readonly NodeView[] {
    return this.nodes;
  }

  placeAll(requests: PlacementRequest[]): Plan {
    const plan: Plan = { placements: [], failures: [] };
    for (const r of requests) {
      const p = this.placeOne(r);
      if ('nodeId' in p) plan.placements.push(p);
      else plan.failures.push(p);
    }
    return plan;
  }

  placeOne(r: PlacementRequest): Placement | PlacementFailure {
    const n = this.nodes.length;
    if (!n) return { request: r, reasons: {}, counts: { 'no-nodes': 1 } };
    // A slot's volumes are on one node: back there whenever it can take the instance.
    const home = r.prefer !== undefined ? this.nodes.find((x) => x.id === r.prefer) : undefined;
    if (home && !firstRejection(home, r)) return this.take(home, r, score(home, r));
    const start = Math.floor(this.opts.random() * n);
    let best: NodeView | undefined;
    let bestScore = -1;
    let feasible = 0;
    for (let i = 0; i < n && feasible < this.sample; i++) {
      const node = this.nodes[(start + i) % n];
      if (firstRejection(node, r)) continue;
      feasible++;
      const s = score(node, r);
      if (s > bestScore) {
        bestScore = s;
        best = node;
      }
    }
    if (!best) return this.explain(r);
    return this.take(best, r, bestScore);
  }

  private take(node: NodeView, r: PlacementRequest, s: number): Placement {
    const ports = this.allocatePorts(node, r);
    node.allocated.cpuMillis += r.resources.cpuMillis;
    node.allocated.memoryMib += r.resources.memoryMib;
    node.groups.set(r.group, (node.groups.get(r.group) ?? 0) + 1);
    return { request: r, nodeId: node.id, ports, score: Math.round(s) };
  }

  private explain(r: PlacementRequest): PlacementFailure {
    const reasons: Record<string, string> = {};
    const counts: Record<string, number> = {};
    for (const node of this.nodes) {
      const no = firstRejection(node, r);
      if (!no) continue;
      counts[no.code] = (counts[no.code] ?? 0) + 1;
      if (Object.keys(reasons).length < 100) reasons[node.id] = `${no.code}: ${no.detail}`;
    }
    return { request: r, reasons, counts };
  }

  private allocatePorts(node: NodeView, r: PlacementRequest): Record<string, number> {
    const out: Record<string, number> = {};
    for (const p of r.ports) {
      if (p.port) {
        out[p.name] = p.port;
        node.usedPorts.add(p.port);
        continue;
      }
      const { start, end } = node.portRange;
      let cur = this.portCursor.get(node.id) ?? start;
      for (let tries = 0; tries <= end - start; tries++) {
        if (cur > end) cur = start;
        if (!node.usedPorts.has(cur)) break;
        cur++;
      }
      out[p.name] = cur;
      node.usedPorts.add(cur);
      this.portCursor.set(node.id, cur + 1);
    }
    return out;
  }
}

/** One-shot helper: a plan for these requests over this snapshot. */
export function place(snapshot: readonly NodeView[], requests: PlacementRequest[], opts: SchedulerOptions = DEFAULT_OPTIONS): Plan {
  return new Placer(snapshot, opts).placeAll(requests);
}
