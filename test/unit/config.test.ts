import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { compileLayers, envLayer, fileLayer, Schema } from '../../common/config';
import { loadTokens, sha256 } from '../../coordinator/auth';
import { ConfigError } from '../../common/errors';
import { compileCoordinatorConfig } from '../../coordinator/config';
import { compileAgentConfig } from '../../agent/config';

const schema = {
  name: { type: 'string', doc: 'n', env: 'X_NAME', default: 'a' },
  count: { type: 'int', doc: 'c', env: 'X_COUNT', default: 1, min: 1, max: 10 },
  on: { type: 'bool', doc: 'o', default: false },
  list: { type: 'list', doc: 'l', default: [] },
  map: { type: 'map', doc: 'm', default: {} },
  level: { type: 'string', doc: 'lv', oneOf: ['info', 'debug'] },
} satisfies Schema;

function violations(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return (err as ConfigError).violations.map((v) => `${v.field}: ${v.message}`);
  }
  throw new Error('expected a ConfigError');
}

describe('config compilation', () => {
  it('applies layers in order: defaults < file < env < flags', () => {
    const cfg = compileLayers<Record<string, unknown>>(schema, [
      { source: 'file f', values: { name: 'file', count: 2 } },
      envLayer(schema, { X_NAME: 'env' }),
      { source: 'flag', values: { count: '3' } },
    ]);
    expect(cfg).to.deep.include({ name: 'env', count: 3, on: false });
  });

  const cases: [string, Record<string, unknown>, string][] = [
    ['non-integer', { count: '2.5' }, 'count: must be an integer, got 2.5 (from flag)'],
    ['below min', { count: 0 }, 'count: must be >= 1, got 0 (from flag)'],
    ['above max', { count: '11' }, 'count: must be <= 10, got 11 (from flag)'],
    ['not a number', { count: 'many' }, 'count: must be a number, got "many" (from flag)'],
    ['bad bool', { on: 'maybe' }, 'on: must be true or false, got "maybe" (from flag)'],
    ['bad map entry', { map: 'a=1,b' }, 'map: must be key=value pairs separated by commas, got "b" (from flag)'],
    ['not one of', { level: 'loud' }, 'level: must be one of info, debug, got "loud" (from flag)'],
    ['unknown key', { colour: 'red' }, 'colour: unknown setting (from flag)'],
  ];
  for (const [name, values, expected] of cases) {
    it(`reports ${name} with the field path and source`, () => {
      expect(violations(() => compileLayers(schema, [{ source: 'flag', values }]))).to.deep.equal([expected]);
    });
  }

  it('reports every problem at once', () => {
    expect(violations(() => compileLayers(schema, [{ source: 'flag', values: { count: 0, on: 'x' } }]))).to.have.length(2);
  });

  it('takes a number written in a file for a string setting as the text written', () => {
    const file = path.join(os.tmpdir(), `config-${process.pid}.yaml`);
    fs.writeFileSync(file, 'name: 010\nlist: [a, 1.10]\nmap: { rack: 01, zone: 2.0 }\ncount: 3\n');
    try {
      const cfg = compileLayers<Record<string, unknown>>(schema, [fileLayer(file)]);
      // YAML reads them as 10, 1.1, 1 and 2: the setting would differ from the file.
      expect(cfg).to.deep.include({ name: '010', list: ['a', '1.10'], map: { rack: '01', zone: '2.0' }, count: 3 });
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('parses lists and maps from strings', () => {
    const cfg = compileLayers<Record<string, unknown>>(schema, [{ source: 'env', values: { list: 'a, b,,c', map: 'zone=a,disk=ssd' } }]);
    expect(cfg.list).to.deep.equal(['a', 'b', 'c']);
    expect(cfg.map).to.deep.equal({ zone: 'a', disk: 'ssd' });
  });
});

describe('coordinator config', () => {
  it('defaults advertise to listen and derives an id', () => {
    const c = compileCoordinatorConfig([{ source: 'flag', values: { listen: '127.0.0.1:7555', insecureDev: true } }]);
    expect(c.advertise).to.equal('127.0.0.1:7555');
    expect(c.id).to.match(/-7555$/);
    expect(c.etcdEndpoints).to.deep.equal([]);
  });

  const bad: [string, Record<string, unknown>, string][] = [
    ['a margin not below the TTL', { leaseTtlSeconds: 2, leaseMarginMs: 2000 }, 'leaseMarginMs'],
    ['a margin over half the TTL (the leader would step down between two lease renewals)', { leaseTtlSeconds: 6, leaseMarginMs: 4500 }, 'leaseMarginMs'],
    ['a TTL below etcd minimum', { leaseTtlSeconds: 1 }, 'leaseTtlSeconds'],
    ['a heartbeat timeout not above the report interval', { heartbeatTimeoutMs: 1000, reportIntervalMs: 1000 }, 'heartbeatTimeoutMs'],
    ['a malformed etcd endpoint', { etcdEndpoints: '127.0.0.1:2379,nohost' }, 'etcdEndpoints[1]'],
    ['a prefix without slashes', { etcdPrefix: 'tessera' }, 'etcdPrefix'],
    ['a wildcard advertise address', { listen: '0.0.0.0:7400' }, 'advertise'],
    ['an advertise address on port 0 (the kernel picks the port at bind)', { listen: '127.0.0.1:0' }, 'advertise'],
    ['a relay key rotated more often than once a minute', { relayKeyRotationMs: 30_000 }, 'relayKeyRotationMs'],
  ];
  for (const [name, values, field] of bad) {
    it(`refuses ${name}`, () => {
      const v = violations(() => compileCoordinatorConfig([{ source: 'flag', values: { insecureDev: true, ...values } }]));
      expect(v.some((s) => s.startsWith(field + ':')), v.join('; ')).to.equal(true);
    });
  }
});

describe('TLS is the default', () => {
  it('refuses a coordinator or an agent without certificates unless insecureDev', () => {
    expect(violations(() => compileCoordinatorConfig([]))).to.deep.equal(['tlsCert: TLS is required: give tlsCa, tlsCert and tlsKey (scripts/make-certs.sh makes them), or --insecure-dev for plaintext on a trial']);
    expect(violations(() => compileAgentConfig([])).map((x) => x.split(':')[0])).to.deep.equal(['tlsCert']);
    // Named files are read with the settings: one that cannot be read is refused by its field.
    expect(violations(() => compileAgentConfig([{ source: 'flag', values: { tlsCa: 'a', tlsCert: 'b', tlsKey: 'c' } }])).map((x) => x.split(':')[0])).to.deep.equal(['tlsCa', 'tlsCert', 'tlsKey']);
  });
  it('refuses a tokens file with a bad role, naming the entry', () => {
    const file = path.join(os.tmpdir(), `tokens-${process.pid}.yaml`);
    fs.writeFileSync(file, 'tokens:\n  - { name: x, role: admin, token: t }\n');
    try {
      expect(violations(() => compileCoordinatorConfig([{ source: 'flag', values: { insecureDev: true, tokensFile: file } }]))).to.deep.equal(['tokens[0].role: must be read-only or operator, got "admin"']);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
  it('reads a token of digits as written (YAML would read 0123456789 as the number 123456789)', () => {
    const file = path.join(os.tmpdir(), `tokens-digits-${process.pid}.yaml`);
    fs.writeFileSync(file, 'tokens:\n  - { name: pin, role: read-only, token: 0123456789 }\n  - { name: long, role: operator, token: 12345678901234567890123 }\n');
    try {
      const [pin, long] = loadTokens(file);
      expect(pin.hash.equals(sha256('0123456789'))).to.equal(true);
      expect(long.hash.equals(sha256('12345678901234567890123'))).to.equal(true);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
  it('wants the three etcd TLS files together', () => {
    expect(violations(() => compileCoordinatorConfig([{ source: 'flag', values: { insecureDev: true, etcdCa: 'ca.pem' } }])).map((x) => x.split(':')[0])).to.deep.equal(['etcdCa']);
  });
});

describe('agent config', () => {
  it('accepts a list of coordinators and labels', () => {
    const c = compileAgentConfig([{ source: 'env', values: { coordinators: '127.0.0.1:1,127.0.0.1:2', labels: 'zone=a', insecureDev: 'true' } }]);
    expect(c.coordinators).to.deep.equal(['127.0.0.1:1', '127.0.0.1:2']);
    expect(c.labels).to.deep.equal({ zone: 'a' });
  });
  it('refuses a bad node id and a bad coordinator address', () => {
    const v = violations(() => compileAgentConfig([{ source: 'flag', values: { nodeId: '-x', coordinators: 'nope', insecureDev: true } }]));
    expect(v.map((s) => s.split(':')[0]).sort()).to.deep.equal(['coordinators[0]', 'nodeId']);
  });
  it('takes image garbage collection thresholds within 0-100, the low one at most the high one', () => {
    const c = compileAgentConfig([{ source: 'flag', values: { insecureDev: true } }]);
    expect([c.imageGcHighPercent, c.imageGcLowPercent, c.imageGcMinAgeMs]).to.deep.equal([85, 80, 120_000]);
    expect(violations(() => compileAgentConfig([{ source: 'flag', values: { insecureDev: true, imageGcHighPercent: 70 } }]))).to.deep.equal(['imageGcLowPercent: must be at most imageGcHighPercent (70), got 80']);
    expect(violations(() => compileAgentConfig([{ source: 'env', values: { insecureDev: 'true', imageGcHighPercent: '101' } }])).map((x) => x.split(':')[0])).to.deep.equal(['imageGcHighPercent']);
  });
});
