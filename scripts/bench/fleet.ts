// Fleet size: what the leader does with thousands of nodes. Real etcd, two real coordinator
// processes with the production defaults (reports every 5 s, heartbeat timeout 10 s, failover
// grace 15 s), and N simulated nodes in this process (test/helpers/sim-nodes.ts: the agent's real
// connection code, each node on its own gRPC stream; no containers). For each N:
//   attach    -> every node attached to the leader, from the first hello
//   cpu       -> the leader's CPU (share of one core) with N nodes reporting, at rest
//   etcd      -> what etcd writes at rest, over 60 s (one --status-refresh-interval-ms: node
//                records are written on change and refreshed once in it): puts and WAL bytes a
//                second, from its /metrics
//   list      -> ListNodes through the follower (which asks the leader; the records if it does not answer),
//                every node in one answer, then in pages of 500 as `tessera nodes` asks
//   failover  -> SIGKILL of the leader until every node is attached to the new one, per run;
//                and how many nodes went DOWN meanwhile (any is a defect: their instances would
//                be replaced). The bound is the failover grace: nodes not back by then go DOWN.
// Then apps: A apps of 4 instances each applied over 500 simulated nodes (which report them
// RUNNING and healthy once told to run them):
//   running   -> from the first apply until ListApps says every app is running (polled each second,
//                as a dashboard or `watch tessera apps` would)
//   cpu       -> the leader's CPU at rest with them all
// No peer runs here: Nomad's nodesim needs a Nomad server and kwok a kube-apiserver, neither
// installable on this machine; the table gives the failover time against the grace instead.
//   node dist/scripts/bench/fleet.js [--nodes 1000,3000] [--runs 3] [--apps 500]
import * as os from 'node:os';
import { AdminClient } from '../../common/admin-client';
import { table } from '../../common/table';
import { waitForLeader } from '../../test/helpers/cluster';
import { EtcdCluster } from '../../test/helpers/etcd';
import { Fleet } from '../../test/helpers/processes';
import { SimulatedNodes } from '../../test/helpers/sim-nodes';
import { fmt, median, processCpuUs, progress } from './stats';

const args = process.argv.slice(2);
const arg = (name: string, def: string) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : def);
const SIZES = arg('nodes', '1000,3000').split(',').map(Number).filter((n) => n > 0);
const RUNS = Number(arg('runs', '3'));
const APPS = Number(arg('apps', '500'));
const GRACE_MS = 15_000;
const ETCD_WINDOW_S = 60;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const cpuSeconds = (pid: number) => processCpuUs(pid) / 1e6;

/** etcd's puts and WAL bytes so far (its /metrics, on the client port). */
async function etcdWrites(endpoint: string): Promise<{ puts: number; walBytes: number }> {
  const text = await (await fetch(`http://${endpoint.replace(/^https?:\/\//, '')}/metrics`)).text();
  const metric = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  return { puts: metric('etcd_mvcc_put_total'), walBytes: metric('etcd_disk_wal_write_bytes_total') };
}

async function until(what: string, fn: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  while (!(await fn())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
  return Date.now() - t0;
}

async function size(n: number): Promise<string[]> {
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  let sims: SimulatedNodes | undefined;
  const opts = { etcd: etcd.endpoints, reportIntervalMs: 5_000, heartbeatTimeoutMs: 10_000, failoverGraceMs: GRACE_MS, extra: ['--status-persist-interval-ms', '5000'] };
  try {
    let coords = [await fleet.coordinator(opts)];
    await waitForLeader([coords[0].address]);
    coords.push(await fleet.coordinator(opts));
    await waitForLeader(coords.map((c) => c.address));
    const addrs = coords.map((c) => c.address);
    progress(`${n} nodes: attaching`);
    const t0 = Date.now();
    sims = new SimulatedNodes(addrs, n, 'sim-', 5_000);
    const s = sims;
    await until(`${n} nodes attached`, async () => s.connected === n, 120_000);
    const attachMs = Date.now() - t0;
    await sleep(5_000);
    const leader = coords[0];
    const c0 = cpuSeconds(leader.proc!.pid!);
    const w0 = await etcdWrites(etcd.endpoints[0]);
    await sleep(10_000);
    const cpu = ((cpuSeconds(leader.proc!.pid!) - c0) / 10) * 100;
    progress(`${n} nodes: etcd's writes at rest over ${ETCD_WINDOW_S} s`);
    await sleep((ETCD_WINDOW_S - 10) * 1_000);
    const w1 = await etcdWrites(etcd.endpoints[0]);
    const follower = new AdminClient([coords[1].address], { timeoutMs: 30_000 });
    const l0 = Date.now();
    const listed = (await follower.listNodes()).nodes.length;
    const listMs = Date.now() - l0;
    // The same list as `tessera nodes` asks it: pages of 500 (ListNodes' limit and page_token).
    const p0 = Date.now();
    let paged = 0;
    for (let pageToken = ''; ;) {
      const page = await follower.listNodes({ limit: 500, pageToken });
      paged += page.nodes.length;
      if (!(pageToken = page.nextPageToken)) break;
    }
    const pagedMs = Date.now() - p0;
    follower.close();
    if (listed !== n || paged !== n) throw new Error(`ListNodes gave ${listed} nodes, and ${paged} in pages of 500, not ${n}`);

    const failovers: number[] = [];
    let down = 0;
    for (let r = 0; r < RUNS; r++) {
      progress(`${n} nodes: failover ${r + 1}/${RUNS}`);
      const [old, next] = coords;
      const admin = new AdminClient([next.address], { timeoutMs: 30_000 });
      const k0 = Date.now();
      await old.kill('SIGKILL');
      await until('every node attached to the new leader', async () => {
        const nodes = (await admin.listNodes().catch(() => ({ nodes: [] }))).nodes;
        down = Math.max(down, nodes.filter((x) => x.state === 'NODE_STATE_DOWN').length);
        return nodes.length === n && nodes.every((x) => x.connectedTo === next.id);
      }, 120_000);
      failovers.push(Date.now() - k0);
      admin.close();
      // A coordinator again beside it (at the address the nodes know), for the next run.
      const again = await fleet.coordinator({ ...opts, id: old.id, port: Number(old.address.split(':')[1]) });
      coords = [next, again];
      await sleep(3_000);
    }
    return [String(n), fmt(attachMs / 1000, 1), fmt(cpu, 1), fmt((w1.puts - w0.puts) / ETCD_WINDOW_S, 0), fmt((w1.walBytes - w0.walBytes) / ETCD_WINDOW_S / 1024, 0), String(listMs), String(pagedMs), fmt(median(failovers) / 1000, 1), fmt(Math.max(...failovers) / 1000, 1), String(down), fmt(Math.max(...failovers) / GRACE_MS, 2)];
  } finally {
    await sims?.stop();
    await fleet.stop();
    await etcd.stop();
  }
}

async function apps(a: number, n = 500, per = 4): Promise<string[]> {
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  let sims: SimulatedNodes | undefined;
  try {
    const c = await fleet.coordinator({ etcd: etcd.endpoints, reportIntervalMs: 5_000, heartbeatTimeoutMs: 10_000, failoverGraceMs: GRACE_MS, extra: ['--status-persist-interval-ms', '5000'] });
    await waitForLeader([c.address]);
    const admin = new AdminClient([c.address], { timeoutMs: 30_000 });
    sims = new SimulatedNodes([c.address], n, 'sim-', 5_000);
    const s = sims;
    await until(`${n} nodes attached`, async () => s.connected === n, 120_000);
    progress(`${a} apps over ${n} nodes`);
    const t0 = Date.now();
    for (let i = 0; i < a; i++) await admin.applyApp({ name: `app${i}`, components: [{ name: 'w', image: 'tessera/busybox:local', command: ['sleep', '3600'], resources: { cpuMillis: 10, memoryMib: 8 }, instances: per }] });
    const appliedMs = Date.now() - t0;
    await until('every app running', async () => {
      await sleep(1_000);
      return (await admin.listApps()).apps.filter((x) => x.status === 'running').length === a;
    }, 300_000);
    const runningMs = Date.now() - t0;
    const c0 = cpuSeconds(c.proc!.pid!);
    await sleep(10_000);
    const cpu = ((cpuSeconds(c.proc!.pid!) - c0) / 10) * 100;
    admin.close();
    return [String(a), String(a * per), String(n), fmt(appliedMs / 1000, 1), fmt(runningMs / 1000, 1), fmt(cpu, 1)];
  } finally {
    await sims?.stop();
    await fleet.stop();
    await etcd.stop();
  }
}

async function main(): Promise<void> {
  process.env.TESSERA_TEST_LOG_LEVEL = 'info';
  const rows: string[][] = [];
  for (const n of SIZES) rows.push(await size(n));
  const appRows = APPS > 0 ? [await apps(APPS)] : [];
  console.log(`fleet: ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; reports every 5 s, heartbeat 10 s, failover grace ${GRACE_MS / 1000} s; ${RUNS} failovers per size`);
  if (rows.length) console.log(table(['NODES', 'ATTACH S', 'LEADER CPU %', 'ETCD PUTS/S', 'ETCD WAL KB/S', 'LIST MS', 'LIST BY 500 MS', 'FAILOVER S (MEDIAN)', 'FAILOVER S (MAX)', 'DOWN DURING', 'MAX VS GRACE'], rows));
  if (appRows.length) console.log(table(['APPS', 'INSTANCES', 'NODES', 'APPLIED S', 'ALL RUNNING S', 'LEADER CPU % AT REST'], appRows));
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
