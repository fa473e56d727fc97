// Pipelines: named, validated, versioned definitions of a job's stages. Each stage needs a
// component kind (optionally an operation and a semver range), or offers alternatives (several
// kinds, each with a cost hint and an optional when_header rule).
import * as semver from 'semver';
import { FieldViolation, InvalidArgumentError, NotFoundError } from '../../common/errors';
import type { Pipeline, Pipeline__Output } from '../../common/generated/tessera/v1/Pipeline';
import type { Keys } from '../keys';
import { attributed, Store } from '../store';

export const MAX_STAGES = 32;
export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_PAYLOAD = 256 * 1024;
export const MAX_PAYLOAD = 1024 * 1024;

export interface NormalOption {
  kind: string;
  operation: string;
  version: string;
  costHint: number;
  whenHeader: string;
}

export interface NormalStage {
  name: string;
  options: NormalOption[];
  timeoutMs: number;
  maxAttempts: number;
}

export interface NormalPipeline {
  name: string;
  stages: NormalStage[];
  defaultTimeoutMs: number;
  maxPayloadBytes: number;
  routing: Routing;
  version: number;
  updatedAtMs: number;
}

export type Routing = 'path-cost' | 'least-loaded' | 'round-robin';
const ROUTINGS = new Set<Routing>(['path-cost', 'least-loaded', 'round-robin']);

const NAME_RE = /^[a-z][a-z0-9-]{0,62}$/;
const OP_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,62}$/;
const HEADER_RULE_RE = /^[A-Za-z0-9_.-]{1,64}=.{0,256}$/;

/** Validates by field path (every problem at once) and fills in defaults. */
export function normalizePipeline(p: Pipeline | Pipeline__Output | null | undefined): NormalPipeline {
  const v: FieldViolation[] = [];
  const bad = (field: string, message: string) => v.push({ field, message });
  if (!p) throw InvalidArgumentError.field('pipeline', 'is required');
  if (!NAME_RE.test(p.name ?? '')) bad('pipeline.name', `must be 1-63 characters of a-z, 0-9 and "-", starting with a letter; got ${JSON.stringify(p.name ?? '')}`);
  const stages = p.stages ?? [];
  if (!stages.length) bad('pipeline.stages', 'at least one stage is required');
  if (stages.length > MAX_STAGES) bad('pipeline.stages', `at most ${MAX_STAGES} stages`);
  const names = new Set<string>();
  const out: NormalStage[] = stages.map((s, i) => {
    const at = `pipeline.stages[${i}]`;
    if (!NAME_RE.test(s.name ?? '')) bad(`${at}.name`, `must match ${NAME_RE.source}, got ${JSON.stringify(s.name ?? '')}`);
    else if (names.has(s.name!)) bad(`${at}.name`, `duplicate stage name "${s.name}"`);
    names.add(s.name ?? '');
    const alts = s.alternatives ?? [];
    if (s.kind && alts.length) bad(`${at}.kind`, 'give either kind or alternatives, not both');
    if (!s.kind && !alts.length) bad(`${at}.kind`, 'is required (or give alternatives)');
    const raw = s.kind ? [{ kind: s.kind, operation: s.operation, version: s.version, costHint: 1, whenHeader: '' }] : alts;
    if (!s.kind && (s.operation || s.version)) bad(`${at}.operation`, 'with alternatives, set operation and version on each alternative');
    const kinds = new Set<string>();
    const options = raw.map((o, j) => {
      const oat = s.kind ? at : `${at}.alternatives[${j}]`;
      if (!NAME_RE.test(o.kind ?? '')) bad(`${oat}.kind`, `must be a component kind (a-z, 0-9, "-"), got ${JSON.stringify(o.kind ?? '')}`);
      else if (kinds.has(o.kind!)) bad(`${oat}.kind`, `kind ${o.kind} is offered twice`);
      kinds.add(o.kind ?? '');
      if (o.operation && !OP_RE.test(o.operation)) bad(`${oat}.operation`, `not an operation name: ${JSON.stringify(o.operation)}`);
      if (o.version && !semver.validRange(o.version)) bad(`${oat}.version`, `not a semver range: ${JSON.stringify(o.version)}`);
      const hint = o.costHint === undefined || o.costHint === null || Number(o.costHint) === 0 ? 1 : Number(o.costHint);
      if (!(hint > 0) || hint > 1000) bad(`${oat}.costHint`, 'must be > 0 and <= 1000 (0: 1)');
      if (o.whenHeader && !HEADER_RULE_RE.test(o.whenHeader)) bad(`${oat}.whenHeader`, `must be name=value, got ${JSON.stringify(o.whenHeader)}`);
      return { kind: o.kind ?? '', operation: o.operation ?? '', version: o.version ?? '', costHint: hint, whenHeader: o.whenHeader ?? '' };
    });
    const timeoutMs = Number(s.timeoutMs ?? 0);
    if (timeoutMs < 0 || timeoutMs > 3_600_000) bad(`${at}.timeoutMs`, 'must be 0..3600000 (0: the job deadline)');
    const maxAttempts = Number(s.maxAttempts ?? 0) || 3;
    if (maxAttempts < 1 || maxAttempts > 10) bad(`${at}.maxAttempts`, 'must be 1..10 (0: 3)');
    return { name: s.name ?? '', options, timeoutMs, maxAttempts };
  });
  const defaultTimeoutMs = Number(p.defaultTimeoutMs ?? 0) || DEFAULT_TIMEOUT_MS;
  if (defaultTimeoutMs < 1 || defaultTimeoutMs > 24 * 3_600_000) bad('pipeline.defaultTimeoutMs', 'must be 1 ms..24 h (0: 30 s)');
  const maxPayloadBytes = Number(p.maxPayloadBytes ?? 0) || DEFAULT_MAX_PAYLOAD;
  if (maxPayloadBytes < 1 || maxPayloadBytes > MAX_PAYLOAD) bad('pipeline.maxPayloadBytes', `must be 1..${MAX_PAYLOAD} (0: ${DEFAULT_MAX_PAYLOAD})`);
  const routing = (p.routing || 'path-cost') as Routing;
  if (!ROUTINGS.has(routing)) bad('pipeline.routing', `must be one of ${[...ROUTINGS].join(', ')}, got ${JSON.stringify(p.routing)}`);
  if (v.length) throw new InvalidArgumentError(v);
  return { name: p.name!, stages: out, defaultTimeoutMs, maxPayloadBytes, routing, version: 0, updatedAtMs: 0 };
}

export function pipelineToProto(p: NormalPipeline): Pipeline {
  return {
    name: p.name, defaultTimeoutMs: p.defaultTimeoutMs, maxPayloadBytes: p.maxPayloadBytes, routing: p.routing ?? 'path-cost', version: p.version, updatedAtMs: p.updatedAtMs,
    stages: p.stages.map((s) => (s.options.length === 1 && !s.options[0].whenHeader && s.options[0].costHint === 1
      ? { name: s.name, kind: s.options[0].kind, operation: s.options[0].operation, version: s.options[0].version, timeoutMs: s.timeoutMs, maxAttempts: s.maxAttempts }
      : { name: s.name, alternatives: s.options, timeoutMs: s.timeoutMs, maxAttempts: s.maxAttempts })),
  };
}

/** The leader's pipelines: durable in etcd, mirrored in memory. */
export class Pipelines {
  private byName = new Map<string, NormalPipeline>();

  constructor(private readonly store: Store, private readonly keys: Keys) {}

  async load(): Promise<void> {
    const all = await this.store.client.getAll().prefix(this.keys.pipelines).strings();
    for (const v of Object.values(all)) {
      const p = JSON.parse(v) as NormalPipeline;
      this.byName.set(p.name, p);
    }
  }

  get(name: string): NormalPipeline {
    if (!name) throw InvalidArgumentError.field('pipeline', 'is required');
    const p = this.byName.get(name);
    if (!p) throw new NotFoundError('pipeline', name);
    return p;
  }

  list(): NormalPipeline[] {
    return [...this.byName.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  async apply(raw: Pipeline__Output | null | undefined, dryRun: boolean, by = ''): Promise<NormalPipeline> {
    const p = normalizePipeline(raw);
    const prev = this.byName.get(p.name);
    const same = prev && JSON.stringify({ ...prev, version: 0, updatedAtMs: 0 }) === JSON.stringify(p);
    if (dryRun || same) return prev && same ? prev : p;
    const rec = { ...p, version: (prev?.version ?? 0) + 1, updatedAtMs: Date.now() };
    await this.store.commit([{ type: 'put', key: this.keys.pipeline(p.name), value: JSON.stringify(rec) }], [attributed({
      kind: 'pipeline.applied', subject: p.name, message: `pipeline ${p.name} version ${rec.version}: ${p.stages.map((s) => `${s.name}(${s.options.map((o) => o.kind).join('|')})`).join(' -> ')}`,
      fields: { version: String(rec.version) },
    }, by)]);
    this.byName.set(p.name, rec);
    return rec;
  }

  async delete(name: string, by = ''): Promise<NormalPipeline> {
    const p = this.get(name);
    await this.store.commit([{ type: 'delete', key: this.keys.pipeline(name) }], [attributed({ kind: 'pipeline.deleted', subject: name, message: `pipeline ${name} deleted` }, by)]);
    this.byName.delete(name);
    return p;
  }
}
