// Installing the agent and a coordinator as systemd services, into a temporary root: the units
// pass systemd-analyze verify, the installed tree (production dependencies only) runs with the
// written config, SIGTERM stops the agent cleanly, and uninstall removes what it should.
import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../helpers/etcd';
import { freePort, waitFor } from '../helpers/ports';

describe('install as systemd services (temp root)', function () {
  this.timeout(180_000);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-root-'));
  const sh = (...args: string[]) => execFileSync('bash', args, { cwd: repoRoot(), encoding: 'utf8' });
  let etcd: EtcdCluster | undefined;

  after(async () => {
    await etcd?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('installs both roles and the units pass systemd-analyze verify', () => {
    sh('scripts/install-agent.sh', '--root', root, '--coordinators', '127.0.0.1:7401,127.0.0.1:7402');
    sh('scripts/install-coordinator.sh', '--root', root, '--etcd', '127.0.0.1:2379', '--listen', '127.0.0.1:7401');
    for (const role of ['agent', 'coordinator']) {
      const unit = path.join(root, 'etc/systemd/system', `tessera-${role}.service`);
      execFileSync('systemd-analyze', ['verify', unit], { stdio: 'pipe' }); // throws on any problem
      const text = fs.readFileSync(unit, 'utf8');
      const node = execFileSync('bash', ['-c', 'command -v node'], { encoding: 'utf8' }).trim();
      expect(text).to.contain(`ExecStart=${node} /opt/tessera/dist/${role}/main.js`);
      expect(text).to.match(/^Restart=on-failure$/m);
      expect(text).to.match(/^User=tessera$/m);
      expect(text).to.match(/^ProtectSystem=strict$/m);
      expect(text).to.contain(`/opt/tessera/dist/${role}/main.js --config /etc/tessera/${role}.yaml`);
    }
    const agentUnit = fs.readFileSync(path.join(root, 'etc/systemd/system/tessera-agent.service'), 'utf8');
    expect(agentUnit).to.match(/^After=network-online.target docker.service$/m);
    expect(agentUnit).to.match(/^SupplementaryGroups=docker$/m);
    expect(fs.readFileSync(path.join(root, 'etc/tessera/agent.yaml'), 'utf8')).to.contain('coordinators: [127.0.0.1:7401, 127.0.0.1:7402]');
    // Production dependencies only.
    expect(fs.existsSync(path.join(root, 'opt/tessera/node_modules/@grpc/grpc-js'))).to.equal(true);
    expect(fs.existsSync(path.join(root, 'opt/tessera/node_modules/mocha'))).to.equal(false);
  });

  it('runs from the installed tree with its config files; the agent stops cleanly on SIGTERM', async () => {
    etcd = await EtcdCluster.start(1);
    const port = await freePort();
    const confDir = path.join(root, 'etc/tessera');
    fs.writeFileSync(path.join(confDir, 'coordinator.yaml'), `listen: 127.0.0.1:${port}\netcdEndpoints: [${etcd.endpoints[0]}]\ndataDir: ${path.join(root, 'var/lib/tessera/coordinator')}\nlogLevel: warn\ninsecureDev: true\n`);
    fs.writeFileSync(path.join(confDir, 'agent.yaml'), `coordinators: [127.0.0.1:${port}]\nstateDir: ${path.join(root, 'var/lib/tessera')}\nnodeId: installed\ntaskListen: 127.0.0.1:0\nlogLevel: warn\ninsecureDev: true\n`);
    const bin = (role: string) => path.join(root, 'opt/tessera/dist', role, 'main.js');
    const coord = spawn(process.execPath, [bin('coordinator'), '--config', path.join(confDir, 'coordinator.yaml')], { stdio: 'ignore' });
    const agent = spawn(process.execPath, [bin('agent'), '--config', path.join(confDir, 'agent.yaml')], { stdio: 'ignore' });
    const admin = new AdminClient([`127.0.0.1:${port}`], { timeoutMs: 3_000 });
    try {
      await waitFor('the installed agent READY', async () => (await admin.getNode('installed')).state === 'NODE_STATE_READY', 30_000, 200);
      const t0 = Date.now();
      const code = await new Promise<number | null>((resolve) => { agent.once('exit', (c) => resolve(c)); agent.kill('SIGTERM'); });
      expect(code).to.equal(0);
      expect(Date.now() - t0).to.be.lessThan(5_000);
    } finally {
      admin.close();
      agent.kill('SIGKILL');
      coord.kill('SIGKILL');
    }
  });

  it('uninstalls: unit and code go, config and state stay; --purge removes them too', () => {
    sh('scripts/install-agent.sh', '--root', root, '--uninstall');
    expect(fs.existsSync(path.join(root, 'etc/systemd/system/tessera-agent.service'))).to.equal(false);
    expect(fs.existsSync(path.join(root, 'opt/tessera')), 'code stays while the coordinator unit remains').to.equal(true);
    expect(fs.existsSync(path.join(root, 'etc/tessera/agent.yaml'))).to.equal(true);
    sh('scripts/install-coordinator.sh', '--root', root, '--uninstall', '--purge');
    expect(fs.existsSync(path.join(root, 'opt/tessera'))).to.equal(false);
    expect(fs.existsSync(path.join(root, 'etc/tessera/coordinator.yaml'))).to.equal(false);
    expect(fs.existsSync(path.join(root, 'var/lib/tessera'))).to.equal(false);
  });
});
