// The leader's scaling manager: evaluates every policy on its interval against a window of
// figures from the agents, records each decision (with its inputs and reason), and carries
// out the instruction: replicas through the reconciler (a replica count kept beside the spec,
// so scaling does not churn app versions), cpu and memory through a new app version (a
// rolling update).
import { randomBytes } from 'node:crypto';
import { steadyNow } from '../../common/clock';
import type { Logger } from '../../common/logger';
import { FailedPreconditionError, NotFoundError } from '../../common/errors';
import type { ScalingPolicy } from '../../common/generated/tessera/v1/ScalingPolicy';
import type { ScalingDecision } from '../../common/generated/tessera/v1/ScalingDecision';
import type { Deployments } from '../deployments';
import type { Keys } from '../keys';
import type { NodeRegistry } from '../node-registry';
import { attributed, Store } from '../store';
import { decide, decideEnv, decideVertical, InstanceFigures } from './engine';
import { normalizePolicy, policyToProto, StoredPolicy } from './policy';

const KEEP_DECISIONS = 200;

interface Sample { atMs: number; figures: Map<string, InstanceFigures> }

interface State {
  samples: Sample[];
  recommendations: { atMs: number; value: number }[];
  changes: { atMs: number; from: number; to: number }[];
  lastEvalMs: number;
  lastRecordedReason: string;
}

export class Scaler {
  private policies = new Map<string, StoredPolicy>();
  private state = new Map<string, State>();
  private decisions = new Map<string, ScalingDecision[]>();
  private running = false;

  constructor(
    private readonly store: Store,
    private readonly keys: Keys,
    private readonly registry: NodeRegistry,
    private readonly deployments: Deployments,
    private readonly log: Logger,
    private readonly metrics?: import('../../common/metrics').Metrics,
  ) {}

  private key(app: string, component: string) { return `${app}/${component}`; }

  async load(): Promise<void> {
    const c = this.store.client;
    const [pol, dec] = await Promise.all([
      c.getAll().prefix(`${this.keys.prefix}policies/`).strings(),
      c.getAll().prefix(`${this.keys.prefix}decisions/`).strings(),
    ]);
    for (const v of Object.values(pol)) {
      const p = JSON.parse(v) as StoredPolicy;
      this.policies.set(this.key(p.app, p.component), p);
    }
    for (const v of Object.values(dec)) {
      const d = JSON.parse(v) as ScalingDecision;
      const k = this.key(d.app!, d.component!);
      if (!this.decisions.has(k)) this.decisions.set(k, []);
      this.decisions.get(k)!.push(d);
    }
    for (const list of this.decisions.values()) list.sort((a, b) => Number(a.atMs) - Number(b.atMs));
    // Rebuild the recent changes from the recorded decisions (rate limits and cooldown survive a failover).
    for (const [k, list] of this.decisions) {
      const st = this.stateOf(k);
      for (const d of list) if (d.applied && d.instruction?.attributes?.[0]?.name === 'replicas') st.changes.push({ atMs: Number(d.atMs), from: Number(d.inputs?.current ?? 0), to: Number(d.instruction.attributes[0].value) });
    }
  }

  private stateOf(k: string): State {
    let s = this.state.get(k);
    if (!s) {
      s = { samples: [], recommendations: [], changes: [], lastEvalMs: 0, lastRecordedReason: '' };
      this.state.set(k, s);
    }
    return s;
  }

  private largestNode() {
    let cpu = 0;
    let mem = 0;
    for (const n of this.registry.allRecords()) {
      cpu = Math.max(cpu, n.capacity.cpuMillis);
      mem = Math.max(mem, n.capacity.memoryMib);
    }
    return { cpuMillis: cpu, memoryMib: mem };
  }

  async set(p: ScalingPolicy | undefined, by = ''): Promise<ScalingPolicy> {
    if (!p) throw new FailedPreconditionError('policy is required');
    const spec = this.deployments.currentSpec(p.app ?? '');
    if (!spec) throw new NotFoundError('app', p.app ?? '');
    if (!spec.components.some((c) => c.name === p.component)) {
      const e = new NotFoundError('component', `${p.app}/${p.component}`);
      throw e;
    }
    const comp = spec.components.find((c) => c.name === p.component)!;
    const stored = normalizePolicy(p, this.largestNode(), (comp.tunables ?? []).map((t) => ({ env: t.env, min: Number(t.min), max: Number(t.max) })));
    await this.store.commit([{ type: 'put', key: this.policyKey(stored.app, stored.component), value: JSON.stringify(stored) }], [
      attributed({ kind: 'policy.set', subject: `${stored.app}/${stored.component}`, message: `scaling policy set for ${stored.app}/${stored.component}: ${stored.policy.min}..${stored.policy.max} on ${stored.policy.checks.map((c) => `${c.metric}=${c.target}`).join(', ') || 'schedules/vertical only'}` }, by),
    ]);
    this.policies.set(this.key(stored.app, stored.component), stored);
    return policyToProto(stored);
  }

  get(app: string, component: string): ScalingPolicy {
    const p = this.policies.get(this.key(app, component));
    if (!p) throw new NotFoundError('policy', `${app}/${component}`);
    return policyToProto(p);
  }

  /** Whether a policy sizes this component (its count is then the policy's, not the spec's). */
  sizes(app: string, component: string): boolean {
    return this.policies.has(this.key(app, component));
  }

  list(app: string): ScalingPolicy[] {
    return [...this.policies.values()].filter((p) => !app || p.app === app).map(policyToProto);
  }

  async delete(app: string, component: string, by = ''): Promise<ScalingPolicy> {
    const p = this.get(app, component);
    await this.store.commit([{ type: 'delete', key: this.policyKey(app, component) }], [attributed({ kind: 'policy.deleted', subject: `${app}/${component}`, message: `scaling policy removed for ${app}/${component}; the replica count stays where it is` }, by)]);
    this.policies.delete(this.key(app, component));
    return p;
  }

  history(app: string, component: string, limit: number): ScalingDecision[] {
    const out: ScalingDecision[] = [];
    for (const [k, list] of this.decisions) if (k.startsWith(`${app}/`) && (!component || k === this.key(app, component))) out.push(...list);
    return out.sort((a, b) => Number(b.atMs) - Number(a.atMs)).slice(0, limit || 50);
  }

  private policyKey(app: string, component: string) { return `${this.keys.prefix}policies/${app}/${component}`; }
  private decisionKey(d: ScalingDecision) { return `${this.keys.prefix}decisions/${d.app}/${d.component}/${String(d.atMs).padStart(15, '0')}-${d.id}`; }

  /** Every instance's figures now, from the agents' latest reports. */
  private sample(app: string, component: string, warmupMs: number, nowMs: number): Map<string, InstanceFigures> {
    const out = new Map<string, InstanceFigures>();
    for (const i of this.deployments.listInstances(app, '')) {
      if (i.component !== component || i.desired !== 'run') continue;
      const since = this.deployments.healthySinceOf(i.id!);
      const ready = i.state === 'INSTANCE_STATE_RUNNING' && i.health === 'healthy' && since > 0 && nowMs - since >= warmupMs;
      const t = this.deployments.taskOf(i.id!);
      out.set(i.id!, {
        id: i.id!, ready,
        // Docker stats flow once memory shows; before that a 0 would read as an idle instance.
        cpuPercentOfHost: Number(i.memoryUsedMib ?? 0) > 0 ? Number(i.cpuPercent ?? 0) : undefined,
        memoryMib: Number(i.memoryUsedMib ?? 0) || undefined,
        queueDepth: t?.queueDepth !== undefined && t.reportedAtMs ? Number(t.queueDepth) : undefined,
        inFlight: t?.reportedAtMs ? Number(t.inFlight ?? 0) : undefined,
        processingRate: t?.reportedAtMs ? Number(t.processingRate ?? 0) : undefined,
        latencyP95Ms: t?.reportedAtMs && t.latencyP95Ms ? Number(t.latencyP95Ms) : undefined,
        custom: t?.custom ? Object.fromEntries(Object.entries(t.custom).map(([k, v]) => [k, Number(v)])) : undefined,
        // The report's time is on this leader's clock (the registry's onLeaderClock), not the agent's.
        ...(t?.reportedAtMs && nowMs - Number(t.reportedAtMs) > 15_000 ? { queueDepth: undefined, inFlight: undefined, processingRate: undefined, latencyP95Ms: undefined, custom: undefined } : {}),
      });
    }
    return out;
  }

  /** Averages each instance's figures over the window (only instances present now). */
  private windowed(st: State, now: Map<string, InstanceFigures>): InstanceFigures[] {
    const fields = ['cpuPercentOfHost', 'memoryMib', 'queueDepth', 'inFlight', 'processingRate', 'latencyP95Ms'] as const;
    return [...now.values()].map((cur) => {
      const out: InstanceFigures = { ...cur };
      for (const f of fields) {
        const vals = st.samples.map((s) => s.figures.get(cur.id)?.[f]).filter((x): x is number => x !== undefined);
        out[f] = vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : undefined;
      }
      return out;
    });
  }

  /** Evaluates due policies; applies and records their decisions. */
  async tick(nowMs = steadyNow()): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (const [k, p] of this.policies) {
        const st = this.stateOf(k);
        if (nowMs - st.lastEvalMs < p.intervalMs) continue;
        // A policy outlives a deleted app (as an HPA outlives its Deployment) and waits for it.
        if (!this.deployments.currentSpec(p.app)?.components.some((c) => c.name === p.component)) continue;
        st.lastEvalMs = nowMs;
        try {
          await this.evaluate(p, st, nowMs, false);
        } catch (err) {
          this.log.warn({ policy: k, err: (err as Error).message }, 'policy evaluation failed');
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** Dry run: what the policy would do now, recorded nowhere. */
  async dryRun(app: string, component: string): Promise<ScalingDecision> {
    const p = this.policies.get(this.key(app, component));
    if (!p) throw new NotFoundError('policy', `${app}/${component}`);
    return this.evaluate(p, { ...this.stateOf(this.key(app, component)) }, steadyNow(), true);
  }

  private async evaluate(p: StoredPolicy, st: State, nowMs: number, dryRun: boolean): Promise<ScalingDecision> {
    const spec = this.deployments.currentSpec(p.app);
    const comp = spec?.components.find((c) => c.name === p.component);
    if (!spec || !comp) throw new NotFoundError('component', `${p.app}/${p.component}`);
    const current = this.deployments.replicasOf(p.app, p.component) ?? comp.instances;
    const now = this.sample(p.app, p.component, p.warmupMs, nowMs);
    const samples = dryRun ? [...st.samples, { atMs: nowMs, figures: now }] : st.samples;
    if (!dryRun) {
      st.samples.push({ atMs: nowMs, figures: now });
      while (st.samples.length && nowMs - st.samples[0].atMs > p.windowMs) st.samples.shift();
    }
    const figures = this.windowed({ ...st, samples }, now);
    const q = (s: Sample) => [...s.figures.values()].reduce((a, f) => a + (f.queueDepth ?? 0), 0);
    const growth = samples.length > 1 ? ((q(samples[samples.length - 1]) - q(samples[0])) * 1000) / Math.max(1, samples[samples.length - 1].atMs - samples[0].atMs) : undefined;
    const d = decide({
      policy: p.policy, current, reservation: { cpuMillis: comp.resources.cpuMillis, memoryMib: comp.resources.memoryMib },
      instances: figures, nowMs, recommendations: st.recommendations.filter((r) => nowMs - r.atMs <= Math.max(p.policy.scaleDown.stabilizationMs, p.policy.scaleUp.stabilizationMs)),
      changes: st.changes.filter((c) => nowMs - c.atMs <= Math.max(p.policy.cooldownMs, p.policy.scaleUp.periodMs, p.policy.scaleDown.periodMs)), queueGrowthPerSec: growth,
    });
    if (!dryRun) {
      st.recommendations.push({ atMs: nowMs, value: d.recommendation });
      while (st.recommendations.length > 2_000) st.recommendations.shift();
    }
    const decision: ScalingDecision = {
      id: randomBytes(4).toString('hex'), atMs: nowMs, app: p.app, component: p.component, action: d.action, reason: d.reason, dryRun,
      instruction: {
        id: `scale-${p.app}-${p.component}-${nowMs}`, action: 'INSTRUCTION_ACTION_SCALE', target: { app: p.app, component: p.component },
        attributes: [{ name: 'replicas', min: d.min, max: d.max, value: d.value }], reason: d.reason, issuedAtMs: nowMs,
      },
      checks: d.checks.map((c) => ({ metric: c.metric, value: c.value ?? 0, target: c.target, recommendation: c.recommendation ?? 0, hasRecommendation: c.recommendation !== undefined, note: c.note })),
      inputs: Object.fromEntries(Object.entries({ ...d.inputs, recommendation: d.recommendation, queueGrowthPerSec: growth === undefined ? '-' : Math.round(growth * 100) / 100 }).map(([k, v]) => [k, String(v)])),
      applied: false,
    };
    // Vertical: a resize is a new app version (a rolling update), one attribute at a time.
    let resized: { attr: 'cpu' | 'memory'; value: number } | undefined;
    if (d.action === 'hold') {
      for (const attr of ['memory', 'cpu'] as const) {
        const range = p.policy.vertical[attr];
        if (!range) continue;
        const curVal = attr === 'memory' ? comp.resources.memoryMib : comp.resources.cpuMillis;
        const used = figures.filter((f) => f.ready).map((f) => (attr === 'memory' ? f.memoryMib : f.cpuPercentOfHost !== undefined ? f.cpuPercentOfHost * 10 : undefined)).filter((x): x is number => x !== undefined);
        const vd = decideVertical(attr, range, Number(curVal), used, p.policy.tolerance);
        if (vd?.change && !resized) {
          resized = { attr, value: vd.value };
          decision.action = 'resize';
          decision.reason = `resize ${attr} ${curVal} -> ${vd.value} ${vd.unit}: ${vd.reason}`;
          decision.instruction = { ...decision.instruction, action: 'INSTRUCTION_ACTION_RESIZE', attributes: [{ name: attr, min: vd.min, max: vd.max, value: vd.value, unit: vd.unit }], reason: decision.reason };
        }
      }
    }
    // Env settings the spec allows to tune: a new app version too, one at a time.
    let retuned: { env: string; value: number } | undefined;
    if (d.action === 'hold' && !resized) {
      for (const t of p.env ?? []) {
        const cur = Number(comp.env[t.env]);
        const ed = decideEnv(t, cur, figures.filter((f) => f.ready), p.policy.tolerance);
        if (ed?.change) {
          retuned = { env: t.env, value: ed.value };
          decision.action = 'retune';
          decision.reason = `retune ${t.env}: ${ed.reason}`;
          decision.instruction = { ...decision.instruction, action: 'INSTRUCTION_ACTION_UPDATE', attributes: [{ name: ed.attribute, min: ed.min, max: ed.max, value: ed.value }], reason: decision.reason };
          break;
        }
      }
    }
    if (dryRun) return decision;

    const why = decision.reason ?? '';
    if (d.action !== 'hold') {
      await this.deployments.setReplicas(p.app, p.component, d.value, why);
      st.changes.push({ atMs: nowMs, from: current, to: d.value });
      decision.applied = true;
    } else if (resized) {
      await this.deployments.resize(p.app, p.component, resized.attr, resized.value, why);
      decision.applied = true;
    } else if (retuned) {
      await this.deployments.retune(p.app, p.component, retuned.env, retuned.value, why);
      decision.applied = true;
    }
    // Record every change, and a hold when its reason changes (missing data, cooldown, ...).
    const reasonClass = why.replace(/[\d.]+/g, '#');
    if (decision.applied || reasonClass !== st.lastRecordedReason) {
      st.lastRecordedReason = reasonClass;
      await this.record(decision);
    }
    return decision;
  }

  private async record(d: ScalingDecision): Promise<void> {
    this.metrics?.inc('tessera_scaling_decisions_total', { action: d.action ?? 'hold' });
    const k = this.key(d.app!, d.component!);
    const list = this.decisions.get(k) ?? [];
    list.push(d);
    const ops: { type: 'put' | 'delete'; key: string; value: string }[] = [{ type: 'put', key: this.decisionKey(d), value: JSON.stringify(d) }];
    while (list.length > KEEP_DECISIONS) ops.push({ type: 'delete', key: this.decisionKey(list.shift()!), value: '' });
    this.decisions.set(k, list);
    await this.store.commit(ops as never, d.applied || d.action !== 'hold' ? [{
      kind: `scaling.${d.action}`, subject: k, message: `${k}: ${d.reason}`,
      fields: { attribute: d.instruction!.attributes![0].name!, min: String(d.instruction!.attributes![0].min), max: String(d.instruction!.attributes![0].max), value: String(d.instruction!.attributes![0].value) },
    }] : []);
  }
}
