// Every example file the README and the demo apply reads cleanly (no unknown field, maps as maps).
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readSpecFile } from '../../common/spec-file';
import { InvalidArgumentError } from '../../common/errors';
import { repoRoot } from '../../common/version';

describe('example spec files', () => {
  const files: [string, string][] = [
    ['examples/hello/app.yaml', 'AppSpec'], ['examples/queue/app.yaml', 'AppSpec'], ['examples/queue/policy.yaml', 'ScalingPolicy'],
    ['examples/pipeline/app.yaml', 'AppSpec'], ['examples/pipeline/pipeline.yaml', 'Pipeline'],
    ['examples/db/app.yaml', 'AppSpec'], ['examples/db/pipeline.yaml', 'Pipeline'], ['examples/db/policy.yaml', 'ScalingPolicy'],
  ];
  for (const [file, message] of files) {
    it(`${file} is a valid ${message}`, () => {
      expect(readSpecFile(path.join(repoRoot(), file), message)).to.be.an('object');
    });
  }
  it('still refuses an unknown field and a list given as a map', () => {
    try {
      readSpecFile(path.join(repoRoot(), 'examples/db/app.yaml').replace('app.yaml', 'nope.yaml'));
    } catch (e) {
      expect((e as Error).message).to.match(/ENOENT/);
    }
    const bad = () => (require('../../common/spec-file') as typeof import('../../common/spec-file')).unknownFields({ components: [{ imgae: 'x', env: { A: '1' }, ports: { name: 'x' } }] }, 'AppSpec', '');
    expect(bad().map((v) => v.field)).to.deep.equal(['components[0].imgae', 'components[0].ports']);
    expect(InvalidArgumentError).to.be.a('function');
  });
  it('keeps a number written where a string is due as the text written (version: 1.0 stays "1.0")', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spec-'));
    try {
      fs.writeFileSync(path.join(dir, 'p.yaml'), 'name: p\nstages:\n  - { name: a, kind: k, version: 1.0 }\n  - { name: b, kind: k2, version: 1.10 }\n');
      // As numbers they would be "1" (any 1.x) and "1.1": another range than the one written.
      expect((readSpecFile(path.join(dir, 'p.yaml'), 'Pipeline').stages as { version: string }[]).map((s) => s.version)).to.deep.equal(['1.0', '1.10']);
      fs.writeFileSync(path.join(dir, 'a.json'), '{"name":"x","components":[{"name":"a","image":"i","command":["sleep",3600,1.50],"env":{"RATIO":0.50,"HEX":"0x1F"},"resources":{"cpuMillis":100}}]}');
      const c = (readSpecFile(path.join(dir, 'a.json')).components as Record<string, unknown>[])[0];
      expect(c.command).to.deep.equal(['sleep', '3600', '1.50']);
      expect(c.env).to.deep.equal({ RATIO: '0.50', HEX: '0x1F' });
      expect(c.resources).to.deep.equal({ cpuMillis: 100 });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  it('refuses a value of the wrong type, which protobuf would coerce (100m to 0, "false" to true)', () => {
    const { unknownFields } = require('../../common/spec-file') as typeof import('../../common/spec-file');
    const bad = unknownFields({
      name: 'x',
      components: [{ name: 'a', image: 'i', command: ['sleep', 3600], resources: { cpuMillis: '100m', memoryMib: 64 }, readOnlyRoot: 'false', instances: 2.5, env: { PORT: 8080 }, args: 'one' }],
    }, 'AppSpec', '');
    expect(bad).to.deep.equal([
      { field: 'components[0].resources.cpuMillis', message: 'must be a whole number, got "100m"' },
      { field: 'components[0].readOnlyRoot', message: 'must be true or false, got "false"' },
      { field: 'components[0].instances', message: 'must be a whole number, got 2.5' },
      { field: 'components[0].args', message: 'must be a list' },
    ]);
  });
  it('refuses a scalar or a list where a map of fields is due, by path (protobuf failed to encode it: INTERNAL, no path)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-spec-'));
    try {
      fs.writeFileSync(path.join(dir, 'a.yaml'), 'name: x\ncomponents: [1, {name: a, image: i, health: http, env: [A], resources: 5, ports: [http], secretEnv: {K: {s: 1}}}]\n');
      let err: unknown;
      try { readSpecFile(path.join(dir, 'a.yaml')); } catch (e) { err = e; }
      expect((err as InvalidArgumentError).violations).to.deep.equal([
        { field: 'components[0]', message: 'must be a map of fields, got 1' },
        { field: 'components[1].health', message: 'must be a map of fields, got "http"' },
        { field: 'components[1].env', message: 'must be a map, got a list' },
        { field: 'components[1].resources', message: 'must be a map of fields, got 5' },
        { field: 'components[1].ports[0]', message: 'must be a map of fields, got "http"' },
        { field: 'components[1].secretEnv.K', message: 'must be a string, got {"s":1}' },
      ]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
