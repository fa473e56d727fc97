import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { authFor, readAuthFile, registryOf } from '../../agent/images';
import { compileAgentConfig } from '../../agent/config';
import { ConfigError } from '../../common/errors';

describe('image registries and credentials (agent/images.ts)', () => {
  it('reads the registry from an image reference as Docker does', () => {
    expect(registryOf('busybox')).to.equal('docker.io');
    expect(registryOf('library/busybox:1.36')).to.equal('docker.io');
    expect(registryOf('tessera/busybox:local')).to.equal('docker.io');
    expect(registryOf('127.0.0.1:5000/tessera/x:1')).to.equal('127.0.0.1:5000');
    expect(registryOf('registry.example.com/team/app@sha256:' + 'a'.repeat(64))).to.equal('registry.example.com');
    expect(registryOf('localhost/x')).to.equal('localhost');
  });
  it('finds the credentials docker login wrote for that registry, by auth or username and password', () => {
    const config = { auths: {
      'registry.example:5000': { auth: Buffer.from('ops:pa:ss').toString('base64') },
      'https://index.docker.io/v1/': { username: 'hub', password: 'h' },
      'https://ghcr.io': { auth: Buffer.from('g:x').toString('base64') },
    } };
    expect(authFor('registry.example:5000/team/app:1', config)).to.deep.equal({ username: 'ops', password: 'pa:ss', serveraddress: 'registry.example:5000' });
    expect(authFor('busybox', config)).to.deep.equal({ username: 'hub', password: 'h', serveraddress: 'https://index.docker.io/v1/' });
    expect(authFor('ghcr.io/org/x:1', config)).to.include({ username: 'g', password: 'x' });
    expect(authFor('other.example/x:1', config)).to.equal(undefined);
    expect(authFor('x', {})).to.equal(undefined);
  });
  it('says why a registry auth file cannot be used, and the agent refuses to start with it', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-auth-'));
    try {
      const bad = path.join(dir, 'bad.json');
      fs.writeFileSync(bad, 'auths: no');
      expect(() => readAuthFile(bad)).to.throw(/is not a Docker config \(JSON with "auths"\)/);
      expect(() => readAuthFile(path.join(dir, 'missing.json'))).to.throw(/registry auth file .*missing\.json: ENOENT/);
      try {
        compileAgentConfig([{ source: 'flag', values: { insecureDev: true, registryAuth: bad } }]);
        expect.fail('compiled');
      } catch (err) {
        expect(err).to.be.instanceOf(ConfigError);
        expect((err as Error).message).to.match(/registryAuth: registry auth file .*bad\.json is not a Docker config/);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
