// Feasibility filters: pure functions (node, request) -> undefined (fits) or a named reason.
// Cheapest first; the first one that says no is the reason shown for that node.
import type { NodeView, PlacementRequest } from './types';

export const Reason = {
  NODE_NOT_READY: 'node-not-ready',
  NODE_DRAINING: 'node-draining',
  RUNTIME_DOWN: 'runtime-down',
  DISK_PRESSURE: 'disk-pressure',
  NODE_CONDITION: 'node-condition',
  CORDONED: 'cordoned',
  CONSTRAINT: 'constraint',
  DISTINCT_HOSTS: 'distinct-hosts',
  INSUFFICIENT_CPU: 'insufficient-cpu',
  INSUFFICIENT_MEMORY: 'insufficient-memory',
  PORT_IN_USE: 'port-in-use',
  NO_FREE_PORT: 'no-free-port',
} as const;
export type ReasonCode = (typeof Reason)[keyof typeof Reason];

export interface Rejection {
  code: ReasonCode;
  detail: string;
}

export type Filter = (node: NodeView, req: PlacementRequest) => Rejection | undefined;

const nodeReady: Filter = (n) => {
  if (n.state === 'DRAINING') return { code: Reason.NODE_DRAINING, detail: 'node is draining' };
  if (n.state !== 'READY') return { code: Reason.NODE_NOT_READY, detail: `node is ${n.state}` };
  if (n.cordoned !== undefined) return { code: Reason.CORDONED, detail: `node is cordoned: ${n.cordoned}` };
  // A condition (the first, if several hold) keeps new instances off the node.
  const [type, why] = Object.entries(n.conditions ?? {})[0] ?? [];
  if (type === undefined) return undefined;
  if (type === Reason.RUNTIME_DOWN || type === Reason.DISK_PRESSURE) return { code: type, detail: why };
  return { code: Reason.NODE_CONDITION, detail: `${type}: ${why}` };
};

const constraints: Filter = (n, r) => {
  for (const c of r.constraints) {
    const has = Object.prototype.hasOwnProperty.call(n.labels, c.label);
    const v = n.labels[c.label];
    let ok: boolean;
    switch (c.op) {
      case '=': ok = v === c.value; break;
      case '!=': ok = v !== c.value; break;
      case 'in': ok = has && c.values.includes(v); break;
      case 'not_in': ok = !has || !c.values.includes(v); break;
      case 'exists': ok = has; break;
      default: ok = false;
    }
    if (!ok) return { code: Reason.CONSTRAINT, detail: `constraint ${c.label} ${c.op} ${c.op === 'in' || c.op === 'not_in' ? c.values.join('|') : c.value} not met (${c.label}=${has ? v : 'unset'})` };
  }
  return undefined;
};

const distinctHosts: Filter = (n, r) =>
  r.distinctHosts && (n.groups.get(r.group) ?? 0) > 0 ? { code: Reason.DISTINCT_HOSTS, detail: `an instance of ${r.group} already runs here` } : undefined;

const cpu: Filter = (n, r) => {
  const free = n.capacity.cpuMillis - n.allocated.cpuMillis;
  return r.resources.cpuMillis > free ? { code: Reason.INSUFFICIENT_CPU, detail: `insufficient cpu: ${free}m free, ${r.resources.cpuMillis}m asked` } : undefined;
};

const memory: Filter = (n, r) => {
  const free = n.capacity.memoryMib - n.allocated.memoryMib;
  return r.resources.memoryMib > free ? { code: Reason.INSUFFICIENT_MEMORY, detail: `insufficient memory: ${free} MiB free, ${r.resources.memoryMib} MiB asked` } : undefined;
};

const ports: Filter = (n, r) => {
  let dynamic = 0;
  for (const p of r.ports) {
    if (p.port === 0) dynamic++;
    else if (n.usedPorts.has(p.port)) return { code: Reason.PORT_IN_USE, detail: `port ${p.port} is in use` };
  }
  if (dynamic) {
    const size = n.portRange.end - n.portRange.start + 1;
    let usedInRange = 0;
    if (size > 0 && n.usedPorts.size) for (const u of n.usedPorts) if (u >= n.portRange.start && u <= n.portRange.end) usedInRange++;
    if (size - usedInRange < dynamic) return { code: Reason.NO_FREE_PORT, detail: `no free port in ${n.portRange.start}-${n.portRange.end}` };
  }
  return undefined;
};

/** In order of cost: state, labels, group, arithmetic, then ports. */
export const FILTERS: readonly Filter[] = [nodeReady, constraints, distinctHosts, cpu, memory, ports];

export function firstRejection(n: NodeView, r: PlacementRequest): Rejection | undefined {
  for (const f of FILTERS) {
    const no = f(n, r);
    if (no) return no;
  }
  return undefined;
}
