import * as net from 'node:net';
import { lanePortPool } from './lane';

const handedOut = new Set<number>();

/**
 * A loopback port nothing listens on, for a process the test starts. Taken from this process's
 * lane below the kernel's ephemeral range (test/helpers/lane.ts), not from that range: a port
 * picked there could be taken as the source port of any outgoing connection (another lane's, a
 * Docker CLI's) before the process it was meant for bound it, and that process failed to start.
 */
export async function freePort(): Promise<number> {
  const [from, to] = lanePortPool();
  for (let tries = 0; tries < 200; tries++) {
    const port = from + Math.floor(Math.random() * (to - from + 1));
    if (handedOut.has(port)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.unref();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (!free) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port in ${from}-${to} after 200 tries`);
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15_000, everyMs = 100): Promise<T> {
  const until = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as T;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > until) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
