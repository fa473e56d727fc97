// Failover benchmark: 3 coordinators, 3 agents, one etcd, all real processes on loopback.
// For each run: kill the leader (SIGKILL, or SIGTERM for a graceful stop) and time
//   elected   -> a survivor reports a new leader
//   writes    -> the new leader accepts a fenced write (DrainNode undo on a node)
//   attached  -> every agent's stream is attached to the new leader
// Then the agent's footprint at a 1 s report interval: RSS and CPU share of one core.
//   node dist/scripts/bench/failover.js [--runs 10] [--ttl 2]
import * as fs from 'node:fs';
import * as os from 'node:os';
import { AdminClient } from '../../common/admin-client';
import { EtcdCluster } from '../../test/helpers/etcd';
import { Fleet } from '../../test/helpers/processes';
import { statusOf, waitForLeader } from '../../test/helpers/cluster';
import { waitFor } from '../../test/helpers/ports';
import { fmt, median, p99, processCpuUs, progress } from './stats';
import { table } from '../../common/table';

const args = process.argv.slice(2);
const arg = (name: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const RUNS = arg('runs', 10);
const TTL = arg('ttl', 2);
const AGENTS = 3;

async function main(): Promise<void> {
  process.env.TESSERA_TEST_LOG_LEVEL = 'info';
  const etcd = await EtcdCluster.start(1);
  const fleet = new Fleet();
  try {
    let coords: Awaited<ReturnType<Fleet["coordinator"]>>[] = [];
    for (let i = 0; i < 3; i++) coords.push(await fleet.coordinator({ etcd: etcd.endpoints, ttl: TTL, heartbeatTimeoutMs: 5_000, failoverGraceMs: 10_000, reportIntervalMs: 1_000 }));
    const addrs = () => coords.map((c) => c.address);
    await waitForLeader(addrs());
    for (let i = 0; i < AGENTS; i++) fleet.agent({ coordinators: addrs() });

    const results: Record<'SIGKILL' | 'SIGTERM', { elected: number[]; writes: number[]; attached: number[] }> = {
      SIGKILL: { elected: [], writes: [], attached: [] },
      SIGTERM: { elected: [], writes: [], attached: [] },
    };
    for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
      for (let run = 1; run <= RUNS; run++) {
        const leaderId = await waitForLeader(addrs(), 20_000);
        const leader = coords.find((c) => c.id === leaderId)!;
        await waitFor('all agents attached', async () => {
          const c = new AdminClient([leader.address]);
          try {
            const n = (await c.listNodes()).nodes;
            return n.length === AGENTS && n.every((x) => x.connectedTo === leaderId && x.state === 'NODE_STATE_READY');
          } finally { c.close(); }
        }, 30_000, 50);
        const survivors = coords.filter((c) => c !== leader);
        const t0 = performance.now();
        void leader.kill(signal);
        let newLeader = '';
        await waitFor('a new leader', async () => {
          for (const s of survivors) {
            const st = await statusOf(s.address);
            if (st?.leader?.id && st.leader.id !== leaderId) { newLeader = st.leader.id; return true; }
          }
          return false;
        }, 30_000, 10);
        const elected = performance.now() - t0;
        const nl = coords.find((c) => c.id === newLeader)!;
        const admin = new AdminClient([nl.address], { timeoutMs: 2_000 });
        await waitFor('the new leader to accept a write', async () => !!(await admin.drainNode({ nodeId: 'n1', undo: true })), 30_000, 10);
        const writes = performance.now() - t0;
        await waitFor('agents re-attached', async () => {
          const n = (await admin.listNodes()).nodes;
          return n.length === AGENTS && n.every((x) => x.connectedTo === newLeader);
        }, 30_000, 10);
        const attached = performance.now() - t0;
        admin.close();
        results[signal].elected.push(elected);
        results[signal].writes.push(writes);
        results[signal].attached.push(attached);
        progress(`${signal} run ${run}/${RUNS}: elected ${fmt(elected)} ms, writes ${fmt(writes)} ms, agents attached ${fmt(attached)} ms`);
        // Bring the old leader back on its port, as a follower.
        const port = Number(leader.address.split(':')[1]);
        await leader.kill('SIGKILL');
        const back = await fleet.coordinator({ etcd: etcd.endpoints, id: leader.id, port, ttl: TTL, heartbeatTimeoutMs: 5_000, failoverGraceMs: 10_000, reportIntervalMs: 1_000 });
        coords = coords.map((c) => (c === leader ? back : c));
        await waitFor('the old leader to rejoin', async () => (await statusOf(back.address))?.leader?.id === newLeader, 20_000);
      }
    }

    // Agent footprint at a 1 s report interval.
    progress('measuring the agent footprint for 30 s at a 1 s report interval');
    const agent = fleet.procs.find((p) => p.script.includes('agent'))!;
    const cpuSeconds = () => processCpuUs(agent.pid) / 1e6;
    const rssMb = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${agent.pid}/status`, 'utf8'))![1]) / 1024;
    await new Promise((r) => setTimeout(r, 5_000));
    const c0 = cpuSeconds();
    const w0 = performance.now();
    const rss: number[] = [];
    for (let i = 0; i < 30; i++) { await new Promise((r) => setTimeout(r, 1_000)); rss.push(rssMb()); }
    const cpuPct = (cpuSeconds() - c0) / ((performance.now() - w0) / 1000) * 100;

    const rows: (string | number)[][] = [];
    for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
      const r = results[signal];
      rows.push([`${signal === 'SIGKILL' ? 'kill -9' : 'graceful stop'}: new leader elected`, fmt(median(r.elected)), fmt(p99(r.elected)), signal === 'SIGKILL' ? `<= ${TTL * 1000 + 500}` : '< 300']);
      rows.push([`${signal === 'SIGKILL' ? 'kill -9' : 'graceful stop'}: new leader accepts writes`, fmt(median(r.writes)), fmt(p99(r.writes)), '']);
      rows.push([`${signal === 'SIGKILL' ? 'kill -9' : 'graceful stop'}: all ${AGENTS} agents re-attached`, fmt(median(r.attached)), fmt(p99(r.attached)), '']);
    }
    const out = [
      `failover: ${RUNS} runs per signal, lease TTL ${TTL} s, 3 coordinators, ${AGENTS} agents, 1 etcd member; ${os.cpus().length} x ${os.cpus()[0].model}, Node ${process.version}`,
      '',
      table(['measure (ms from the signal)', 'median', 'p99', 'goal'], rows),
      '',
      table(['agent at 1 s reports', 'value', 'goal'], [
        ['resident memory (MB), median of 30 samples', fmt(median(rss), 1), '< 60'],
        ['CPU, % of one core over 30 s', fmt(cpuPct, 2), '< 1'],
      ]),
    ].join('\n');
    process.stdout.write(out + '\n');
    fs.mkdirSync('.bench', { recursive: true });
    fs.writeFileSync('.bench/failover.txt', out + '\n');
  } finally {
    await fleet.stop();
    await etcd.stop();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
