// A CA file holding several certificates (a CA change: the old CA and the new in one bundle):
// every certificate in it is checked, not only the first.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadTls, reportExpiry } from '../../common/tls';
import { ConfigError } from '../../common/errors';

describe('CA bundles', () => {
  let dir: string;
  /** A self-signed certificate valid for `days` from now (negative: expired that many days ago). */
  const cert = (name: string, days: number): Buffer => {
    const key = path.join(dir, `${name}-key.pem`);
    const csr = path.join(dir, `${name}.csr`);
    const out = path.join(dir, `${name}.pem`);
    execFileSync('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-subj', `/O=tessera/CN=${name}`, '-out', csr], { stdio: 'ignore' });
    execFileSync('openssl', ['x509', '-req', '-in', csr, '-signkey', key, '-days', String(days), '-out', out], { stdio: 'ignore' });
    return fs.readFileSync(out);
  };
  let old: Buffer;
  let soon: Buffer;
  let fresh: Buffer;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bundle-'));
    old = cert('old-ca', -1);
    soon = cert('soon-ca', 10);
    fresh = cert('new-ca', 3650);
    fs.writeFileSync(path.join(dir, 'leaf.pem'), fresh);
    fs.writeFileSync(path.join(dir, 'leaf-key.pem'), fs.readFileSync(path.join(dir, 'new-ca-key.pem')));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const load = (...certs: Buffer[]) => {
    fs.writeFileSync(path.join(dir, 'bundle.pem'), Buffer.concat(certs));
    return loadTls({ tlsCa: path.join(dir, 'bundle.pem'), tlsCert: path.join(dir, 'leaf.pem'), tlsKey: path.join(dir, 'leaf-key.pem') });
  };
  const days = (ms: number) => Math.round((ms - Date.now()) / 86_400_000);

  it('takes the first to expire among the valid certificates as the bundle\'s end of validity, wherever it is in the file', () => {
    expect(days(load(fresh, soon).caNotAfterMs)).to.equal(10);
    expect(days(load(soon, fresh).caNotAfterMs)).to.equal(10);
  });

  it('starts with an expired certificate in a bundle that has a valid one, and warns naming it', () => {
    const m = load(old, fresh);
    expect(days(m.caNotAfterMs)).to.equal(3650);
    expect(m.caExpired.map((c) => c.subject)).to.deep.equal(['O=tessera,CN=old-ca']);
    const warnings: { o: Record<string, unknown>; msg: string }[] = [];
    reportExpiry({ ca: m.caNotAfterMs }, { warn: (o, msg) => warnings.push({ o, msg }) }, { set: () => {}, onCollect: () => {} }, Date.now(), { ca: m.caExpired });
    expect(warnings).to.have.length(1);
    expect(warnings[0].o).to.include({ certificate: 'ca', subject: 'O=tessera,CN=old-ca' });
    expect(warnings[0].msg).to.match(/remove it from the bundle/);
  });

  it('refuses a bundle none of whose certificates is valid, naming each', () => {
    try {
      load(old, old);
      expect.fail('loaded');
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      const v = (e as ConfigError).violations;
      expect(v.map((x) => x.field)).to.deep.equal(['tlsCa']);
      expect(v[0].message).to.match(/no certificate in the CA bundle .* is valid now \(O=tessera,CN=old-ca: .*; O=tessera,CN=old-ca: /);
    }
  });

  it('refuses a single expired CA as before', () => {
    expect(() => load(old)).to.throw(ConfigError, /expired on/);
  });
});
