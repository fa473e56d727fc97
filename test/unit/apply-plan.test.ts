// An apply's plan (nomad job plan): which fields change, and per component whether its instances
// are created, stopped, replaced or left running. Pure: normalised specs in, the plan out.
import { expect } from 'chai';
import { planChanges } from '../../coordinator/apps/plan';
import { normalizeAppSpec } from '../../coordinator/apps/spec';

const web = (over: Record<string, unknown> = {}) => ({
  name: 'web', image: 'img:1', resources: { cpuMillis: 100, memoryMib: 64 }, instances: 2,
  ports: [{ name: 'http' }, { name: 'admin' }], env: { MODE: 'a', WORKERS: '2' }, tunables: [{ env: 'WORKERS', min: 1, max: 4 }], ...over,
});
const db = { name: 'db', image: 'pg:1', resources: { cpuMillis: 200, memoryMib: 128 }, instances: 1 };
const spec = (components: unknown[], labels: Record<string, string> = {}) => normalizeAppSpec({ name: 'shop', components, labels } as never);
const plan = (a: unknown[], b: unknown[], la?: Record<string, string>, lb?: Record<string, string>) => planChanges(spec(a, la), spec(b, lb));

describe('apply plan', () => {
  it('creates every component of a first version, and says none for a component that does not change', () => {
    expect(planChanges(undefined, spec([web()]))).to.deep.equal([{ component: 'web', action: 'create', instancesFrom: 0, instancesTo: 2, changes: [] }]);
    expect(plan([web(), db], [web(), db]).map((p) => p.action)).to.deep.equal(['none', 'none']);
  });

  it('replaces instances when what they run changes, and names each field with its value before and after', () => {
    const [p] = plan([web()], [web({ image: 'img:2', env: { MODE: 'b', WORKERS: '2', DEBUG: '1' } })]);
    expect(p.action).to.equal('replace');
    expect(p.changes).to.deep.equal([
      { field: 'image', from: '"img:1"', to: '"img:2"' },
      { field: 'env.MODE', from: '"a"', to: '"b"' },
      { field: 'env.DEBUG', from: '', to: '"1"' },
    ]);
  });

  it('changes in place, none restarted: the count, the update strategy, a tunable\'s range', () => {
    const [p] = plan([web()], [web({ instances: 5, update: { maxParallel: 2 }, tunables: [{ env: 'WORKERS', min: 1, max: 8 }] })]);
    expect(p).to.deep.include({ action: 'in-place', instancesFrom: 2, instancesTo: 5 });
    expect(p.changes).to.have.deep.members([
      { field: 'instances', from: '2', to: '5' },
      { field: 'tunables[WORKERS].max', from: '4', to: '8' },
      { field: 'update.maxParallel', from: '1', to: '2' },
    ]);
  });

  it('matches ports by name: one added is one change, and the same ports in another order is a change of order', () => {
    const [added] = plan([web()], [web({ ports: [{ name: 'metrics' }, { name: 'http' }, { name: 'admin' }] })]);
    expect(added.action).to.equal('replace');
    expect(added.changes.map((c) => c.field)).to.deep.equal(['ports[metrics]']);
    const [swapped] = plan([web()], [web({ ports: [{ name: 'admin' }, { name: 'http' }] })]);
    expect(swapped.changes).to.deep.equal([{ field: 'ports[*]', from: '["http","admin"]', to: '["admin","http"]' }]);
  });

  it('creates and removes components, and changes the app\'s labels in place', () => {
    const p = plan([web()], [web(), db], {}, { team: 'shop' });
    expect(p.map((x) => [x.component, x.action, x.instancesFrom, x.instancesTo])).to.deep.equal([['', 'in-place', 0, 0], ['web', 'none', 2, 2], ['db', 'create', 0, 1]]);
    expect(p[0].changes).to.deep.equal([{ field: 'labels.team', from: '', to: '"shop"' }]);
    expect(plan([web(), db], [db]).map((x) => [x.component, x.action, x.instancesFrom])).to.deep.equal([['web', 'destroy', 2], ['db', 'none', 1]]);
  });

  it('takes a default written out for no change (normalised on both sides)', () => {
    expect(plan([web()], [web({ update: { maxParallel: 1 }, restart: { attempts: 3 } })])[0].action).to.equal('none');
  });
});
