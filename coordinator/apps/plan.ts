// What an apply changes, against the app's current version, as `nomad job plan` and `kubectl
// diff` show it before anything happens: each field that differs (by its path in the component,
// with the value before and after) and, per component, what becomes of its instances: created,
// stopped, replaced by the update strategy (what the instances run changed: componentHash), or
// changed in place with none restarted (the count, the update strategy, the tunables' ranges,
// whether volumes migrate). Both specs are normalised, so a default written out is no change.
import { componentHash } from './records';
import type { NormalAppSpec } from './spec';

export interface SpecChange {
  /** The field's path in the component (`resources.cpuMillis`, `env.LOG_LEVEL`, `ports[http].name`); for the app's own fields, in the app (`labels.team`). */
  field: string;
  /** The value before and after as JSON; empty when it was not set, or is no longer. */
  from: string;
  to: string;
}

export type PlanAction = 'none' | 'create' | 'destroy' | 'replace' | 'in-place';

export interface ComponentPlan {
  /** The component's name; empty for the app's own fields (its labels). */
  component: string;
  action: PlanAction;
  instancesFrom: number;
  instancesTo: number;
  changes: SpecChange[];
  /** Why the counts are not the spec's (a scaling policy's), when they are not. */
  note?: string;
}

/** Each component of either spec (the current one's order, then the new ones), and the app's own fields first when they change. */
export function planChanges(current: NormalAppSpec | undefined, next: NormalAppSpec): ComponentPlan[] {
  const out: ComponentPlan[] = [];
  const appChanges = diff({ labels: current?.labels ?? {} }, { labels: next.labels ?? {} });
  if (current && appChanges.length) out.push({ component: '', action: 'in-place', instancesFrom: 0, instancesTo: 0, changes: appChanges });
  const before = new Map((current?.components ?? []).map((c) => [c.name, c]));
  const after = new Map(next.components.map((c) => [c.name, c]));
  for (const name of new Set([...before.keys(), ...after.keys()])) {
    const was = before.get(name);
    const now = after.get(name);
    if (!was) {
      out.push({ component: name, action: 'create', instancesFrom: 0, instancesTo: now!.instances, changes: [] });
    } else if (!now) {
      out.push({ component: name, action: 'destroy', instancesFrom: was.instances, instancesTo: 0, changes: [] });
    } else {
      const changes = diff(was, now);
      const action: PlanAction = !changes.length ? 'none' : componentHash(was) !== componentHash(now) ? 'replace' : 'in-place';
      out.push({ component: name, action, instancesFrom: was.instances, instancesTo: now.instances, changes });
    }
  }
  return out;
}

/** The leaves that differ between two values, by path. */
function diff(a: unknown, b: unknown, at = '', out: SpecChange[] = []): SpecChange[] {
  if (same(a, b)) return out;
  if (isMap(a) && isMap(b)) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) diff(a[k], b[k], at ? `${at}.${k}` : k, out);
    return out;
  }
  const key = Array.isArray(a) && Array.isArray(b) ? listKey([...a, ...b], a, b) : undefined;
  if (key && Array.isArray(a) && Array.isArray(b)) {
    // Ports and volumes by name, tunables by env var: one added before another is one change, not two.
    const byKey = (l: Record<string, unknown>[]) => new Map(l.map((e) => [String(e[key]), e]));
    const x = byKey(a as Record<string, unknown>[]);
    const y = byKey(b as Record<string, unknown>[]);
    for (const k of new Set([...x.keys(), ...y.keys()])) diff(x.get(k), y.get(k), `${at}[${k}]`, out);
    // The same items in another order: a change too (the instances get them in order).
    const order = (l: unknown[]) => JSON.stringify(l.map((e) => (e as Record<string, unknown>)[key]));
    if (x.size === y.size && [...x.keys()].every((k) => y.has(k)) && order(a) !== order(b)) out.push({ field: `${at}[*]`, from: order(a), to: order(b) });
    return out;
  }
  if (Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every(isMap) && b.every(isMap)) {
    a.forEach((e, i) => diff(e, b[i], `${at}[${i}]`, out));
    return out;
  }
  out.push({ field: at, from: shown(a), to: shown(b) });
  return out;
}

/** The field that names each item of a list of maps (name, or env for tunables), when every item has it and no two share it. */
function listKey(all: unknown[], a: unknown[], b: unknown[]): string | undefined {
  return ['name', 'env'].find((k) => all.every((e) => isMap(e) && typeof e[k] === 'string' && e[k] !== '')
    && new Set(a.map((e) => (e as Record<string, unknown>)[k])).size === a.length && new Set(b.map((e) => (e as Record<string, unknown>)[k])).size === b.length);
}

function isMap(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Absent, null and an empty list or map are one: no setting (normalised specs write some out, some not). */
function empty(x: unknown): boolean {
  return x === undefined || x === null || (Array.isArray(x) && !x.length) || (isMap(x) && !Object.keys(x).length);
}

function same(a: unknown, b: unknown): boolean {
  if (empty(a) && empty(b)) return true;
  return stable(a) === stable(b);
}

function shown(x: unknown): string {
  return empty(x) ? '' : stable(x);
}

function stable(x: unknown): string {
  return JSON.stringify(x, (_k, v) => (isMap(v) ? Object.fromEntries(Object.entries(v).sort(([p], [q]) => p.localeCompare(q))) : v)) ?? '';
}
