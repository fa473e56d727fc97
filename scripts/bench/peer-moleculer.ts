// The jobs benchmarks' peer: the same 4-stage chain in Moleculer 0.14.36 over its TCP
// transporter, static peers on 127.0.0.1, UDP discovery off, one service per process (forked
// moleculer-node.js), the client (this process) calling the four stages in turn.
import { fork, ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { ServiceBroker } from 'moleculer';
import { freePort } from '../../test/helpers/ports';

export async function moleculer(): Promise<{ call: (p: unknown) => Promise<unknown>; stop: () => Promise<void>; pids: number[] }> {
  const ports = await Promise.all([0, 1, 2, 3, 4].map(() => freePort()));
  const ids = ['client', 's1', 's2', 's3', 's4'];
  const peers = ids.map((id, i) => `${id}=${ports[i]}`).join(',');
  const children: ChildProcess[] = [];
  for (let i = 1; i <= 4; i++) {
    const child = fork(path.join(__dirname, 'moleculer-node.js'), [ids[i], String(ports[i]), `s${i}`, peers], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    children.push(child);
    await new Promise<void>((r) => child.once('message', () => r()));
  }
  const urls = peers.split(',').map((p) => { const [id, pt] = p.split('='); return `127.0.0.1:${pt}/${id}`; });
  const broker = new ServiceBroker({ nodeID: 'client', logger: false, transporter: { type: 'TCP', options: { udpDiscovery: false, port: ports[0], urls } } });
  await broker.start();
  await broker.waitForServices(['s1', 's2', 's3', 's4'], 20_000);
  return {
    pids: children.map((c) => c.pid!),
    call: async (p) => {
      let x = p;
      for (let i = 1; i <= 4; i++) x = await broker.call(`s${i}.echo`, x);
      return x;
    },
    stop: async () => {
      await broker.stop();
      for (const c of children) c.kill('SIGTERM');
    },
  };
}
