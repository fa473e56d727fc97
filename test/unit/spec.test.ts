import { expect } from 'chai';
import { InvalidArgumentError } from '../../common/errors';
import { largestField, MAX_SPEC_BYTES, normalizeAppSpec, parseSecretRef, updateOrder } from '../../coordinator/apps/spec';
import { componentHash } from '../../coordinator/apps/records';
import { cpuQuotaNanos } from '../../agent/docker-runtime';

const good = () => ({
  name: 'shop',
  components: [
    { name: 'web', image: 'img', resources: { cpuMillis: 100, memoryMib: 64 }, instances: 2, ports: [{ name: 'http', port: 0 }], health: { type: 'http', port: 'http' } },
    { name: 'db', image: 'img', resources: { cpuMillis: 200, memoryMib: 128 }, instances: 1 },
  ],
});

function problems(spec: unknown): string[] {
  try {
    normalizeAppSpec(spec as never);
  } catch (e) {
    expect(e).to.be.instanceOf(InvalidArgumentError);
    return (e as InvalidArgumentError).violations.map((v) => v.field);
  }
  return [];
}

describe('app spec validation', () => {
  it('accepts a good spec and fills in defaults', () => {
    const s = normalizeAppSpec(good() as never);
    expect(s.components[0].placement).to.equal('spread');
    expect(s.components[0].health.path).to.equal('/');
    expect(s.components[0].restart.attempts).to.equal(3);
    expect(s.components[1].health.type).to.equal('none');
    expect(s.components[0].update.maxParallel).to.equal(1);
  });

  it('tells a health grace of 0 (none) from one left out (10 s)', () => {
    const s = good() as any; // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(normalizeAppSpec(s as never).components[0].health.graceMs).to.equal(10_000);
    s.components[0].health.graceMs = 0;
    expect(normalizeAppSpec(s as never).components[0].health.graceMs).to.equal(0);
    s.components[0].health.graceMs = 2_500;
    expect(normalizeAppSpec(s as never).components[0].health.graceMs).to.equal(2_500);
  });

  it('replaces a component with volumes stop-first unless told otherwise, and leaves the order out of the spec until named (no restarts on upgrade)', () => {
    const s = good() as any; // eslint-disable-line @typescript-eslint/no-explicit-any
    s.components[1].volumes = [{ name: 'data', path: '/data' }];
    const n = normalizeAppSpec(s as never);
    expect([updateOrder(n.components[0]), updateOrder(n.components[1])]).to.deep.equal(['start-first', 'stop-first']);
    expect(n.components[1].update).to.not.have.property('order');
    s.components[1].update = { order: 'start-first' };
    expect(updateOrder(normalizeAppSpec(s as never).components[1])).to.equal('start-first');
  });

  const cases: [string, (s: any) => void, string[]][] = [
    ['a zero memory limit', (s) => (s.components[1].resources.memoryMib = 0), ['components[1].resources.memoryMib']],
    ['a missing image', (s) => delete s.components[0].image, ['components[0].image']],
    ['a bad app name', (s) => (s.name = 'Shop!'), ['name']],
    ['duplicate component names', (s) => (s.components[1].name = 'web'), ['components[1].name']],
    ['no components', (s) => (s.components = []), ['components']],
    ['negative instances', (s) => (s.components[0].instances = -1), ['components[0].instances']],
    ['a health port that is not declared', (s) => (s.components[0].health.port = 'admin'), ['components[0].health.port']],
    ['an unknown health type', (s) => (s.components[0].health = { type: 'ping' }), ['components[0].health.type']],
    ['an exec check without a command', (s) => (s.components[1].health = { type: 'exec' }), ['components[1].health.command']],
    ['a negative health grace', (s) => (s.components[0].health.graceMs = -1), ['components[0].health.graceMs']],
    ['a fixed port on several instances without distinct hosts', (s) => (s.components[0].ports[0].port = 8080), ['components[0].distinctHosts']],
    ['a bad constraint op', (s) => (s.components[0].constraints = [{ label: 'zone', op: '~' }]), ['components[0].constraints[0].op']],
    ['an "in" constraint without values', (s) => (s.components[0].constraints = [{ label: 'zone', op: 'in' }]), ['components[0].constraints[0].values']],
    ['a relative volume path', (s) => (s.components[1].volumes = [{ name: 'data', path: 'data' }]), ['components[1].volumes[0].path']],
    ['a bad env name', (s) => (s.components[1].env = { 'A-B': '1' }), ['components[1].env.A-B']],
    ['a secretEnv value that is not SECRET/KEY', (s) => (s.components[1].secretEnv = { DB_PASSWORD: 'dbcreds' }), ['components[1].secretEnv.DB_PASSWORD']],
    ['a secretEnv name also set in env', (s) => { s.components[1].env = { TOKEN: 'x' }; s.components[1].secretEnv = { TOKEN: 'api/token' }; }, ['components[1].secretEnv.TOKEN']],
    ['a secretEnv name Tessera sets', (s) => (s.components[1].secretEnv = { PORT_HTTP: 'api/port' }), ['components[1].secretEnv.PORT_HTTP']],
    ['a bad secretEnv name', (s) => (s.components[1].secretEnv = { '1X': 'api/token' }), ['components[1].secretEnv.1X']],
    ['a migrating volume replaced start-first', (s) => { s.components[1].volumes = [{ name: 'data', path: '/data', migrate: true }]; s.components[1].update = { order: 'start-first' }; }, ['components[1].volumes[0].migrate']],
    ['an unknown placement', (s) => (s.components[0].placement = 'random'), ['components[0].placement']],
    ['an unknown update order', (s) => (s.components[0].update = { order: 'blue-green' }), ['components[0].update.order']],
    ['a tunable without a numeric starting value', (s) => (s.components[1].tunables = [{ env: 'BATCH', min: 1, max: 8 }]), ['components[1].env.BATCH']],
    ['a tunable whose value is outside its range', (s) => { s.components[1].env = { BATCH: '9' }; s.components[1].tunables = [{ env: 'BATCH', min: 1, max: 8 }]; }, ['components[1].env.BATCH']],
    ['a hard CPU limit under the Engine\'s smallest quota', (s) => { s.components[1].cpuHardLimit = true; s.components[1].resources.cpuMillis = 5; }, ['components[1].resources.cpuMillis']],
    ['several problems at once', (s) => { s.components[0].resources.cpuMillis = 0; s.components[1].image = ''; }, ['components[0].resources.cpuMillis', 'components[1].image']],
  ];
  for (const [name, mutate, fields] of cases) {
    it(`refuses ${name}, naming the field`, () => {
      const s = good();
      mutate(s);
      expect(problems(s)).to.deep.equal(fields);
    });
  }
  it('says "must be > 0" for a zero memory limit', () => {
    const s: any = good();
    s.components[1].resources.memoryMib = 0;
    expect(() => normalizeAppSpec(s)).to.throw('components[1].resources.memoryMib: must be > 0');
  });

  it('keeps imagePullPolicy out of the normal form at IfNotPresent (older specs hash as before), and spells it as Kubernetes does', () => {
    const plain = normalizeAppSpec(good() as never).components[1];
    const spelled: any = good();
    spelled.components[1].imagePullPolicy = 'ifnotpresent';
    expect(plain.imagePullPolicy).to.equal(undefined);
    expect(componentHash(normalizeAppSpec(spelled).components[1])).to.equal(componentHash(plain));
    const always: any = good();
    always.components[1].imagePullPolicy = 'always';
    const a = normalizeAppSpec(always).components[1];
    expect(a.imagePullPolicy).to.equal('Always');
    expect(componentHash(a)).to.not.equal(componentHash(plain));
    const bad: any = good();
    bad.components[1].imagePullPolicy = 'Sometimes';
    bad.components[0].image = 'Upper/Case:1';
    expect(() => normalizeAppSpec(bad)).to.throw(InvalidArgumentError).with.property('violations').that.deep.include.members([
      { field: 'components[1].imagePullPolicy', message: 'must be IfNotPresent (the default), Always or Never, got "Sometimes"' },
      { field: 'components[0].image', message: 'must be an image reference such as registry.example:5000/team/name:1.2 or name@sha256:<digest>, got "Upper/Case:1"' },
    ]);
  });
  it('keeps secretEnv out of the normal form when empty (older specs hash as before), and in it, references only, when named', () => {
    const plain = normalizeAppSpec(good() as never).components[1];
    const empty: any = good();
    empty.components[1].secretEnv = {};
    expect(plain).to.not.have.property('secretEnv');
    expect(componentHash(normalizeAppSpec(empty).components[1])).to.equal(componentHash(plain));
    const named: any = good();
    named.components[1].secretEnv = { DB_PASSWORD: 'db-creds/pass.word_1' };
    const n = normalizeAppSpec(named).components[1];
    expect(n.secretEnv).to.deep.equal({ DB_PASSWORD: 'db-creds/pass.word_1' });
    expect(componentHash(n)).to.not.equal(componentHash(plain));
    expect(parseSecretRef('db-creds/pass.word_1')).to.deep.equal({ secret: 'db-creds', key: 'pass.word_1' });
    expect([parseSecretRef('Db/x'), parseSecretRef('db/'), parseSecretRef('db'), parseSecretRef('db/a/b')]).to.deep.equal([undefined, undefined, undefined, undefined]);
  });

  it('keeps migrate out of the normal form when off, and out of the hash when on (turning it on restarts nothing)', () => {
    const vol = (extra: Record<string, unknown>) => { const s: any = good(); s.components[1].volumes = [{ name: 'data', path: '/data', ...extra }]; return normalizeAppSpec(s).components[1]; };
    expect(vol({}).volumes[0]).to.deep.equal({ name: 'data', path: '/data', readOnly: false });
    expect(vol({ migrate: false }).volumes[0]).to.not.have.property('migrate');
    expect(vol({ migrate: true }).volumes[0]).to.have.property('migrate', true);
    expect(componentHash(vol({ migrate: true }))).to.equal(componentHash(vol({})));
    expect(componentHash(vol({ readOnly: true }))).to.not.equal(componentHash(vol({})));
  });

  it('keeps cpuHardLimit out of the normal form when off, so older specs hash as before (no restarts)', () => {
    const plain = normalizeAppSpec(good() as never).components[1];
    const off: any = good();
    off.components[1].cpuHardLimit = false;
    const on: any = good();
    on.components[1].cpuHardLimit = true;
    expect(plain.cpuHardLimit).to.equal(undefined);
    expect(componentHash(normalizeAppSpec(off).components[1])).to.equal(componentHash(plain));
    const capped = normalizeAppSpec(on).components[1];
    expect(capped.cpuHardLimit).to.equal(true);
    expect(componentHash(capped)).to.not.equal(componentHash(plain)); // turning it on rolls the instances
  });

  it('turns a hard CPU limit into a CFS quota between 10m and the host\'s cores', () => {
    expect(cpuQuotaNanos(250, 2)).to.equal(250_000_000);
    expect(cpuQuotaNanos(5, 2)).to.equal(10_000_000);
    expect(cpuQuotaNanos(64_000, 2)).to.equal(2_000_000_000);
  });
});

describe('app spec size', () => {
  const spec = (blob: number) => ({ name: 'big', components: [{ name: 'web', image: 'busybox', env: { A: 'x', BLOB: 'y'.repeat(blob) }, resources: { cpuMillis: 10, memoryMib: 16 } }] });

  it('refuses a spec over the limit, naming its largest field', () => {
    try {
      normalizeAppSpec(spec(MAX_SPEC_BYTES) as never);
      expect.fail('accepted');
    } catch (err) {
      expect(err).to.be.instanceOf(InvalidArgumentError);
      const v = (err as InvalidArgumentError).violations[0];
      expect(v.field).to.equal('components[0].env.BLOB');
      expect(v.message).to.match(/^the spec is [\d,]+ bytes, at most 524,288 .*this field is 524,290 bytes/);
    }
  });

  it('takes a spec under the limit', () => {
    expect(normalizeAppSpec(spec(100_000) as never).components[0].env.BLOB).to.have.length(100_000);
  });

  it('finds the largest value by its path, in arrays and maps', () => {
    expect(largestField({ a: 'xx', b: [{ c: 'x' }, { d: 'xxxxx' }] })).to.deep.equal(['b[1].d', 7]);
    expect(largestField('x')).to.deep.equal(['', 3]);
  });
});
