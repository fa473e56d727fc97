// The CLI's lines for a plan (an apply's, a rollback's, a version against the one before it in
// `tessera app history -p`), as `nomad job plan` prints one.
import { clip, enumName } from '../../common/table';
import { planChanges } from '../apps/plan';
import { normalizeAppSpec } from '../apps/spec';
import type { AppSpec__Output } from '../../common/generated/tessera/v1/AppSpec';

/**
 * An apply's plan against the version it went over, as nomad job plan shows it: a line per
 * component that changes (+ created, - stopped, ~ replaced or changed in place) and under it each
 * field, before => after. Empty when nothing changes.
 */
/** A restart's mark (restartedAtMs) is a time: shown as one. */
const when = (v: string) => (/^\d{12,}$/.test(v) ? new Date(Number(v)).toISOString() : v);

export function planLines(plan: { component: string; action: string; instancesFrom: number; instancesTo: number; changes: { field: string; from: string; to: string }[]; note?: string }[]): string[] {
  const lines: string[] = [];
  const count = (n: number) => `${n} instance${n === 1 ? '' : 's'}`;
  for (const p of plan) {
    const action = enumName(p.action, 'PLAN_ACTION_').toLowerCase().replace('_', '-');
    const sized = p.instancesFrom !== p.instancesTo ? ` (${p.instancesFrom} -> ${p.instancesTo} instances)` : '';
    if (action === 'none' && !p.note) continue;
    if (!p.component) lines.push('~ app: changed in place, no instance restarts');
    else if (action === 'create') lines.push(`+ ${p.component}: new, ${count(p.instancesTo)} to place`);
    else if (action === 'destroy') lines.push(`- ${p.component}: removed, its ${count(p.instancesFrom)} stop`);
    else if (action === 'replace') lines.push(`~ ${p.component}: its instances are replaced by its update strategy${sized}`);
    else lines.push(`~ ${p.component}: changed in place, no instance restarts${sized}`);
    if (p.note) lines.push(`    (${p.note})`);
    const width = Math.min(40, Math.max(0, ...p.changes.map((c) => c.field.length)));
    for (const raw of p.changes) {
      const c = raw.field === 'restartedAtMs' ? { ...raw, from: when(raw.from), to: when(raw.to) } : raw;
      // Long values that begin alike (a command line, an args list) are shown from a little
      // before where they differ, so that the difference is on the screen.
      let same = 0;
      while (c.from && c.to && same < c.from.length && c.from[same] === c.to[same]) same++;
      const from = same > 30 && c.from.length > 60 ? `…${c.from.slice(same - 15)}` : c.from;
      const to = same > 30 && c.to.length > 60 ? `…${c.to.slice(same - 15)}` : c.to;
      lines.push(`    ${c.field.padEnd(width)}  ${clip(from || '(none)', 60)} => ${clip(to || '(none)', 60)}`);
    }
  }
  return lines;
}

/**
 * `tessera app history -p` (nomad job history -p): each kept version's plan lines against the kept
 * version before it, newest first. A version whose spec no longer normalises (stored by an older
 * coordinator under rules since tightened) is named, not compared, and the others still are.
 */
export function historyPlanLines(versions: { version: number | string; spec?: AppSpec__Output | null }[]): string[] {
  const kept = [...versions].sort((a, b) => Number(b.version) - Number(a.version));
  const lines: string[] = [];
  for (let i = 0; i < kept.length - 1; i++) {
    const [v, prev] = [kept[i], kept[i + 1]];
    let plan: string[];
    try {
      plan = planLines(planChanges(normalizeAppSpec(prev.spec), normalizeAppSpec(v.spec)));
    } catch (e) {
      plan = [`    (not compared: ${(e as Error).message})`];
    }
    lines.push('', `version ${v.version} against version ${prev.version}:${plan.length ? '' : ' no change in the spec'}`, ...plan);
  }
  return lines;
}
