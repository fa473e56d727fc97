// The scheduler's vocabulary. A snapshot is a frozen view of the cluster; a plan is what the
// scheduler decided; only the leader commits plans (see coordinator/reconciler.ts).
export type NodeStateName = 'READY' | 'DOWN' | 'DRAINING';

export interface NodeView {
  id: string;
  state: NodeStateName;
  labels: Readonly<Record<string, string>>;
  capacity: { cpuMillis: number; memoryMib: number };
  allocated: { cpuMillis: number; memoryMib: number };
  portRange: { start: number; end: number };
  usedPorts: Set<number>;
  /** "app/component" -> instances of that component on this node. */
  groups: Map<string, number>;
  /** The conditions that hold on the node (type -> why): while any does, it takes no new instances. */
  conditions?: Readonly<Record<string, string>>;
  /** Set (the reason) while an operator has cordoned the node: no new instances. */
  cordoned?: string;
}

export interface ConstraintSpec {
  label: string;
  op: string;
  value: string;
  values: string[];
}

export interface PlacementRequest {
  app: string;
  component: string;
  slot: number;
  /** "app/component": the anti-affinity and distinct-hosts group. */
  group: string;
  resources: { cpuMillis: number; memoryMib: number };
  /** name -> fixed port (0 = dynamic). */
  ports: { name: string; port: number }[];
  constraints: ConstraintSpec[];
  placement: 'spread' | 'binpack';
  distinctHosts: boolean;
  /** Nodes to avoid (e.g. where the instance being replaced failed), a soft preference. */
  avoid?: ReadonlySet<string>;
  /** The node that holds the slot's volumes: taken whenever it passes every filter (before avoid and scores). */
  prefer?: string;
  /** The component kind (per-kind quotas apply to it). */
  kind?: string;
}

export interface Placement {
  request: PlacementRequest;
  nodeId: string;
  ports: Record<string, number>;
  score: number;
}

export interface PlacementFailure {
  request: PlacementRequest;
  /** node id -> why not (named reason plus detail). */
  reasons: Record<string, string>;
  /** reason code -> how many nodes gave it. */
  counts: Record<string, number>;
}

export interface Plan {
  placements: Placement[];
  failures: PlacementFailure[];
}

export interface SchedulerOptions {
  /** Stop scanning once this many feasible nodes were found (0 = adaptive: max(50, 2% of nodes)). */
  sampleSize: number;
  /** Random source, injectable for tests. */
  random: () => number;
}
