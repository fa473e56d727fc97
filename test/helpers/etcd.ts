// Real etcd processes for tests: one member or three, on free loopback ports, temp data dirs,
// stopped by PID.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createEtcdClient, withTimeout } from '../../common/etcd';
import { freePort, waitFor } from './ports';

export interface EtcdMemberProc {
  name: string;
  clientPort: number;
  peerPort: number;
  dataDir: string;
  proc?: ChildProcess;
}

export class EtcdCluster {
  private constructor(readonly members: EtcdMemberProc[], private readonly initialCluster: string, readonly root: string, readonly certs?: string, private readonly extraArgs: string[] = []) {}

  /**
   * size members; with certs (scripts/make-certs.sh output) clients must use TLS with a
   * CA-signed certificate. A member that exits while starting (a port taken between freePort()
   * and etcd's bind, by another test's process or container) is tried again on fresh ports.
   * extraArgs go to every member (e.g. --quota-backend-bytes).
   */
  static async start(size = 1, certs?: string, extraArgs: string[] = []): Promise<EtcdCluster> {
    let lastErr: Error | undefined;
    for (let attempt = 1; attempt <= 3; attempt++) {
      const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-etcd-'));
      const members: EtcdMemberProc[] = [];
      for (let i = 0; i < size; i++) {
        members.push({ name: `m${i}`, clientPort: await freePort(), peerPort: await freePort(), dataDir: path.join(root, `m${i}`) });
      }
      const initialCluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`).join(',');
      const c = new EtcdCluster(members, initialCluster, root, certs, extraArgs);
      for (let i = 0; i < size; i++) c.spawn(i);
      const exited = () => members.find((m) => m.proc && (m.proc.exitCode !== null || m.proc.signalCode !== null));
      try {
        await waitFor('etcd to answer', async () => (exited() ? true : c.healthy()), 30_000, 200);
        const dead = exited();
        if (!dead) return c;
        lastErr = new Error(`etcd member ${dead.name} exited while starting (attempt ${attempt}): ${c.logTail(dead)}`);
      } catch (err) {
        lastErr = new Error(`${(err as Error).message}: ${members.map((m) => c.logTail(m)).join(' | ')}`);
      }
      await c.stop();
    }
    throw lastErr;
  }

  /** The last lines of a member's log (kept in the cluster's temp folder). */
  private logTail(m: EtcdMemberProc, lines = 3): string {
    try {
      return fs.readFileSync(path.join(this.root, `${m.name}.log`), 'utf8').trim().split('\n').slice(-lines).join(' / ');
    } catch {
      return '(no log)';
    }
  }

  get endpoints(): string[] {
    return this.members.map((m) => `${this.certs ? 'https://' : ''}127.0.0.1:${m.clientPort}`);
  }

  private get scheme(): string {
    return this.certs ? 'https' : 'http';
  }

  spawn(i: number): void {
    const m = this.members[i];
    const log = fs.openSync(path.join(this.root, `${m.name}.log`), 'a');
    m.proc = spawn('etcd', [
      '--name', m.name, '--data-dir', m.dataDir,
      '--listen-client-urls', `${this.scheme}://127.0.0.1:${m.clientPort}`, '--advertise-client-urls', `${this.scheme}://127.0.0.1:${m.clientPort}`,
      ...(this.certs ? ['--cert-file', path.join(this.certs, 'etcd.pem'), '--key-file', path.join(this.certs, 'etcd-key.pem'), '--trusted-ca-file', path.join(this.certs, 'ca.pem'), '--client-cert-auth'] : []),
      '--listen-peer-urls', `http://127.0.0.1:${m.peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peerPort}`,
      '--initial-cluster', this.initialCluster, '--initial-cluster-state', 'new',
      '--heartbeat-interval', '100', '--election-timeout', '1000', '--logger', 'zap', ...this.extraArgs,
    ], { stdio: ['ignore', log, log] });
  }

  async healthy(): Promise<boolean> {
    const tls = this.certs ? { ca: fs.readFileSync(path.join(this.certs, 'ca.pem')), cert: fs.readFileSync(path.join(this.certs, 'coordinator.pem')), key: fs.readFileSync(path.join(this.certs, 'coordinator-key.pem')) } : undefined;
    const c = createEtcdClient({ endpoints: this.endpoints, callTimeoutMs: 1_000, tls });
    try {
      await withTimeout(c.get('health').exec(), 1_500, 'etcd get');
      return true;
    } catch {
      return false;
    } finally {
      c.close();
    }
  }

  /** Stops one member by PID (SIGKILL) and waits for it to exit. */
  async kill(i: number): Promise<void> {
    const p = this.members[i].proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }

  async restart(i: number): Promise<void> {
    await this.kill(i);
    this.spawn(i);
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((_, i) => this.kill(i)));
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}
