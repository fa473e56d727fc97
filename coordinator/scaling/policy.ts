// Scaling policies as stored: validation with field paths, defaults, and conversion to the
// engine's shape.
import { FieldViolation, InvalidArgumentError } from '../../common/errors';
import type { ScalingPolicy, ScalingPolicy__Output } from '../../common/generated/tessera/v1/ScalingPolicy';
import type { Policy } from './engine';
import { METRICS } from './engine';

export interface StoredPolicy {
  app: string;
  component: string;
  policy: Policy;
  env: { env: string; metric: string; target: number; min: number; max: number }[];
  intervalMs: number;
  windowMs: number;
  warmupMs: number;
}

const HHMM = /^([01]\d|2[0-3]):[0-5]\d$/;

/**
 * Validates a policy against its component and the cluster's largest node. Throws
 * InvalidArgumentError listing every problem by field path.
 */
export function normalizePolicy(p: ScalingPolicy | ScalingPolicy__Output, largestNode: { cpuMillis: number; memoryMib: number }, tunables: { env: string; min: number; max: number }[] = []): StoredPolicy {
  const v: FieldViolation[] = [];
  const bad = (field: string, message: string) => v.push({ field, message });
  const min = p.min ?? 0;
  const max = p.max ?? 0;
  if (!Number.isInteger(min) || min < 0) bad('min', `must be an integer >= 0, got ${min}`);
  if (!Number.isInteger(max) || max < 1) bad('max', `must be an integer >= 1, got ${max}`);
  if (max > 1000) bad('max', 'must be <= 1000');
  if (min > max) bad('min', `must not exceed max (${min} > ${max})`);
  const checks = (p.checks ?? []).map((c, i) => {
    const metric = c.metric ?? '';
    if (!(METRICS as readonly string[]).includes(metric) && !/^custom:[A-Za-z0-9_.-]+$/.test(metric)) bad(`checks[${i}].metric`, `unknown metric ${JSON.stringify(metric)}; one of ${METRICS.join(', ')} or custom:<name>`);
    const target = Number(c.target ?? 0);
    if (!(target > 0) || !Number.isFinite(target)) bad(`checks[${i}].target`, `must be > 0, got ${target}`);
    return { metric, target };
  });
  const tolerance = p.tolerance === undefined || p.tolerance === 0 ? 0.1 : Number(p.tolerance);
  if (tolerance < 0 || tolerance >= 1) bad('tolerance', `must be in [0, 1), got ${tolerance}`);
  const rate = (r: ScalingPolicy['scaleUp'], at: string, def: Policy['scaleUp']) => {
    const out = {
      stabilizationMs: Number(r?.stabilizationMs ?? def.stabilizationMs) || def.stabilizationMs,
      maxInstances: r?.maxInstances || def.maxInstances,
      maxPercent: Number(r?.maxPercent ?? 0) || def.maxPercent,
      periodMs: Number(r?.periodMs ?? 0) || def.periodMs,
    };
    if (r?.stabilizationMs !== undefined && Number(r.stabilizationMs) < 0) bad(`${at}.stabilizationMs`, 'must be >= 0');
    if ((r?.maxInstances ?? 0) < 0) bad(`${at}.maxInstances`, 'must be >= 0');
    if (Number(r?.maxPercent ?? 0) < 0) bad(`${at}.maxPercent`, 'must be >= 0');
    return out;
  };
  // Zero means the default (proto3 cannot tell unset from 0). Defaults: Kubernetes HPA's (up: 100% or 4 per 15 s, no window; down: 100% per 15 s after 300 s).
  const scaleUp = rate(p.scaleUp, 'scaleUp', { stabilizationMs: 0, maxInstances: 4, maxPercent: 100, periodMs: 15_000 });
  const scaleDown = rate(p.scaleDown, 'scaleDown', { stabilizationMs: 300_000, maxInstances: 0, maxPercent: 100, periodMs: 15_000 });
  const range = (r: ScalingPolicy['verticalCpu'], at: string, cap: number, unit: string) => {
    if (!r || (!r.min && !r.max)) return undefined;
    const lo = Number(r.min ?? 0);
    const hi = Number(r.max ?? 0);
    if (!(lo > 0)) bad(`${at}.min`, `must be > 0, got ${lo}`);
    if (hi < lo) bad(`${at}.max`, `must be >= min (${lo}), got ${hi}`);
    if (lo > cap) bad(`${at}.min`, `${lo} ${unit} can never be satisfied: the largest node offers ${cap} ${unit}`);
    return { min: lo, max: hi };
  };
  const cpu = range(p.verticalCpu, 'verticalCpu', largestNode.cpuMillis, 'millicores');
  const memory = range(p.verticalMemory, 'verticalMemory', largestNode.memoryMib, 'MiB');
  const env = (p.env ?? []).map((e, i) => {
    const t = tunables.find((x) => x.env === e.env);
    if (!t) bad(`env[${i}].env`, `the component's spec does not allow tuning ${JSON.stringify(e.env)} (declare it in tunables; allowed: ${tunables.map((x) => x.env).join(', ') || 'none'})`);
    if (!(METRICS as readonly string[]).includes(e.metric ?? '') && !/^custom:[A-Za-z0-9_.-]+$/.test(e.metric ?? '')) bad(`env[${i}].metric`, `unknown metric ${JSON.stringify(e.metric)}`);
    if (!(Number(e.target) > 0)) bad(`env[${i}].target`, `must be > 0, got ${e.target}`);
    return { env: e.env ?? '', metric: e.metric ?? '', target: Number(e.target), min: t?.min ?? 0, max: t?.max ?? 0 };
  });
  if (!checks.length && !cpu && !memory && !env.length && !(p.schedules ?? []).length) bad('checks', 'at least one check (or a vertical range or a schedule) is required');
  const schedules = (p.schedules ?? []).map((s, i) => {
    if (!HHMM.test(s.start ?? '')) bad(`schedules[${i}].start`, 'must be HH:MM (UTC)');
    if (!HHMM.test(s.end ?? '')) bad(`schedules[${i}].end`, 'must be HH:MM (UTC)');
    if ((s.days ?? []).some((d) => d < 0 || d > 6)) bad(`schedules[${i}].days`, 'days are 0 (Sunday) to 6');
    if ((s.min ?? 0) > (s.max ?? 0)) bad(`schedules[${i}].min`, `must not exceed max (${s.min} > ${s.max})`);
    return { days: [...(s.days ?? [])], start: s.start ?? '', end: s.end ?? '', min: s.min ?? 0, max: s.max ?? 0 };
  });
  const intervalMs = Number(p.intervalMs ?? 0) || 5_000;
  const windowMs = Number(p.windowMs ?? 0) || 30_000;
  const warmupMs = Number(p.warmupMs ?? 0) || 10_000;
  if (intervalMs < 200) bad('intervalMs', 'must be at least 200');
  if (windowMs < intervalMs) bad('windowMs', `must be at least intervalMs (${intervalMs})`);
  if (v.length) throw new InvalidArgumentError(v);
  return {
    app: p.app ?? '',
    component: p.component ?? '',
    env,
    intervalMs, windowMs, warmupMs,
    policy: {
      min, max, checks, tolerance, scaleUp, scaleDown, cooldownMs: Number(p.cooldownMs ?? 0), queueDrainMs: Number(p.queueDrainMs ?? 0) || 30_000,
      vertical: { cpu, memory }, schedules,
    },
  };
}

export function policyToProto(s: StoredPolicy): ScalingPolicy {
  const p = s.policy;
  return {
    app: s.app, component: s.component, min: p.min, max: p.max, checks: p.checks, tolerance: p.tolerance,
    scaleUp: p.scaleUp, scaleDown: p.scaleDown, cooldownMs: p.cooldownMs, queueDrainMs: p.queueDrainMs,
    verticalCpu: p.vertical.cpu, verticalMemory: p.vertical.memory, schedules: p.schedules,
    intervalMs: s.intervalMs, windowMs: s.windowMs, warmupMs: s.warmupMs,
    env: (s.env ?? []).map((e) => ({ env: e.env, metric: e.metric, target: e.target })),
  };
}
