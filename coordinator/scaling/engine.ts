// The scheduling deployment policy engine (the first seed), as pure functions:
//   policy + a window of figures (performance and task-processing state per instance)
//     -> a deployment instruction: an attribute, its allowed range, the chosen value, and why.
// Several checks combine to the safest answer (the one that keeps most capacity), as
// Kubernetes' HPA and the Nomad Autoscaler do; stabilisation windows, rate limits and a
// cooldown keep it from flapping; missing figures never cause a scale-down.

export type Metric = 'cpu' | 'memory' | 'latency_p95' | 'queue_depth' | 'in_flight' | 'processing_rate' | string; // or custom:<name>
export const METRICS = ['cpu', 'memory', 'latency_p95', 'queue_depth', 'in_flight', 'processing_rate'] as const;

export interface Check {
  metric: Metric;
  /**
   * cpu, memory: percent of the reservation per instance; latency_p95: ms; queue_depth,
   * in_flight, custom:*: per instance; processing_rate: tasks/s one instance should handle.
   */
  target: number;
}

export interface RateLimit {
  stabilizationMs: number;
  maxInstances: number;   // per period
  maxPercent: number;     // per period; the larger of the two limits applies
  periodMs: number;
}

export interface Schedule {
  days: number[];   // 0 = Sunday; empty = every day (UTC)
  start: string;    // "HH:MM" UTC
  end: string;      // "HH:MM" UTC, exclusive; may wrap past midnight
  min: number;
  max: number;
}

export interface Range { min: number; max: number }

export interface Policy {
  min: number;
  max: number;
  checks: Check[];
  tolerance: number;
  scaleUp: RateLimit;
  scaleDown: RateLimit;
  cooldownMs: number;
  /** Queue-aware sizing: capacity to drain the backlog within this time. */
  queueDrainMs: number;
  vertical: { cpu?: Range; memory?: Range };
  schedules: Schedule[];
}

/** One instance's figures, averaged over the evaluation window. */
export interface InstanceFigures {
  id: string;
  ready: boolean;           // running, healthy, past its warm-up: counted
  cpuPercentOfHost?: number; // docker stats: percent of one core x cores
  memoryMib?: number;
  queueDepth?: number;
  inFlight?: number;
  processingRate?: number;
  latencyP95Ms?: number;
  custom?: Record<string, number>;
}

export interface EngineInput {
  policy: Policy;
  current: number;                 // instances the spec asks for now
  reservation: { cpuMillis: number; memoryMib: number };
  instances: InstanceFigures[];
  nowMs: number;
  /** Past raw recommendations (for stabilisation), newest last. */
  recommendations: { atMs: number; value: number }[];
  /** Past replica changes (for rate limits and cooldown). */
  changes: { atMs: number; from: number; to: number }[];
  /** Queue growth per second over the window (arrival minus service), if known. */
  queueGrowthPerSec?: number;
}

export interface CheckResult {
  metric: string;
  value?: number;          // the observed figure the check compares
  target: number;
  recommendation?: number; // undefined: no figures
  note: string;
}

export interface Decision {
  attribute: 'replicas';
  min: number;
  max: number;
  current: number;
  value: number;
  recommendation: number; // before stabilisation, rate limits, cooldown
  action: 'scale-up' | 'scale-down' | 'hold';
  reason: string;
  checks: CheckResult[];
  inputs: Record<string, number | string>;
}

export interface VerticalDecision {
  attribute: 'cpu' | 'memory';
  min: number;
  max: number;
  current: number;
  value: number;
  unit: string;
  change: boolean;
  reason: string;
}

const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

function figure(i: InstanceFigures, metric: string): number | undefined {
  switch (metric) {
    case 'cpu': return i.cpuPercentOfHost;
    case 'memory': return i.memoryMib;
    case 'latency_p95': return i.latencyP95Ms;
    case 'queue_depth': return i.queueDepth;
    case 'in_flight': return i.inFlight;
    case 'processing_rate': return i.processingRate;
    default: return metric.startsWith('custom:') ? i.custom?.[metric.slice(7)] : undefined;
  }
}

/** One check's recommendation, or none if too few ready instances have figures. */
export function evaluateCheck(c: Check, inp: EngineInput, ready: InstanceFigures[]): CheckResult {
  const withData = ready.filter((i) => figure(i, c.metric) !== undefined);
  const n = ready.length;
  if (!n) {
    // (Say why: "0 of 0 ready" read as if the component had no instance while two ran, warming up.)
    const warming = inp.instances.length;
    return { metric: c.metric, target: c.target, note: `no ready instance${warming ? ` (${warming} not yet running and healthy for the policy's warmupMs)` : ''}: too few to decide` };
  }
  if (withData.length * 2 < n) {
    return { metric: c.metric, target: c.target, note: `figures from ${withData.length} of ${n} ready instances: too few to decide` };
  }
  const vals = withData.map((i) => figure(i, c.metric)!);
  const tol = inp.policy.tolerance;
  const proportional = (ratio: number, value: number, what: string): CheckResult => {
    if (Math.abs(ratio - 1) <= tol) return { metric: c.metric, value, target: c.target, recommendation: n, note: `${what} within tolerance` };
    return { metric: c.metric, value, target: c.target, recommendation: Math.ceil(n * ratio - 1e-9), note: `${what}: ratio ${ratio.toFixed(2)}` };
  };
  switch (c.metric) {
    case 'cpu': {
      // cpu% of the host (100 = one core) against the reservation, as percent of it.
      const util = (avg(vals) * 10) / Math.max(1, inp.reservation.cpuMillis) * 100;
      return proportional(util / c.target, round(util), `cpu at ${round(util)}% of the reservation`);
    }
    case 'memory': {
      const util = (avg(vals) / Math.max(1, inp.reservation.memoryMib)) * 100;
      return proportional(util / c.target, round(util), `memory at ${round(util)}% of the reservation`);
    }
    case 'latency_p95': {
      const v = avg(vals);
      return proportional(v / c.target, round(v), `p95 latency ${round(v)} ms`);
    }
    case 'queue_depth': {
      // Queue-aware: when a backlog exists, capacity for what arrives plus draining the backlog
      // in time. An instance with a backlog works flat out, so its processing rate is what one
      // instance can do; arrivals are what all process plus the queue's growth. Without those
      // figures, keep the backlog per instance at the target.
      const backlog = sum(vals);
      const byTarget = backlog / c.target;
      const saturated = withData.filter((i) => (i.queueDepth ?? 0) > 0 && (i.processingRate ?? 0) > 0);
      if (backlog > 0 && saturated.length) {
        const perInstance = avg(saturated.map((i) => i.processingRate!));
        const arrival = sum(withData.map((i) => i.processingRate ?? 0)) + Math.max(0, inp.queueGrowthPerSec ?? 0);
        const drain = backlog / Math.max(1, inp.policy.queueDrainMs / 1000);
        const need = (arrival + drain) / perInstance;
        const rec = Math.max(byTarget, need);
        return within(c, round(backlog), n, rec, tol, `backlog ${round(backlog)}, ${round(perInstance)}/s per busy instance, arrivals ~${round(arrival)}/s: ${round(need)} instances drain it in ${inp.policy.queueDrainMs / 1000} s`);
      }
      return within(c, round(backlog), n, byTarget, tol, `backlog ${round(backlog)} for a target of ${c.target} per instance`);
    }
    case 'processing_rate': {
      const total = sum(vals);
      return within(c, round(total), n, total / c.target, tol, `processing ${round(total)} tasks/s for ${c.target}/s per instance`);
    }
    default: {
      const total = sum(vals) * (n / withData.length);
      return within(c, round(total), n, total / c.target, tol, `${c.metric} ${round(total)} in all for ${c.target} per instance`);
    }
  }
}

function within(c: Check, value: number, n: number, want: number, tol: number, note: string): CheckResult {
  const rec = Math.max(0, Math.ceil(want - 1e-9));
  if (n > 0 && Math.abs(want / n - 1) <= tol) return { metric: c.metric, value, target: c.target, recommendation: n, note: `${note} (within tolerance)` };
  return { metric: c.metric, value, target: c.target, recommendation: rec, note };
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

/** The schedule window in force now, if any (UTC). */
export function activeSchedule(schedules: Schedule[], nowMs: number): Schedule | undefined {
  const d = new Date(nowMs);
  const minutes = d.getUTCHours() * 60 + d.getUTCMinutes();
  const toMin = (s: string) => Number(s.slice(0, 2)) * 60 + Number(s.slice(3, 5));
  for (const s of schedules) {
    const start = toMin(s.start);
    const end = toMin(s.end);
    const today = d.getUTCDay();
    const inWindow = start <= end ? minutes >= start && minutes < end : minutes >= start || minutes < end;
    const day = start <= end || minutes >= start ? today : (today + 6) % 7;
    if (inWindow && (!s.days.length || s.days.includes(day))) return s;
  }
  return undefined;
}

/** How many instances the rate limit lets a scale move by now. */
function allowedStep(limit: RateLimit, current: number, changes: EngineInput['changes'], nowMs: number, up: boolean): number {
  const moved = changes.filter((c) => nowMs - c.atMs < limit.periodMs && (up ? c.to > c.from : c.to < c.from)).reduce((a, c) => a + Math.abs(c.to - c.from), 0);
  const cap = Math.max(limit.maxInstances, Math.ceil((current * limit.maxPercent) / 100));
  return Math.max(0, cap - moved);
}

export function decide(inp: EngineInput): Decision {
  const p = inp.policy;
  const sched = activeSchedule(p.schedules, inp.nowMs);
  const min = sched ? sched.min : p.min;
  const max = sched ? sched.max : p.max;
  const ready = inp.instances.filter((i) => i.ready);
  const checks = p.checks.map((c) => evaluateCheck(c, inp, ready));
  const known = checks.filter((c) => c.recommendation !== undefined).map((c) => c.recommendation!);
  const inputs: Record<string, number | string> = { current: inp.current, ready: ready.length, instances: inp.instances.length, min, max };
  if (sched) inputs.schedule = `${sched.start}-${sched.end}`;
  const base = { attribute: 'replicas' as const, min, max, current: inp.current, checks, inputs };
  const clampN = (n: number) => Math.min(max, Math.max(min, n));

  // Outside the range (a schedule started, the policy changed): move into it at once.
  if (inp.current < min || inp.current > max) {
    const v = clampN(inp.current);
    return { ...base, value: v, recommendation: v, action: v > inp.current ? 'scale-up' : 'scale-down', reason: `${inp.current} is outside ${min}..${max}${sched ? ' (schedule)' : ''}` };
  }
  if (!known.length) {
    return { ...base, value: inp.current, recommendation: inp.current, action: 'hold', reason: `no check has enough figures (${checks.map((c) => c.note).join('; ') || 'no checks'}): holding, never scaling down on missing data` };
  }
  // The safest answer keeps the most capacity. A check without figures may not pull it down.
  let rec = Math.max(...known);
  const missing = checks.some((c) => c.recommendation === undefined);
  if (missing && rec < inp.current) rec = inp.current;
  // Instances still starting will add capacity: never scale down on their account.
  const starting = ready.length < inp.current;
  if (starting && rec < inp.current) rec = inp.current;
  rec = clampN(rec);

  // Stabilisation: go up to the lowest recommendation of the up-window, down to the highest of
  // the down-window (only what has stayed true for the whole window).
  const hist = [...inp.recommendations, { atMs: inp.nowMs, value: rec }];
  const upRec = Math.min(...hist.filter((h) => inp.nowMs - h.atMs <= p.scaleUp.stabilizationMs).map((h) => h.value));
  const downRec = Math.max(...hist.filter((h) => inp.nowMs - h.atMs <= p.scaleDown.stabilizationMs).map((h) => h.value));
  let value = inp.current;
  let why = '';
  if (upRec > inp.current) {
    value = Math.min(upRec, inp.current + allowedStep(p.scaleUp, inp.current, inp.changes, inp.nowMs, true));
    why = value < upRec ? `scale-up limited to ${value - inp.current} by the rate limit` : '';
  } else if (downRec < inp.current) {
    value = Math.max(downRec, inp.current - allowedStep(p.scaleDown, inp.current, inp.changes, inp.nowMs, false));
    why = value > downRec ? `scale-down limited to ${inp.current - value} by the rate limit` : '';
  } else if (rec !== inp.current) {
    why = rec < inp.current ? `waiting out the ${p.scaleDown.stabilizationMs / 1000} s scale-down window` : `waiting out the ${p.scaleUp.stabilizationMs / 1000} s scale-up window`;
  }
  const last = inp.changes[inp.changes.length - 1];
  if (value !== inp.current && last && inp.nowMs - last.atMs < p.cooldownMs) {
    return { ...base, value: inp.current, recommendation: rec, action: 'hold', reason: `cooldown: last change ${Math.round((inp.nowMs - last.atMs) / 1000)} s ago (cooldown ${p.cooldownMs / 1000} s); wanted ${value}` };
  }
  const driver = checks.filter((c) => c.recommendation === Math.max(...known)).map((c) => `${c.metric}: ${c.note}`).join('; ');
  const action = value > inp.current ? 'scale-up' : value < inp.current ? 'scale-down' : 'hold';
  const reason = action === 'hold' ? (why || (starting ? `holding: ${inp.current - ready.length} instance(s) still starting; ${driver}` : `steady: ${driver}`)) : `${action} ${inp.current} -> ${value}: ${driver}${why ? `; ${why}` : ''}`;
  return { ...base, value, recommendation: rec, action, reason };
}

/** Vertical sizing: a limit that fits what instances use, with headroom, within the range. */
export function decideVertical(attr: 'cpu' | 'memory', range: Range, current: number, used: number[], tolerance: number): VerticalDecision | undefined {
  if (!used.length) return undefined;
  const peak = Math.max(...used);
  const step = attr === 'memory' ? 16 : 10;
  const want = Math.ceil((peak * 1.25) / step) * step;
  const value = Math.min(range.max, Math.max(range.min, want));
  const change = Math.abs(value - current) / Math.max(1, current) > tolerance && value !== current;
  const unit = attr === 'memory' ? 'MiB' : 'millicores';
  return { attribute: attr, min: range.min, max: range.max, current, value, unit, change, reason: `peak use ${round(peak)} ${unit} + 25% headroom = ${want}, within ${range.min}..${range.max}` };
}

export interface EnvDecision {
  attribute: string; // env:<NAME>
  min: number;
  max: number;
  current: number;
  value: number;
  change: boolean;
  reason: string;
}

/**
 * An env setting tuned proportionally: value x (observed per-instance metric / target),
 * rounded, within the spec's range. Holds within tolerance or without figures.
 */
export function decideEnv(t: { env: string; metric: string; target: number; min: number; max: number }, current: number, ready: InstanceFigures[], tolerance: number): EnvDecision | undefined {
  const vals = ready.map((i) => figure(i, t.metric)).filter((x): x is number => x !== undefined);
  if (!vals.length || vals.length * 2 < ready.length) return undefined;
  const observed = avg(vals);
  const ratio = observed / t.target;
  const base = { attribute: `env:${t.env}`, min: t.min, max: t.max, current };
  if (Math.abs(ratio - 1) <= tolerance) return { ...base, value: current, change: false, reason: `${t.metric} ${round(observed)} per instance is within tolerance of ${t.target}` };
  const value = Math.min(t.max, Math.max(t.min, Math.round(Math.max(current, 1) * ratio)));
  return { ...base, value, change: value !== current, reason: `${t.metric} ${round(observed)} per instance against a target of ${t.target}: ${t.env} ${current} x ${ratio.toFixed(2)} -> ${value}, within ${t.min}..${t.max}` };
}
