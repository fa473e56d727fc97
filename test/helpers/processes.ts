// Coordinators and agents as real child processes (node dist/...), with their JSON logs kept
// in a temp folder so a failing test can show what each process said.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';
import { laneDefaultPortRange, laneNodePrefix } from './lane';
import { freePort } from './ports';

export class Proc {
  proc?: ChildProcess;
  private exited?: Promise<void>;
  constructor(readonly name: string, readonly script: string, readonly args: string[], readonly logFile: string, readonly env: NodeJS.ProcessEnv = {}) {}

  start(): this {
    const fd = fs.openSync(this.logFile, 'a');
    // NODE_FLAGS in a process's env: node options NODE_OPTIONS refuses (e.g. --cpu-prof).
    const flags = (this.env.NODE_FLAGS ?? '').split(' ').filter(Boolean);
    this.proc = spawn(process.execPath, [...flags, path.join(repoRoot(), 'dist', this.script), ...this.args], {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, TESSERA_LOG_LEVEL: process.env.TESSERA_TEST_LOG_LEVEL ?? 'debug', ...this.env },
    });
    fs.closeSync(fd);
    const p = this.proc;
    this.exited = new Promise((r) => p.once('exit', () => r()));
    return this;
  }

  get running(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  get pid(): number {
    return this.proc?.pid ?? 0;
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.proc!.kill(signal);
    const t = setTimeout(() => this.proc?.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }

  /** SIGSTOP / SIGCONT: a frozen process keeps its sockets open but says nothing. */
  pause(): void { this.proc?.kill('SIGSTOP'); }
  resume(): void { this.proc?.kill('SIGCONT'); }

  tail(lines = 40): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}

export interface CoordinatorOptions {
  etcd: string[];
  id?: string;
  ttl?: number;
  heartbeatTimeoutMs?: number;
  failoverGraceMs?: number;
  reportIntervalMs?: number;
  extra?: string[];
  /** Reuse a port (a restarted coordinator at the address agents know). */
  port?: number;
  /** Certificates dir (scripts/make-certs.sh); without it the process runs --insecure-dev. */
  certs?: string;
  env?: NodeJS.ProcessEnv;
}

export interface AgentOptions {
  coordinators: string[];
  nodeId?: string;
  /** The process's name, for its state dir and log file (default: the node id). */
  name?: string;
  reportIntervalMs?: number;
  extra?: string[];
  env?: NodeJS.ProcessEnv;
  /** Certificates: [ca, cert, key] file paths; without them the agent runs --insecure-dev. */
  tls?: [string, string, string];
}

/** A folder of processes for one test, all killed at the end. */
export class Fleet {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-test-'));
  readonly procs: Proc[] = [];

  async coordinator(o: CoordinatorOptions): Promise<Proc & { address: string; id: string }> {
    const port = o.port ?? (await freePort());
    const id = o.id ?? `c${this.procs.filter((p) => p.script.includes('coordinator')).length + 1}`;
    const args = [
      '--id', id, '--listen', `127.0.0.1:${port}`, '--etcd-endpoints', o.etcd.join(','),
      '--lease-ttl-seconds', String(o.ttl ?? 2), '--lease-margin-ms', '700',
      '--heartbeat-timeout-ms', String(o.heartbeatTimeoutMs ?? 3_000),
      '--failover-grace-ms', String(o.failoverGraceMs ?? 4_000),
      '--report-interval-ms', String(o.reportIntervalMs ?? 500),
      '--status-persist-interval-ms', '500',
      '--data-dir', path.join(this.dir, id),
      ...(o.certs ? ['--tls-ca', path.join(o.certs, 'ca.pem'), '--tls-cert', path.join(o.certs, 'coordinator.pem'), '--tls-key', path.join(o.certs, 'coordinator-key.pem')] : ['--insecure-dev']),
      ...(o.extra ?? []),
    ];
    const p = Object.assign(new Proc(id, 'coordinator/main.js', args, path.join(this.dir, `${id}.log`), o.env), { address: `127.0.0.1:${port}`, id });
    this.procs.push(p.start());
    return p;
  }

  agent(o: AgentOptions): Proc & { nodeId: string; stateDir: string } {
    const nodeId = o.nodeId ?? `${laneNodePrefix()}${this.procs.filter((p) => p.script.includes('agent')).length + 1}`;
    const ports = (o.extra ?? []).includes('--port-range') ? undefined : laneDefaultPortRange();
    const name = o.name ?? nodeId;
    const stateDir = path.join(this.dir, `agent-${name}`);
    const args = ['--coordinators', o.coordinators.join(','), '--state-dir', stateDir, '--node-id', nodeId, '--task-listen', '127.0.0.1:0', '--relay-listen', '127.0.0.1:0', ...(o.reportIntervalMs ? ['--report-interval-ms', String(o.reportIntervalMs)] : []),
      ...(o.tls ? ['--tls-ca', o.tls[0], '--tls-cert', o.tls[1], '--tls-key', o.tls[2]] : ['--insecure-dev']), ...(ports ? ['--port-range', ports] : []), ...(o.extra ?? [])];
    const p = Object.assign(new Proc(name, 'agent/main.js', args, path.join(this.dir, `agent-${name}.log`), o.env), { nodeId, stateDir });
    this.procs.push(p.start());
    return p;
  }

  /** Last log lines of every process: printed when a test fails. */
  dump(): string {
    return this.procs.map((p) => `----- ${p.name} (${p.logFile})\n${p.tail(25)}`).join('\n');
  }

  async stop(keep = false): Promise<void> {
    await Promise.all(this.procs.map((p) => p.kill('SIGKILL')));
    // TESSERA_TEST_KEEP=1 keeps every fleet's logs and state dirs (under the temp dir, tessera-test-*) to read after a run.
    if (!keep && process.env.TESSERA_TEST_KEEP !== '1') fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
