#!/usr/bin/env node
// tessera: the operator's CLI. Talks to any coordinator's Admin API; prints tables, or JSON
// with --json for scripts.
import { Command } from 'commander';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { ago, enumName, table } from '../../common/table';
import { VERSION } from '../../common/version';
import type { Node__Output } from '../../common/generated/tessera/v1/Node';
import type { Event__Output } from '../../common/generated/tessera/v1/Event';

const program = new Command('tessera')
  .version(VERSION)
  .description('Administer a Tessera cluster')
  .option('-c, --coordinator <addresses>', 'coordinator address(es), comma-separated [env TESSERA_COORDINATOR]', process.env.TESSERA_COORDINATOR ?? '127.0.0.1:7400')
  .option('--json', 'print JSON instead of tables')
  .option('--timeout <ms>', 'per-call timeout in ms', '10000');

function client(): AdminClient {
  const o = program.opts();
  const md: Record<string, string> = {};
  if (process.env.TESSERA_TOKEN) md.authorization = `Bearer ${process.env.TESSERA_TOKEN}`;
  return new AdminClient(String(o.coordinator).split(',').map((s) => s.trim()).filter(Boolean), { timeoutMs: Number(o.timeout), metadata: md });
}

function out(obj: unknown, render: () => string): void {
  process.stdout.write((program.opts().json ? JSON.stringify(obj, null, 2) : render()) + '\n');
}

async function run(fn: (c: AdminClient) => Promise<void>): Promise<void> {
  const c = client();
  try {
    await fn(c);
  } catch (err) {
    const se = err as grpc.ServiceError;
    const code = se.code !== undefined ? grpc.status[se.code] : 'ERROR';
    process.stderr.write(`error: ${code}: ${se.details ?? se.message}\n`);
    const leader = se.metadata?.get('tessera-leader-address')?.[0];
    if (leader) process.stderr.write(`hint: the leader is at ${leader}\n`);
    process.exitCode = 1;
  } finally {
    c.close();
  }
}

function nodeRows(nodes: Node__Output[]): string {
  return table(
    ['ID', 'HOSTNAME', 'STATE', 'CPU%', 'MEM', 'LOAD1', 'INSTANCES', 'LAST SEEN', 'ATTACHED TO', 'LABELS'],
    nodes.map((n) => [
      n.id, n.hostname, enumName(n.state, 'NODE_STATE_'),
      n.usage ? n.usage.cpuPercent.toFixed(1) : '-',
      n.usage ? `${n.usage.memoryUsedMib}/${n.usage.memoryTotalMib} MiB` : '-',
      n.usage ? n.usage.load1.toFixed(2) : '-',
      n.instanceCount, ago(n.lastSeenMs), n.connectedTo || '-',
      Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(',') || '-',
    ]),
  );
}

program.command('status').description('leader, coordinators, etcd members and node counts').action(() => run(async (c) => {
  const s = await c.getClusterStatus();
  out(s, () => [
    `leader:      ${s.leader?.id ? `${s.leader.id} at ${s.leader.address} (term ${s.leaderTerm})` : 'NONE (no leader elected)'}`,
    `answered by: ${s.answeredBy}`,
    `nodes:       ${Object.entries(s.nodesByState).map(([k, v]) => `${v} ${k}`).join(', ') || 'none'}`,
    '',
    table(['COORDINATOR', 'ADDRESS', 'ROLE', 'VERSION', 'UP'], s.coordinators.map((x) => [x.id, x.address, x.leader ? 'leader' : 'follower', x.version, ago(x.startedAtMs)])),
    '',
    table(['ETCD MEMBER', 'ENDPOINT', 'HEALTHY', 'LEADER', 'VERSION', 'DB SIZE', 'ERROR'], s.etcd.map((m) => [m.name || '-', m.endpoint, m.healthy ? 'yes' : 'NO', m.leader ? 'yes' : '', m.version || '-', m.dbSizeBytes ? `${(m.dbSizeBytes / 1024 / 1024).toFixed(1)} MiB` : '-', m.error || ''])),
  ].join('\n'));
}));

program.command('nodes').description('list nodes').option('--state <state>', 'READY, DOWN or DRAINING').action((o) => run(async (c) => {
  const res = await c.listNodes({ state: (o.state ? `NODE_STATE_${String(o.state).toUpperCase()}` : 'NODE_STATE_UNSPECIFIED') as never });
  out(res.nodes, () => (res.nodes.length ? nodeRows(res.nodes) : 'no nodes'));
}));

const node = program.command('node').description('one node');
node.command('get <id>').description('show a node').action((id) => run(async (c) => {
  const n = await c.getNode(id);
  out(n, () => [nodeRows([n]), '', `state reason: ${n.stateReason} (since ${ago(n.stateChangedAtMs)} ago)`, `capacity:     ${n.capacity?.cpuMillis}m CPU, ${n.capacity?.memoryMib} MiB, ${n.capacity?.diskMib} MiB disk`, `agent:        ${n.agentVersion}`].join('\n'));
}));
node.command('drain <id>').description('stop placing work on a node and move its instances off').option('--reason <text>', 'why', '').action((id, o) => run(async (c) => {
  const n = await c.drainNode({ nodeId: id, reason: o.reason });
  out(n, () => `node ${n.id} is ${enumName(n.state, 'NODE_STATE_')}`);
}));
node.command('undrain <id>').description('make a drained node eligible again').action((id) => run(async (c) => {
  const n = await c.drainNode({ nodeId: id, undo: true });
  out(n, () => `node ${n.id} is ${enumName(n.state, 'NODE_STATE_')}`);
}));

program.command('events').description('cluster events (placements, node states, leadership)')
  .option('-f, --follow', 'keep streaming new events')
  .option('-n, --history <count>', 'how many past events to show', '20')
  .option('--kind <prefix...>', 'only events whose kind starts with this, e.g. node.')
  .action((o) => run(async (c) => {
    const stream = c.watchEvents({ history: Number(o.history), follow: !!o.follow, kinds: o.kind ?? [] });
    const json = program.opts().json;
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (e: Event__Output) => {
        process.stdout.write(json ? JSON.stringify(e) + '\n' : `${new Date(Number(e.atMs)).toISOString()}  ${e.kind.padEnd(18)} ${e.subject.padEnd(20)} ${e.message}\n`);
      });
      stream.on('end', resolve);
      stream.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? resolve() : reject(err)));
      process.once('SIGINT', () => { stream.cancel(); resolve(); });
    });
  }));

program.parseAsync(process.argv);
