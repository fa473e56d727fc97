// SIGHUP (systemctl reload) on a daemon: the settings compiled again from its --config file, the
// log level applied at once, what cannot change while running named in the log, a broken file
// refused with the running settings kept, and the process still up (node's default for SIGHUP
// would end it without a clean stop). A real agent process, and a coordinator's relay ticket key
// and its rotation interval; the coordinator's tokens file reload is in auth.test.ts.
import { expect } from 'chai';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';
import { waitFor } from '../helpers/ports';

describe('SIGHUP reloads settings', function () {
  this.timeout(60_000);
  let dir: string;
  let agent: ChildProcess | undefined;
  let out = '';

  const settings = (level: string, rack: string, cpuMillis = 2000, gcHigh = 85) => [
    'coordinators: [127.0.0.1:1]', // nothing there: the agent keeps trying, which is all this needs
    `stateDir: ${path.join(dir, 'state')}`, 'insecureDev: true', 'taskListen: 127.0.0.1:0', 'relayListen: 127.0.0.1:0',
    `logLevel: ${level}`, `labels: { rack: ${rack} }`, `cpuMillis: ${cpuMillis}`, `imageGcHighPercent: ${gcHigh}`, '',
  ].join('\n');
  const lines = () => out.split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return { raw: l }; } });

  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-reload-')); });
  after(() => {
    agent?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('applies the log level, names what needs a restart, keeps running settings over a broken file, and stays up', async () => {
    const file = path.join(dir, 'agent.yaml');
    fs.writeFileSync(file, settings('warn', 'r1'));
    const env = { ...process.env };
    delete env.TESSERA_LOG_LEVEL; // the file's level, not the environment's
    agent = spawn(process.execPath, [path.join(repoRoot(), 'dist/agent/main.js'), '--config', file], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    agent.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    agent.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the agent started (its --insecure-dev warning)', async () => /insecure-dev/.test(out), 20_000, 100);
    expect(lines().filter((l) => l.level === 'info' || l.level === 'debug'), 'nothing under warn yet').to.deep.equal([]);

    fs.writeFileSync(file, settings('debug', 'r2', 3000, 90));
    agent.kill('SIGHUP');
    const reloaded = await waitFor('the reload logged', async () => lines().find((l) => String(l.msg).startsWith('SIGHUP: settings reloaded')), 10_000, 100);
    expect(reloaded.applied).to.deep.equal(['logLevel', 'labels', 'diskPressurePercent', 'imageGcHighPercent', 'imageGcLowPercent', 'imageGcMinAgeMs', 'imageGcIntervalMs']);
    expect(reloaded.needRestart).to.deep.equal(['cpuMillis']);
    await waitFor('debug lines from then on', async () => lines().some((l) => l.level === 'debug'), 15_000, 100);

    fs.writeFileSync(file, 'logLevel: [not a level\n');
    agent.kill('SIGHUP');
    const refused = await waitFor('the refusal logged', async () => lines().find((l) => l.msg === 'SIGHUP: the settings do not compile; the running ones stay'), 10_000, 100);
    expect(refused.level).to.equal('error');
    expect(agent.exitCode).to.equal(null);
    expect(agent.signalCode).to.equal(null);

    const exit = new Promise<number | null>((r) => agent!.once('exit', (code) => r(code)));
    agent.kill('SIGTERM');
    expect(await exit, 'a clean stop still').to.equal(0);
    agent = undefined;
  });

  it('on a coordinator, replaces the relay ticket key and applies a new rotation interval (not a restart)', async () => {
    const file = path.join(dir, 'coordinator.yaml');
    const conf = (rotationMs: number) => [
      'etcdEndpoints: [127.0.0.1:1]', // nothing there: it keeps trying, which is all this needs
      'listen: 127.0.0.1:0', 'advertise: 127.0.0.1:7999', `dataDir: ${path.join(dir, 'coord')}`, 'insecureDev: true', 'logLevel: info', `relayKeyRotationMs: ${rotationMs}`, '',
    ].join('\n');
    fs.writeFileSync(file, conf(3_600_000));
    const env = { ...process.env };
    delete env.TESSERA_LOG_LEVEL;
    out = '';
    const coord = spawn(process.execPath, [path.join(repoRoot(), 'dist/coordinator/main.js'), '--config', file], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    coord.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    coord.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor('the coordinator started', async () => lines().some((l) => l.msg === 'coordinator listening'), 20_000, 100);
      fs.writeFileSync(file, conf(600_000));
      coord.kill('SIGHUP');
      const reloaded = await waitFor('the reload logged', async () => lines().find((l) => String(l.msg).startsWith('SIGHUP: settings reloaded')), 10_000, 100);
      expect(reloaded.applied).to.include.members(['relayKeyRotationMs', 'relayKey']);
      expect(reloaded.needRestart).to.deep.equal([]);
      const rotating = lines().find((l) => String(l.msg).startsWith('relay ticket key rotating'));
      expect(rotating, 'the key replaced').to.deep.include({ why: 'SIGHUP' });
      expect(coord.exitCode).to.equal(null);
    } finally {
      coord.kill('SIGKILL');
    }
  });
});
