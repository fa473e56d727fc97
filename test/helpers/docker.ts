// The Docker CLI as a test's independent witness of what really runs.
import { execFileSync } from 'node:child_process';

export interface Ctr { id: string; name: string; state: string; instance: string; node: string; version: string }

export function containers(labelFilter: string): Ctr[] {
  const out = execFileSync('docker', ['ps', '-a', '--no-trunc', '--filter', `label=${labelFilter}`, '--format',
    '{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Label "tessera.instance"}}\t{{.Label "tessera.node"}}\t{{.Label "tessera.version"}}']).toString().trim();
  if (!out) return [];
  return out.split('\n').map((l) => {
    const [id, name, state, instance, node, version] = l.split('\t');
    return { id, name, state, instance, node, version };
  });
}

export function removeContainers(labelFilter: string): void {
  const ids = containers(labelFilter).map((c) => c.id);
  if (ids.length) execFileSync('docker', ['rm', '-f', ...ids], { stdio: 'ignore' });
}

export function dockerKill(id: string): void {
  execFileSync('docker', ['kill', id], { stdio: 'ignore' });
}

/** The host PID of a running container's first process (what `docker kill` signals). */
export function containerPid(id: string): number {
  const pid = Number(execFileSync('docker', ['inspect', '-f', '{{.State.Pid}}', id]).toString().trim());
  if (!(pid > 0)) throw new Error(`container ${id} has no running process`);
  return pid;
}

export async function httpGet(port: number): Promise<string | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1_000) });
    return res.ok ? await res.text() : undefined;
  } catch {
    return undefined;
  }
}

/** docker rmi -f, if the image is there. */
export function removeImage(ref: string): void {
  try {
    execFileSync('docker', ['rmi', '-f', ref], { stdio: 'ignore' });
  } catch {
    /* not there */
  }
}
