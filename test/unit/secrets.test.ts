// Secrets at rest (coordinator/secrets.ts): the key file's rules, sealing and opening with
// AES-256-GCM, key rotation, and values that were altered or moved.
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ConfigError } from '../../common/errors';
import { isSealed, loadKeyring, newKeyLine } from '../../coordinator/secrets';

describe('secrets at rest', () => {
  let dir: string;
  const file = (name: string, text: string, mode = 0o600) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text, { mode });
    fs.chmodSync(f, mode);
    return f;
  };
  const refusal = (f: string) => {
    try {
      loadKeyring(f);
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      const v = (e as ConfigError).violations;
      expect(v.map((x) => x.field)).to.deep.equal(['secretsKeyFile']);
      return v[0].message;
    }
    return expect.fail('expected the key file to be refused');
  };

  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-secrets-')); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('seals with the first key, opens with any, and binds a value to where it belongs', () => {
    const k1 = newKeyLine('k1');
    const old = loadKeyring(file('one', `${k1}\n`));
    const sealed = old.seal('s3cret', '/t/registry-credentials/ops');
    expect(isSealed(sealed)).to.equal(true);
    expect(sealed.k).to.equal('k1');
    expect(JSON.stringify(sealed)).to.not.include('s3cret');
    // A fresh nonce each time: the same password twice does not look the same.
    expect(old.seal('s3cret', '/t/registry-credentials/ops').data).to.not.equal(sealed.data);
    expect(old.open(sealed, '/t/registry-credentials/ops')).to.equal('s3cret');

    // Rotation: the new key first seals; the old one still opens what it sealed.
    const both = loadKeyring(file('two', `# rotated 2026-11-27\n${newKeyLine('k2')}\n\n${k1}\n`));
    expect([both.primary, both.names]).to.deep.equal(['k2', ['k2', 'k1']]);
    expect(both.open(sealed, '/t/registry-credentials/ops')).to.equal('s3cret');
    expect(both.seal('x', 'a').k).to.equal('k2');
    // Fingerprints tell keys apart (the same key in two files matches) and give nothing away.
    const [f2, f1] = both.fingerprints();
    expect(f1).to.equal(old.fingerprints()[0]).and.match(/^k1:[0-9a-f]{8}$/);
    expect(f2).to.match(/^k2:[0-9a-f]{8}$/).and.not.equal(`k2:${f1.slice(3)}`);
    expect(k1).to.not.include(f1.slice(3));

    // Moved to another credential's key, altered, or sealed with a key this file lacks: refused, saying why.
    expect(() => old.open(sealed, '/t/registry-credentials/other')).to.throw(/does not open with key "k1": the stored value was altered, or belongs elsewhere/);
    const flipped = Buffer.from(sealed.data, 'base64');
    flipped[0] ^= 1;
    expect(() => old.open({ ...sealed, data: flipped.toString('base64') }, '/t/registry-credentials/ops')).to.throw(/altered/);
    expect(() => old.open(both.seal('x', 'a'), 'a')).to.throw(/sealed with key "k2", which this coordinator's --secrets-key-file does not hold \(it has k1\)/);
    expect(isSealed({ k: 'k1', iv: 'x' })).to.equal(false);
  });

  it('refuses a key file it cannot trust, saying which line', () => {
    const good = newKeyLine('k1');
    expect(refusal(path.join(dir, 'missing'))).to.match(/cannot read .*missing: ENOENT/);
    expect(refusal(file('open', `${good}\n`, 0o644))).to.match(/may be read or changed by others than its owner and group \(mode 644\): chmod 600 it/);
    expect(refusal(file('groupwrite', `${good}\n`, 0o660))).to.match(/\(mode 660\)/);
    expect(loadKeyring(file('group', `${good}\n`, 0o640)).primary, 'root:tessera 0640, as the TLS keys').to.equal('k1');
    expect(refusal(file('empty', '# nothing yet\n'))).to.match(/holds no key/);
    expect(refusal(file('noname', `${good.slice(good.indexOf(':') + 1)}\n`))).to.match(/line 1: expected name:base64-key/);
    expect(refusal(file('short', `k1:${Buffer.alloc(16).toString('base64')}\n`))).to.match(/line 1: key "k1" must be 32 bytes in base64 \(44 characters\), got 16 bytes/);
    expect(refusal(file('notb64', 'k1:this is not base64 at all!!\n'))).to.match(/got something that is not base64/);
    expect(refusal(file('twice', `${good}\n${newKeyLine('k1')}\n`))).to.match(/line 2: key "k1" is given twice/);
    expect(() => newKeyLine('has space')).to.throw(RangeError);
  });
});
