// Apply-to-running latency against plain `docker run` of the same image in the same run.
// Tessera: ApplyApp -> placed -> RUN sent -> agent creates and starts the container -> the
// leader sees it RUNNING (ListInstances). Peer: the docker CLI, one `docker run -d` per
// instance, one after another and all at once.
//   node dist/scripts/bench/apply.js [--runs1 10] [--runs50 3]
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as os from 'node:os';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../../test/helpers/etcd';
import { Fleet } from '../../test/helpers/processes';
import { waitForLeader } from '../../test/helpers/cluster';
import { waitFor } from '../../test/helpers/ports';
import { containers, removeContainers } from '../../test/helpers/docker';
import { table } from '../../common/table';
import { fmt, median, p99, progress } from './stats';

const exec = promisify(execFile);
const args = process.argv.slice(2);
const arg = (n: string, d: number) => (args.includes(`--${n}`) ? Number(args[args.indexOf(`--${n}`) + 1]) : d);
const IMAGE = 'tessera/busybox:local';

async function dockerRun(n: number, parallel: boolean, tag: string): Promise<number> {
  const one = (i: number) => exec('docker', ['run', '-d', '--network', 'host', '--init', '--memory', '16m', '--cpu-shares', '10', '--label', `bench=${tag}`, '--name', `bench-${tag}-${i}`, IMAGE, 'sleep', '3600']);
  const t0 = performance.now();
  if (parallel) await Promise.all(Array.from({ length: n }, (_, i) => one(i)));
  else for (let i = 0; i < n; i++) await one(i);
  const ms = performance.now() - t0;
  removeContainers(`bench=${tag}`);
  return ms;
}

async function main(): Promise<void> {
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  const nodeId = `bench-${Date.now().toString(36)}`;
  try {
    const c = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--reconcile-interval-ms', '200'] });
    await waitForLeader([c.address]);
    fleet.agent({ coordinators: [c.address], nodeId, extra: ['--port-range', '28000-28999'] });
    const admin = new AdminClient([c.address]);
    await waitFor('node ready', async () => (await admin.listNodes()).nodes.length === 1, 20_000);

    const tessera = async (n: number, tag: string): Promise<number> => {
      const name = `b${tag}`;
      const t0 = performance.now();
      await admin.applyApp({ name, components: [{ name: 'x', image: IMAGE, command: ['sleep', '3600'], resources: { cpuMillis: 10, memoryMib: 16 }, instances: n, stopGraceMs: 100 }] });
      await waitFor('all running', async () => (await admin.listInstances(name)).instances.filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length === n, 120_000, 5);
      const ms = performance.now() - t0;
      await admin.deleteApp(name);
      await waitFor('deleted', async () => containers(`tessera.app=${name}`).length === 0 && !(await admin.listApps()).apps.some((a) => a.name === name), 120_000, 100);
      return ms;
    };

    await tessera(1, 'warm');
    await dockerRun(1, false, 'warm');
    const rows: (string | number)[][] = [];
    for (const [n, runs] of [[1, arg('runs1', 10)], [50, arg('runs50', 3)]] as const) {
      const t: number[] = [];
      const seq: number[] = [];
      const par: number[] = [];
      for (let i = 0; i < runs; i++) {
        t.push(await tessera(n, `${n}x${i}`));
        seq.push(await dockerRun(n, false, `s${n}x${i}`));
        if (n > 1) par.push(await dockerRun(n, true, `p${n}x${i}`));
        progress(`${n} instance(s), run ${i + 1}/${runs}: tessera ${fmt(t[i])} ms, docker run one by one ${fmt(seq[i])} ms${n > 1 ? `, all at once ${fmt(par[i])} ms` : ''}`);
      }
      rows.push([`${n} instance(s): Tessera apply -> all RUNNING`, fmt(median(t)), fmt(p99(t)), fmt(median(t) / n), '']);
      rows.push([`${n} instance(s): docker run, one by one`, fmt(median(seq)), fmt(p99(seq)), fmt(median(seq) / n), `${(median(t) / median(seq)).toFixed(2)}x`]);
      if (n > 1) rows.push([`${n} instance(s): docker run, all at once`, fmt(median(par)), fmt(p99(par)), fmt(median(par) / n), `${(median(t) / median(par)).toFixed(2)}x`]);
      rows.push([`${n} instance(s): Tessera overhead per instance vs one by one`, fmt((median(t) - median(seq)) / n), '', '', 'goal < 100']);
    }
    admin.close();
    process.stdout.write(`apply-to-running latency: 1 agent, ${os.cpus().length} x ${os.cpus()[0].model}, Node ${process.version}, Docker Engine 20.10 (overlay2)\n\n`);
    process.stdout.write(table(['scenario', 'median ms', 'p99 ms', 'ms per instance', 'Tessera / peer'], rows) + '\n');
  } finally {
    await fleet.stop();
    await etcd.stop();
    removeContainers(`tessera.node=${nodeId}`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
