// Autoscaler quality: a seeded discrete-time simulation (1 s ticks). Each instance serves MU
// tasks/s after a cold start; controllers see figures with a lag. Five load traces; four
// controllers side by side in the same run: Tessera's engine (coordinator/scaling/engine.ts,
// the code the leader runs), a clone of Kubernetes HPA's defaults, static provisioning at
// peak, and an oracle that knows the future. Prints a table and writes one SVG per trace
// (demand, supply, queue wait) to .bench/.
//   node dist/scripts/bench/autoscale.js [--seed 7] [--cold 30] [--lag 10] [--slo 2]
import * as fs from 'node:fs';
import { decide, Policy } from '../../coordinator/scaling/engine';
import { table } from '../../common/table';
import { fmt } from './stats';

const args = process.argv.slice(2);
const arg = (n: string, d: number) => (args.includes(`--${n}`) ? Number(args[args.indexOf(`--${n}`) + 1]) : d);
const SEED = arg('seed', 7);
const COLD = arg('cold', 30);      // s before a new instance serves
const LAG = arg('lag', 10);        // s of metric lag
const SLO = arg('slo', 2);         // s of queue wait
const MU = 10;                     // tasks/s per instance
const T = 3600;                    // s per trace
const BASE = 100;                  // tasks/s = 10 instances' worth at full use

function rng(seed: number) {
  return () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
}

type Trace = { name: string; rate: (t: number) => number };
function traces(): Trace[] {
  const noise = rng(SEED);
  const n = Array.from({ length: T }, () => (noise() - 0.5) * 0.1);
  return [
    { name: 'step 1x->5x', rate: (t) => (t < 600 ? BASE : 5 * BASE) },
    { name: 'ramp', rate: (t) => BASE * (1 + (4 * Math.min(t, 2400)) / 2400) },
    { name: 'diurnal+noise', rate: (t) => BASE * (2.5 + 1.5 * Math.sin((2 * Math.PI * t) / T)) * (1 + n[t]) },
    { name: '60 s 10x spike', rate: (t) => (t >= 1200 && t < 1260 ? 10 * BASE : BASE) },
    { name: 'hover +-8%', rate: (t) => 2 * BASE * (Math.floor(t / 120) % 2 ? 1.08 : 0.92) },
  ];
}

interface Controller {
  name: string;
  /** Called every second with lagged figures; returns the desired instance count. */
  step(t: number, seen: { util: number; queue: number; ready: number; desired: number }, trace: Trace): number;
}

const TARGET_UTIL = 0.7;
/** Tessera's scale-down window here (HPA keeps its default 300 s): --down-window seconds. */
const SCALE_DOWN_WINDOW_MS = arg('down-window', 120) * 1000;

/** Kubernetes HPA defaults: 15 s sync, tolerance 0.1, scale-down window 300 s, up 100% or 4 per 15 s. */
function hpa(): Controller {
  const recs: { t: number; v: number }[] = [];
  const ups: { t: number; n: number }[] = [];
  let desired = 0;
  return {
    name: 'HPA clone',
    step(t, s) {
      if (!desired) desired = s.desired;
      if (t % 15) return desired;
      const ratio = s.util / TARGET_UTIL;
      let rec = Math.abs(ratio - 1) <= 0.1 ? s.ready : Math.ceil(s.ready * ratio);
      rec = Math.max(1, Math.min(200, rec));
      recs.push({ t, v: rec });
      const downRec = Math.max(...recs.filter((r) => t - r.t <= 300).map((r) => r.v));
      if (rec > desired) {
        const moved = ups.filter((u) => t - u.t < 15).reduce((a, u) => a + u.n, 0);
        const cap = Math.max(4, desired) - moved;
        const next = Math.min(rec, desired + Math.max(0, cap));
        ups.push({ t, n: next - desired });
        desired = next;
      } else if (downRec < desired) desired = downRec;
      return desired;
    },
  };
}

/** Tessera's engine, evaluated every 5 s, on utilisation and queue depth (queue-aware drain). */
function tessera(): Controller {
  const policy: Policy = {
    min: 1, max: 200, tolerance: 0.1,
    checks: [{ metric: 'cpu', target: TARGET_UTIL * 100 }, { metric: 'queue_depth', target: MU * SLO / 2 }],
    scaleUp: { stabilizationMs: 0, maxInstances: 4, maxPercent: 100, periodMs: 15_000 },
    scaleDown: { stabilizationMs: SCALE_DOWN_WINDOW_MS, maxInstances: 0, maxPercent: 100, periodMs: 15_000 },
    cooldownMs: 0, queueDrainMs: SLO * 1000 * 5, vertical: {}, schedules: [],
  };
  const recs: { atMs: number; value: number }[] = [];
  const changes: { atMs: number; from: number; to: number }[] = [];
  let desired = 0;
  let lastQueue = 0;
  return {
    name: 'Tessera',
    step(t, s) {
      if (!desired) desired = s.desired;
      if (t % 5) return desired;
      const per = Math.max(1, s.ready);
      // What agents would report: each serving instance's share of the queue and of the work done.
      const instances = Array.from({ length: per }, (_, i) => ({ id: `i${i}`, ready: true, cpuPercentOfHost: s.util * 100, queueDepth: s.queue / per, processingRate: s.util * MU }));
      const d = decide({ policy, current: desired, reservation: { cpuMillis: 1000, memoryMib: 256 }, instances, nowMs: t * 1000, recommendations: recs, changes, queueGrowthPerSec: (s.queue - lastQueue) / 5 });
      lastQueue = s.queue;
      recs.push({ atMs: t * 1000, value: d.recommendation });
      while (recs.length && t * 1000 - recs[0].atMs > Math.max(300_000, SCALE_DOWN_WINDOW_MS)) recs.shift();
      if (d.value !== desired) changes.push({ atMs: t * 1000, from: desired, to: d.value });
      desired = d.value;
      return desired;
    },
  };
}

function staticPeak(peak: number): Controller {
  return { name: 'static at peak', step: () => Math.ceil(peak / (MU * TARGET_UTIL)) };
}

/** Knows the future: has capacity for the rate COLD s ahead at the target utilisation. */
function oracle(): Controller {
  // What is needed at any moment from now until instances started now would serve, and a bit after.
  const offsets = Array.from({ length: Math.ceil((COLD + 30) / 5) + 1 }, (_, i) => i * 5);
  return { name: 'oracle', step: (t, _s, tr) => Math.max(1, Math.ceil(Math.max(...offsets.map((d) => tr.rate(Math.min(T - 1, t + d)))) / (MU * 0.9))) };
}

interface Result { violations: number; instanceHours: number; actions: number; reversals: number; toCapacity: number; series: { demand: number; supply: number; wait: number }[] }

function simulate(tr: Trace, c: Controller): Result {
  const start = Math.ceil(tr.rate(0) / (MU * TARGET_UTIL));
  let desired = start;
  const ready: number[] = Array(start).fill(-COLD); // start times of live instances
  let queue = 0;
  const hist: { util: number; queue: number; ready: number }[] = [];
  let violations = 0;
  let instSeconds = 0;
  let actions = 0;
  let reversals = 0;
  let lastDir = 0;
  let toCapacity = -1;
  const series: Result['series'] = [];
  for (let t = 0; t < T; t++) {
    const lam = tr.rate(t);
    const serving = ready.filter((s) => t - s >= COLD).length;
    const cap = serving * MU;
    queue += lam;
    const served = Math.min(queue, cap);
    queue -= served;
    const wait = cap > 0 ? queue / cap : queue > 0 ? Infinity : 0;
    if (wait > SLO) violations++;
    if (toCapacity < 0 && tr.name.startsWith('step') && t >= 600 && cap >= lam) toCapacity = t - 600;
    instSeconds += ready.length;
    hist.push({ util: cap > 0 ? served / cap : 1, queue, ready: serving });
    series.push({ demand: lam, supply: cap, wait: Math.min(wait, 60) });
    const seen = hist[Math.max(0, hist.length - 1 - LAG)];
    const next = Math.max(1, c.step(t, { ...seen, desired }, tr));
    if (next !== desired) {
      const dir = Math.sign(next - desired);
      if (lastDir && dir !== lastDir) reversals++;
      lastDir = dir;
      actions++;
      if (next > desired) for (let i = desired; i < next; i++) ready.push(t);
      else {
        // Remove the youngest (not yet serving) first, like a scale-down of unready pods.
        ready.sort((a, b) => b - a).splice(0, desired - next);
      }
      desired = next;
    }
  }
  return { violations, instanceHours: instSeconds / 3600, actions, reversals, toCapacity, series };
}

function svg(name: string, runs: { name: string; r: Result }[]): string {
  const W = 900, H = 420, pad = 40;
  const maxD = Math.max(...runs.flatMap((x) => x.r.series.map((s) => Math.max(s.demand, s.supply)))) * 1.05;
  const x = (t: number) => pad + (t / T) * (W - 2 * pad);
  const y1 = (v: number) => 20 + (1 - v / maxD) * 240;
  const y2 = (v: number) => 290 + (1 - Math.min(v, 20) / 20) * 110;
  const colors = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd'];
  const line = (pts: string, color: string, w = 1.2) => `<polyline fill="none" stroke="${color}" stroke-width="${w}" points="${pts}"/>`;
  const step = 5;
  let out = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>`;
  out += `<text x="${pad}" y="14">${name}: demand (black) and serving capacity (tasks/s); below: queue wait (s, SLO ${SLO} s dashed)</text>`;
  out += line(runs[0].r.series.filter((_, t) => t % step === 0).map((s, i) => `${x(i * step)},${y1(s.demand)}`).join(' '), '#000', 2);
  runs.forEach((run, k) => {
    out += line(run.r.series.filter((_, t) => t % step === 0).map((s, i) => `${x(i * step)},${y1(s.supply)}`).join(' '), colors[k]);
    out += line(run.r.series.filter((_, t) => t % step === 0).map((s, i) => `${x(i * step)},${y2(s.wait)}`).join(' '), colors[k]);
    out += `<text x="${W - 160}" y="${40 + k * 14}" fill="${colors[k]}">${run.name}</text>`;
  });
  out += `<line x1="${pad}" x2="${W - pad}" y1="${y2(SLO)}" y2="${y2(SLO)}" stroke="#888" stroke-dasharray="4 3"/>`;
  return out + '</svg>\n';
}

const rows: (string | number)[][] = [];
fs.mkdirSync('.bench', { recursive: true });
const summary: Record<string, { tv: number; hv: number; th: number; hh: number }> = {};
for (const tr of traces()) {
  const peak = Math.max(...Array.from({ length: T }, (_, t) => tr.rate(t)));
  const runs = [tessera(), hpa(), staticPeak(peak), oracle()].map((c) => ({ name: c.name, r: simulate(tr, c) }));
  const o = runs.find((r) => r.name === 'oracle')!.r;
  for (const { name, r } of runs) {
    rows.push([tr.name, name, r.violations, `${fmt(r.instanceHours, 1)} (${fmt(r.instanceHours / o.instanceHours, 2)}x)`, r.actions, r.reversals, tr.name.startsWith('step') ? (r.toCapacity >= 0 ? r.toCapacity : 'never') : '']);
  }
  const t = runs[0].r, h = runs[1].r;
  summary[tr.name] = { tv: t.violations, hv: h.violations, th: t.instanceHours, hh: h.instanceHours };
  fs.writeFileSync(`.bench/autoscale-${tr.name.replace(/[^a-z0-9]+/gi, '-')}.svg`, svg(tr.name, runs));
}
process.stdout.write(`autoscaler quality: seed ${SEED}, ${T} s per trace, ${MU} tasks/s per instance, cold start ${COLD} s, metric lag ${LAG} s, SLO: queue wait <= ${SLO} s\n`);
process.stdout.write(`Tessera: engine every 5 s on cpu (70%) and queue depth (queue-aware drain), scale-down window ${SCALE_DOWN_WINDOW_MS / 1000} s; HPA clone: every 15 s on cpu (70%), Kubernetes defaults\n\n`);
process.stdout.write(table(['trace', 'controller', 'SLO-violation s', 'instance-hours (vs oracle)', 'actions', 'reversals', 'step -> capacity s'], rows) + '\n\n');
let tv = 0, hv = 0, th = 0, hh = 0;
for (const s of Object.values(summary)) { tv += s.tv; hv += s.hv; th += s.th; hh += s.hh; }
process.stdout.write(`all traces: Tessera ${tv} SLO-violation s vs HPA clone ${hv} (${hv ? fmt((1 - tv / hv) * 100) : '-'}% fewer; goal >= 30%), instance-hours ${fmt(th, 1)} vs ${fmt(hh, 1)} (goal: no more)\n`);
process.stdout.write(`plots: .bench/autoscale-*.svg\n`);
