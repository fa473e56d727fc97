// The CLI's lines for a plan (under apply and rollback, and `tessera app history -p`): one line per
// component that changes and one per field under it. Pure: plans in, lines out.
import { expect } from 'chai';
import { historyPlanLines, planLines } from '../../coordinator/cli/plan-lines';
import { planChanges } from '../../coordinator/apps/plan';
import { normalizeAppSpec } from '../../coordinator/apps/spec';

const comp = (over: Record<string, unknown> = {}) => ({ name: 'web', image: 'img:1', resources: { cpuMillis: 100, memoryMib: 64 }, instances: 2, ...over });
const spec = (...components: unknown[]) => normalizeAppSpec({ name: 'shop', components } as never);

describe('plan lines (the CLI)', () => {
  it('says per component what becomes of its instances, as an answer gives the action (PLAN_ACTION_*) or as the plan holds it', () => {
    const lines = planLines([
      { component: 'web', action: 'PLAN_ACTION_REPLACE', instancesFrom: 4, instancesTo: 3, changes: [{ field: 'image', from: '"img:1"', to: '"img:2"' }] },
      { component: 'db', action: 'PLAN_ACTION_CREATE', instancesFrom: 0, instancesTo: 1, changes: [] },
      { component: 'old', action: 'PLAN_ACTION_DESTROY', instancesFrom: 2, instancesTo: 0, changes: [] },
      { component: 'same', action: 'PLAN_ACTION_NONE', instancesFrom: 2, instancesTo: 2, changes: [] },
      { component: 'sized', action: 'PLAN_ACTION_NONE', instancesFrom: 2, instancesTo: 2, changes: [], note: 'its scaling policy sizes it: 2 instances run whatever instances says' },
    ]);
    expect(lines).to.deep.equal([
      '~ web: its instances are replaced by its update strategy (4 -> 3 instances)',
      '    image  "img:1" => "img:2"',
      '+ db: new, 1 instance to place',
      '- old: removed, its 2 instances stop',
      '~ sized: changed in place, no instance restarts',
      '    (its scaling policy sizes it: 2 instances run whatever instances says)',
    ]);
    // The plan as the coordinator computes it (history -p compares kept versions with it).
    expect(planLines(planChanges(spec(comp()), spec(comp({ instances: 3 }))))).to.deep.equal([
      '~ web: changed in place, no instance restarts (2 -> 3 instances)',
      '    instances  2 => 3',
    ]);
    expect(planLines(planChanges(spec(comp()), spec(comp())))).to.deep.equal([]);
  });

  it('shows long values that begin alike from a little before where they differ, and a restart\'s mark as a time', () => {
    const from = JSON.stringify(['mkdir -p /tmp/www && echo "hello from $TESSERA_INSTANCE_ID (slot $TESSERA_SLOT)" > /tmp/www/index.html']);
    const to = from.replace('hello from', 'hi again from');
    const [, args] = planLines([{ component: 'web', action: 'PLAN_ACTION_REPLACE', instancesFrom: 1, instancesTo: 1, changes: [{ field: 'args', from, to }] }]);
    // Clipped from the start, both sides would read alike: the difference is on the line.
    expect(args).to.match(/^ {4}args {2}….*"hello from .* => ….*"hi again from /);
    const [, mark] = planLines([{ component: 'web', action: 'PLAN_ACTION_REPLACE', instancesFrom: 1, instancesTo: 1, changes: [{ field: 'restartedAtMs', from: '', to: String(Date.UTC(2026, 10, 29, 2, 57, 41, 636)) }] }]);
    expect(mark).to.equal('    restartedAtMs  (none) => 2026-11-29T02:57:41.636Z');
  });

  it('compares each kept version with the kept one before it for history -p, naming a version it cannot read and comparing the rest', () => {
    const raw = (over: Record<string, unknown> = {}) => ({ name: 'shop', components: [comp(over)] }) as never;
    const lines = historyPlanLines([
      { version: 3, spec: raw({ instances: 3 }) },
      // Stored under rules since tightened (as a coordinator from before them would have kept it).
      { version: 5, spec: raw({ instances: 3, health: { type: 'carrier-pigeon' } }) },
      { version: 6, spec: raw({ instances: 3, image: 'img:2' }) },
      { version: 2, spec: raw() },
      { version: 7, spec: raw({ instances: 3, image: 'img:2' }) },
    ]);
    expect(lines).to.deep.equal([
      '', 'version 7 against version 6: no change in the spec',
      '', 'version 6 against version 5:',
      '    (not compared: components[0].health.type: must be one of none, http, tcp, grpc, exec, got "carrier-pigeon")',
      '', 'version 5 against version 3:',
      '    (not compared: components[0].health.type: must be one of none, http, tcp, grpc, exec, got "carrier-pigeon")',
      '', 'version 3 against version 2:',
      '~ web: changed in place, no instance restarts (2 -> 3 instances)',
      '    instances  2 => 3',
    ]);
    expect(historyPlanLines([{ version: 1, spec: raw() }])).to.deep.equal([]);
  });
});
