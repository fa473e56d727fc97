// The example echo component (examples/pipeline/components/echo.ts) as a plain child process on a
// free loopback port: an external instance for job tests that need no container.
import { fork, ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { repoRoot } from '../../common/version';
import { freePort, waitFor } from './ports';

/** Starts echo.js registering as `kind` (env: e.g. DELAY_MS) and waits until it listens. */
export async function startEcho(kind: string, env: Record<string, string> = {}): Promise<{ port: number; proc: ChildProcess }> {
  const port = await freePort();
  const proc = fork(path.join(repoRoot(), 'dist/examples/pipeline/components/echo.js'), [], { env: { ...process.env, PORT_GRPC: String(port), KIND: kind, ...env }, stdio: 'ignore' });
  await waitFor(`${kind} listening`, () => new Promise<boolean>((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); }).on('error', () => resolve(false));
  }), 10_000, 100);
  return { port, proc };
}
