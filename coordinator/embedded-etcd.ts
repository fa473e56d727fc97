// The embedded default: with no etcd endpoints configured, the coordinator runs a single-member
// etcd under its data dir, so a one-host trial needs no set-up. Production runs a real cluster.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sleep } from '../common/backoff';
import { createEtcdClient, withTimeout } from '../common/etcd';
import type { Logger } from '../common/logger';

export interface EmbeddedEtcd {
  endpoint: string;
  stop(): Promise<void>;
}

async function healthy(endpoint: string): Promise<boolean> {
  const c = createEtcdClient({ endpoints: [endpoint], callTimeoutMs: 500 });
  try {
    await withTimeout(c.maintenance.status(), 700, 'etcd status');
    return true;
  } catch {
    return false;
  } finally {
    c.close();
  }
}

export async function startEmbeddedEtcd(opts: { dataDir: string; binary: string; clientPort: number; peerPort: number; log: Logger }): Promise<EmbeddedEtcd> {
  const endpoint = `127.0.0.1:${opts.clientPort}`;
  const dir = path.resolve(opts.dataDir, 'etcd');
  fs.mkdirSync(dir, { recursive: true });
  if (await healthy(endpoint)) {
    // Left behind by a coordinator that was killed: its data dir is ours, so adopt it.
    opts.log.warn({ endpoint }, 'an etcd already answers on the embedded port; using it');
    return { endpoint, stop: async () => {} };
  }
  const logFile = fs.openSync(path.join(opts.dataDir, 'etcd.log'), 'a');
  const peer = `http://127.0.0.1:${opts.peerPort}`;
  const child: ChildProcess = spawn(opts.binary, [
    '--name', 'embedded',
    '--data-dir', dir,
    '--listen-client-urls', `http://${endpoint}`,
    '--advertise-client-urls', `http://${endpoint}`,
    '--listen-peer-urls', peer,
    '--initial-advertise-peer-urls', peer,
    '--initial-cluster', `embedded=${peer}`,
    '--logger', 'zap',
  ], { stdio: ['ignore', logFile, logFile] });
  let exited = false;
  child.on('exit', (code) => {
    exited = true;
    opts.log.warn({ code }, 'embedded etcd exited');
  });
  child.on('error', (err) => opts.log.error({ err: err.message, binary: opts.binary }, 'cannot start embedded etcd'));
  const until = Date.now() + 20_000;
  while (!(await healthy(endpoint))) {
    if (exited || Date.now() > until) {
      child.kill('SIGKILL');
      throw new Error(`embedded etcd did not start (see ${path.join(opts.dataDir, 'etcd.log')}); is '${opts.binary}' installed?`);
    }
    await sleep(100);
  }
  opts.log.info({ endpoint, dataDir: dir, pid: child.pid }, 'embedded etcd started');
  return {
    endpoint,
    stop: async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const t = Date.now() + 5_000;
      while (!exited && Date.now() < t) await sleep(50);
      if (!exited) child.kill('SIGKILL');
    },
  };
}
