// setFieldsOnly: a message as a file holds it, for the CLI's get commands that apply/set take back
// (app get --spec, pipeline get, policy get). Typed by the .proto, so map entries are never
// mistaken for defaults or for the loader's oneof markers.
import { expect } from 'chai';
import { setFieldsOnly } from '../../common/proto';

describe('setFieldsOnly (what get commands print for apply to take back)', () => {
  it('keeps what is set, a map entry set to "" or named with a leading _ included, and drops defaults and oneof markers', () => {
    // As the client decodes an answer: defaults filled in, "_graceMs" naming the optional field set.
    const decoded = {
      name: 'shop', labels: {},
      components: [{
        name: 'web', image: 'img:1', command: [], args: [], imagePullCredential: '',
        env: { _JAVA_OPTIONS: '-Xmx64m', EMPTY: '', name: 'x' }, secretEnv: {},
        resources: { cpuMillis: 100, memoryMib: 64 }, instances: 0,
        health: { type: 'http', path: '/', port: 'http', intervalMs: 1000, timeoutMs: 0, graceMs: 5000, _graceMs: 'graceMs' },
      }, {
        // An optional field set to its zero (the marker says so) is set; one without a marker is not.
        name: 'db', image: 'img:2', instances: 1, health: { type: 'tcp', port: 'db', graceMs: 0, _graceMs: 'graceMs' },
        update: { maxParallel: 0, canary: 0 },
      }],
    };
    expect(setFieldsOnly('AppSpec', decoded)).to.deep.equal({
      name: 'shop',
      components: [{
        name: 'web', image: 'img:1', env: { _JAVA_OPTIONS: '-Xmx64m', EMPTY: '', name: 'x' },
        resources: { cpuMillis: 100, memoryMib: 64 },
        health: { type: 'http', path: '/', port: 'http', intervalMs: 1000, graceMs: 5000 },
      }, {
        name: 'db', image: 'img:2', instances: 1, health: { type: 'tcp', port: 'db', graceMs: 0 }, update: {},
      }],
    });
  });
});
