#!/usr/bin/env node
// tessera: the operator's CLI. Talks to any coordinator's Admin API; prints tables, or JSON
// with --json for scripts.
import { Command, InvalidArgumentError } from 'commander';
import * as grpc from '@grpc/grpc-js';
import * as fs from 'node:fs';
import { AdminClient } from '../../common/admin-client';
import { ago, clip, enumName, table } from '../../common/table';
import { newKeyLine } from '../secrets';
import { VERSION } from '../../common/version';
import { readSpecFile } from '../../common/spec-file';
import { setFieldsOnly } from '../../common/proto';
import { historyPlanLines, planLines } from './plan-lines';
import { loadTls } from '../../common/tls';
import YAML from 'yaml';
import type { Node__Output } from '../../common/generated/tessera/v1/Node';
import type { Event__Output } from '../../common/generated/tessera/v1/Event';

/** An option that takes a whole number (at least min): a typo is refused instead of read as 0. */
const wholeNumber = (flag: string, min: number, unit = '') => (v: string) => {
  if (!/^\d+$/.test(v.trim()) || Number(v) < min) throw new InvalidArgumentError(`${flag} takes a whole number${unit ? ` of ${unit}` : ''}, ${min} or more`);
  return Number(v);
};
/** --chunk-size of the lists that come in pages (as kubectl's): 0 (all in one answer) to 10,000. */
const chunkSize = (v: string) => {
  const n = wholeNumber('--chunk-size', 0)(v);
  if (n > 10_000) throw new InvalidArgumentError('--chunk-size takes at most 10000');
  return n;
};
const chunkHelp = (what: string) => `ask for the ${what} this many at a time, up to 10000 (as kubectl --chunk-size; 0: all in one answer)`;
/** An option naming one of an enum's values (case-insensitive, without its prefix): an unknown one is refused. */
const oneOf = (flag: string, values: string[]) => (v: string) => {
  const u = v.trim().toUpperCase();
  if (!values.includes(u)) throw new InvalidArgumentError(`${flag} is one of ${values.join(', ')}`);
  return u;
};

const program = new Command('tessera')
  .version(VERSION)
  .description('Administer a Tessera cluster')
  .option('-c, --coordinator <addresses>', 'coordinator address(es), comma-separated [env TESSERA_COORDINATOR]', process.env.TESSERA_COORDINATOR ?? '127.0.0.1:7400')
  .option('--json', 'print JSON instead of tables')
  .option('--timeout <ms>', 'per-call timeout in ms', wholeNumber('--timeout', 1, 'ms'), 10000)
  .option('--token <token>', 'Admin API token, sent as "authorization: Bearer" [env TESSERA_TOKEN]')
  .option('--ca <file>', 'cluster CA for TLS [env TESSERA_CA]')
  .option('--cert <file>', 'admin certificate for TLS [env TESSERA_CERT]')
  .option('--key <file>', 'admin key for TLS [env TESSERA_KEY]');

function client(): AdminClient {
  const o = program.opts();
  const md: Record<string, string> = {};
  const token = o.token ?? process.env.TESSERA_TOKEN;
  if (token) md.authorization = `Bearer ${token}`;
  const ca = o.ca ?? process.env.TESSERA_CA;
  const tls = ca ? loadTls({ tlsCa: ca, tlsCert: o.cert ?? process.env.TESSERA_CERT, tlsKey: o.key ?? process.env.TESSERA_KEY }, '--') : undefined;
  return new AdminClient(String(o.coordinator).split(',').map((s) => s.trim()).filter(Boolean), { timeoutMs: Number(o.timeout), metadata: md, tls });
}

function out(obj: unknown, render: () => string): void {
  process.stdout.write((program.opts().json ? JSON.stringify(obj, null, 2) : render()) + '\n');
}

async function run(fn: (c: AdminClient) => Promise<void>): Promise<void> {
  const c = client();
  try {
    await fn(c);
  } catch (err) {
    const se = err as grpc.ServiceError & { violations?: { field: string; message: string }[] };
    const code = typeof se.code === 'number' ? grpc.status[se.code] : 'ERROR';
    const md = typeof se.metadata?.get === 'function' ? se.metadata : undefined;
    const violations = se.violations ?? (md?.get('tessera-field-violations')?.[0] ? JSON.parse(String(md.get('tessera-field-violations')[0])) : undefined);
    if (violations?.length) {
      process.stderr.write(`error: ${code}: the request has ${violations.length} problem(s):\n`);
      for (const v of violations) process.stderr.write(`  ${v.field}: ${v.message}\n`);
    } else {
      process.stderr.write(`error: ${code}: ${se.details ?? se.message}\n`);
    }
    const leader = md?.get('tessera-leader-address')?.[0];
    if (leader) process.stderr.write(`hint: the leader is at ${leader}\n`);
    process.exitCode = 1;
  } finally {
    c.close();
  }
}

/**
 * A bash completion script from the command tree: each command path's subcommands and options
 * (global ones everywhere), and the options that take a value (their value is not a command).
 */
function bashCompletion(root: Command): string {
  const tree: [string, string[]][] = [];
  const valued = new Set<string>();
  const globals = root.options.flatMap((o) => [o.short, o.long].filter(Boolean) as string[]).filter((g) => g !== '--version' && g !== '-V');
  const walk = (c: Command, path: string) => {
    for (const o of c.options) if (o.required || o.optional) for (const f of [o.short, o.long]) if (f) valued.add(f);
    const subs = c.commands.map((x) => x.name()).filter((x) => x !== 'help');
    tree.push([path, [...subs, ...c.options.flatMap((o) => [o.long].filter(Boolean) as string[]), ...(path ? globals.filter((g) => g.startsWith('--')) : [])]]);
    for (const x of c.commands) if (x.name() !== 'help') walk(x, `${path} ${x.name()}`.trim());
  };
  walk(root, '');
  const q = (w: string) => `'${w.replace(/'/g, "'\\''")}'`;
  return [
    '# bash completion for tessera (tessera completion bash)',
    'declare -gA _tessera_tree=(',
    ...tree.map(([path, words]) => `  [${q(path || '.')}]=${q(words.join(' '))}`),
    ')',
    `_tessera_valued=' ${[...valued].join(' ')} '`,
    '_tessera() {',
    '  local cur=${COMP_WORDS[COMP_CWORD]} path="" w i',
    '  for ((i = 1; i < COMP_CWORD; i++)); do',
    '    w=${COMP_WORDS[i]}',
    '    if [[ $w == -* ]]; then [[ $_tessera_valued == *" $w "* ]] && ((i++)); continue; fi',
    '    [[ -n ${_tessera_tree["${path:+$path }$w"]+x} ]] && path="${path:+$path }$w"',
    '  done',
    '  COMPREPLY=($(compgen -W "${_tessera_tree[${path:-.}]}" -- "$cur"))',
    '}',
    'complete -F _tessera tessera',
    '',
  ].join('\n');
}

/** One event as `tessera events` prints it. */
function eventLine(e: Event__Output): string {
  return `${new Date(Number(e.atMs)).toISOString()}  ${e.kind.padEnd(26)} ${e.subject.padEnd(20)} ${e.message}${e.fields?.by ? ` (by ${e.fields.by})` : ''}`;
}

/**
 * The last n events about an app, node or instance, oldest first, as lines (for get, as kubectl
 * describe ends with its events); a failed read is a line saying so, not a failed get.
 */
async function recentEvents(c: AdminClient, involving: string, n = 10): Promise<{ events: Event__Output[]; lines: string[] }> {
  try {
    const events = await new Promise<Event__Output[]>((resolve, reject) => {
      const out: Event__Output[] = [];
      const s = c.watchEvents({ history: n, involving });
      s.on('data', (e: Event__Output) => out.push(e));
      s.on('end', () => resolve(out));
      s.on('error', reject);
    });
    return { events, lines: [`events (the last ${events.length}; tessera events --for ${involving}):`, ...(events.length ? events.map(eventLine) : ['  none'])] };
  } catch (err) {
    return { events: [], lines: [`events: not read (${(err as grpc.ServiceError).details ?? (err as Error).message})`] };
  }
}

/** An instance the cluster cannot place now, with the count of nodes per reason. */
function unplacedLine(u: { component: string; slot: number; reasonCounts: Record<string, number> }): string {
  return `  cannot place ${u.component}[${u.slot}]: ${Object.entries(u.reasonCounts).map(([k, v]) => `${v} node(s) ${k}`).join(', ') || 'no nodes'}`;
}

/** Stopped and not failed (replaced, scaled down, drained): what took its place runs, as a Deployment's old pods are gone. Listed only when asked (ps -a). */
function stoppedForGood(i: { desired: string; state: string }): boolean {
  return i.desired === 'stop' && i.state === 'INSTANCE_STATE_STOPPED';
}

/** A duration for an option: whole seconds, or with a unit (500ms, 90s, 10m, 2h); in ms. */
const durationOption = (flag: string) => (v: string) => {
  const m = /^(\d+)(ms|s|m|h)?$/.exec(v.trim());
  if (!m || Number(m[1]) <= 0) throw new InvalidArgumentError(`${flag} takes a duration above 0: 90s, 10m, 2h (or whole seconds)`);
  return Number(m[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
};

const waitOption = (v: string) => {
  if (!/^[1-9]\d*$/.test(v)) throw new InvalidArgumentError('--wait takes whole seconds, 1 or more');
  return Number(v);
};

/**
 * Follows a rollout until its version runs healthy on every instance (as kubectl rollout status
 * and nomad job run do): progress on stderr, the outcome on stdout. Exit code 0 when it runs (or its canaries wait, healthy, for promotion),
 * 2 when the version failed or was replaced (an auto-revert), 1 when the time ran out.
 */
async function waitRollout(c: AdminClient, name: string, version: number, seconds: number): Promise<void> {
  const t0 = Date.now();
  let shown = '';
  for (;;) {
    const a = await c.getApp(name);
    const took = `${((Date.now() - t0) / 1000).toFixed(1)} s`;
    if (Number(a.version) !== version || a.status === 'failed') {
      // Why, from the version's own record (an auto-revert has made a newer version already).
      const v = (await c.appHistory(name)).versions.find((x) => Number(x.version) === version);
      const what = v?.status === 'failed' ? 'failed' : 'was replaced';
      const now = Number(a.version) !== version ? `; now version ${a.version}: ${a.statusReason}` : '';
      process.stderr.write(`error: version ${version} of ${name} ${what} after ${took}: ${v?.reason || a.statusReason}${now}\n`);
      process.exitCode = 2;
      return;
    }
    const run = (await c.allInstances(name)).filter((i) => i.desired === 'run');
    // Up to date: on the version's spec, whichever version made it (a scale keeps the running
    // instances, made under the version before); the outdated ones are what the rollout replaces.
    const old = run.filter((i) => i.outdated);
    const healthy = run.filter((i) => !i.outdated && i.state === 'INSTANCE_STATE_RUNNING' && i.health === 'healthy').length;
    // Stable, and as many instances running as the counts ask for (a scale that only drops a
    // deleted policy's count makes no version: the stable one's instances are stopped or added).
    const wanted = (a.spec?.components ?? []).reduce((n, comp) => n + (a.policyInstances?.[comp.name] ?? comp.instances), 0);
    const settled = run.length === wanted && run.every((i) => i.state === 'INSTANCE_STATE_RUNNING');
    if (Number(a.stableVersion) === version && a.status === 'running' && settled) {
      out(a, () => `app ${name} version ${version} is running on every instance (${run.filter((i) => i.health === 'healthy').length} healthy) after ${took}`);
      return;
    }
    // Canaries all healthy and waiting (update.canary): as far as the rollout goes on its own, as nomad job run's monitor ends there.
    const cn = a.canary;
    if (cn && Number(cn.version) === version && Number(cn.healthyAtMs) > 0 && !Number(cn.promotedAtMs)) {
      out(a, () => `app ${name} version ${version}: ${cn.wanted} canar${cn.wanted === 1 ? 'y' : 'ies'} healthy after ${took}, ${old.length} old instance(s) still serving; promote with: tessera app promote ${name} (or roll back: tessera rollback ${name})`);
      return;
    }
    const line = Number(a.stableVersion) === version
      ? `waiting: ${name}: ${run.filter((i) => i.state === 'INSTANCE_STATE_RUNNING').length} instance(s) running, ${wanted} wanted`
      : `waiting: version ${version} of ${name}: ${healthy} of ${wanted} updated instance(s) running and healthy, ${old.length} old left`;
    if (line !== shown) process.stderr.write(`${line}\n`);
    shown = line;
    if (Date.now() - t0 > seconds * 1000) {
      process.stderr.write(`error: version ${version} of ${name} still rolling out after ${seconds} s (${a.status}: ${a.statusReason})\n`);
      process.exitCode = 1;
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Follows a drain until no instance runs on the node, a line each time what is left changes. */
async function waitDrain(c: AdminClient, id: string, seconds: number): Promise<void> {
  const t0 = Date.now();
  let shown = '';
  for (;;) {
    // Those still wanted, and those being stopped whose containers still run; on a DOWN node
    // nothing reports any more: its instances are replaced elsewhere, and none is left to wait for.
    const down = (await c.getNode(id)).state === 'NODE_STATE_DOWN';
    const left = (await c.allInstances('', id)).filter((i) => i.desired === 'run' || (!down && (i.state === 'INSTANCE_STATE_RUNNING' || i.state === 'INSTANCE_STATE_STOPPING')));
    const took = `${((Date.now() - t0) / 1000).toFixed(1)} s`;
    if (!left.length) {
      out({ node: id, drained: true }, () => `node ${id} is drained: no instance runs on it (after ${took})`);
      return;
    }
    const line = `waiting: node ${id}: ${left.length} instance(s) left (${left.map((i) => i.id).slice(0, 5).join(', ')}${left.length > 5 ? ', ...' : ''})`;
    if (line !== shown) process.stderr.write(`${line}\n`);
    shown = line;
    if (Date.now() - t0 > seconds * 1000) {
      process.stderr.write(`error: node ${id} still runs ${left.length} instance(s) after ${seconds} s: each waits for a replacement elsewhere (tessera ps --node ${id}; events say why one cannot be placed), or use --deadline\n`);
      process.exitCode = 1;
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** A node's clock against the leader's, as `tessera node get` shows it. */
function clockText(offsetMs: number): string {
  if (!offsetMs) return 'agrees with the leader\'s (or not known yet)';
  const s = `${(Math.abs(offsetMs) / 1000).toFixed(Math.abs(offsetMs) < 10_000 ? 2 : 1)} s ${offsetMs > 0 ? 'ahead of' : 'behind'} the leader's`;
  return Math.abs(offsetMs) >= 5_000 ? `${s} (is NTP running there? nothing depends on it, but its logs are misdated)` : s;
}

/** A node's reservations against its capacity, as nomad node status shows its allocated resources. */
function allocatedText(n: Pick<Node__Output, 'allocated' | 'capacity'>): string {
  const part = (used: number, total: number, unit: string) => `${used}${unit} of ${total}${unit}${total > 0 ? ` (${Math.round((100 * used) / total)}%)` : ''}`;
  return `CPU ${part(Number(n.allocated?.cpuMillis ?? 0), Number(n.capacity?.cpuMillis ?? 0), 'm')}, memory ${part(Number(n.allocated?.memoryMib ?? 0), Number(n.capacity?.memoryMib ?? 0), ' MiB')}`;
}

function nodeRows(nodes: Node__Output[]): string {
  return table(
    ['ID', 'HOSTNAME', 'STATE', 'CPU%', 'MEM', 'LOAD1', 'INSTANCES', 'LAST SEEN', 'ATTACHED TO', 'LABELS'],
    nodes.map((n) => [
      // Its conditions after the state, as kubectl shows Ready,SchedulingDisabled: such a node takes nothing new.
      n.id, n.hostname, [enumName(n.state, 'NODE_STATE_'), ...(n.cordoned ? ['CORDONED'] : []), ...n.conditions.map((c) => c.type.toUpperCase())].join(','),
      n.usage ? n.usage.cpuPercent.toFixed(1) : '-',
      n.usage ? `${n.usage.memoryUsedMib}/${n.usage.memoryTotalMib} MiB` : '-',
      n.usage ? n.usage.load1.toFixed(2) : '-',
      n.instanceCount, ago(n.lastSeenMs), n.connectedTo ? `${n.connectedTo}${n.relayedBy ? ` via ${n.relayedBy}` : ''}` : '-',
      Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(',') || '-',
    ]),
  );
}

program.command('status').description('leader, coordinators, etcd members and node counts').action(() => run(async (c) => {
  const s = await c.getClusterStatus();
  out(s, () => [
    `leader:      ${s.leader?.id ? `${s.leader.id} at ${s.leader.address} (term ${s.leaderTerm})` : 'NONE (no leader elected)'}`,
    `answered by: ${s.answeredBy}${s.refusal ? ` (NOT A CANDIDATE: ${s.refusal})` : ''}`,
    `storage:     ${s.storageFormat < 0 ? 'format unknown (etcd did not answer)' : `format ${s.storageFormat || 'not recorded yet'}`}`,
    `nodes:       ${Object.entries(s.nodesByState).map(([k, v]) => `${v} ${k}`).join(', ') || 'none'}`,
    ...(s.fleetDisruption ? [`fleet:       DISRUPTED: ${s.fleetDisruption}`] : []),
    ...(s.etcdAlarms.length ? [`etcd alarms: ${s.etcdAlarms.join(', ')}${s.etcdAlarms.some((a) => a.startsWith('NOSPACE')) ? ' (out of space: every write is refused; README: "etcd out of space")' : ''}`] : []),
    '',
    ...coordinatorRows(s.coordinators),
    '',
    table(['ETCD MEMBER', 'ENDPOINT', 'HEALTHY', 'LEADER', 'VERSION', 'DB SIZE', 'ERROR'], s.etcd.map((m) => [m.name || '-', m.endpoint, m.healthy ? 'yes' : 'NO', m.leader ? 'yes' : '', m.version || '-', m.dbSizeBytes ? `${(m.dbSizeBytes / 1024 / 1024).toFixed(1)} MiB` : '-', m.error || ''])),
  ].join('\n'));
}));

/** The coordinators' table, with their secrets keys when any has some, and a warning when they differ. */
function coordinatorRows(cs: import('../../common/generated/tessera/v1/CoordinatorInfo').CoordinatorInfo__Output[]): string[] {
  const keyed = cs.some((x) => x.secretsKeys.length);
  const rows = [table(['COORDINATOR', 'ADDRESS', 'ROLE', 'VERSION', 'UP', ...(keyed ? ['SECRETS KEYS'] : [])], cs.map((x) => [
    x.id, x.address, x.leader ? 'leader' : 'follower', x.version, ago(x.startedAtMs), ...(keyed ? [x.secretsKeys.join(', ') || 'none (in the clear)'] : []),
  ]))];
  // Any of them may lead next: one that lacks the leader's sealing key could not open what it sealed.
  if (keyed && new Set(cs.map((x) => [...x.secretsKeys].sort().join(','))).size > 1) {
    rows.push('', 'warning: the coordinators hold different --secrets-key-file keys (a key rotation not finished on all of them?): a leader that lacks the key a registry password was sealed with cannot open it (README: Security)');
  }
  return rows;
}

program.command('nodes').description('list nodes').option('--state <state>', 'READY, DOWN or DRAINING', oneOf('--state', ['READY', 'DOWN', 'DRAINING']))
  .option('--chunk-size <n>', chunkHelp('nodes'), chunkSize, 500).action((o) => run(async (c) => {
  const chunk = Number(o.chunkSize);
  const state = (o.state ? `NODE_STATE_${String(o.state).toUpperCase()}` : 'NODE_STATE_UNSPECIFIED') as never;
  const res = { nodes: [] as Node__Output[], stale: '' };
  for (let pageToken = ''; ;) {
    const page = await c.listNodes({ state, limit: chunk, pageToken });
    res.nodes.push(...page.nodes);
    res.stale ||= page.stale;
    if (!(pageToken = page.nextPageToken)) break;
  }
  const off = res.nodes.filter((n) => Math.abs(Number(n.clockOffsetMs)) >= 5_000);
  const relayed = res.nodes.filter((n) => n.connectedTo && n.relayedBy);
  // Several nodes DOWN: say whether the leader holds their instances (a fleet disruption).
  const disruption = res.nodes.filter((n) => n.state === 'NODE_STATE_DOWN').length >= 3 ? (await c.getClusterStatus()).fleetDisruption : '';
  // With --json the list stays a list: the warning goes to standard error.
  if (res.stale && program.opts().json) process.stderr.write(`warning: ${res.stale}\n`);
  out(res.nodes, () => (res.nodes.length ? [nodeRows(res.nodes), ...(off.length || relayed.length || disruption || res.stale ? [''] : []), ...off.map((n) => `warning: node ${n.id}'s clock is ${clockText(Number(n.clockOffsetMs))}`), ...relayed.map((n) => `warning: node ${n.id} reaches the leader only through coordinator ${n.relayedBy} (its network to ${n.connectedTo} is cut?)`),
    ...(disruption ? [`warning: fleet disrupted: ${disruption}`] : []), ...(res.stale ? [`warning: ${res.stale}`] : [])].join('\n') : 'no nodes'));
}));

const node = program.command('node').description('one node');
node.command('get <id>').description('show a node and the instances on it (as nomad node status ID)').action((id) => run(async (c) => {
  const n = await c.getNode(id);
  const instances = await c.allInstances('', id);
  const shown = instances.filter((i) => !stoppedForGood(i));
  const { events, lines } = await recentEvents(c, id);
  if (n.stale && program.opts().json) process.stderr.write(`warning: ${n.stale}\n`);
  out({ ...n, instances, events }, () => [
    nodeRows([n]), ...(n.stale ? ['', `warning: ${n.stale}`] : []), '', `state reason: ${n.stateReason} (since ${ago(n.stateChangedAtMs)} ago)`, `capacity:     ${n.capacity?.cpuMillis}m CPU, ${n.capacity?.memoryMib} MiB, ${n.capacity?.diskMib} MiB disk`,
    ...(n.allocated ? [`allocated:    ${allocatedText(n)} (what its instances reserve; placement keeps within capacity)`] : []), `agent:        ${n.agentVersion}`,
    `clock:        ${clockText(Number(n.clockOffsetMs))}`,
    ...(n.cordoned ? [`cordoned:     ${n.cordonReason} (no new instances are placed here; tessera node uncordon ${n.id})`] : []),
    ...(Number(n.drainDeadlineAtMs) ? [`drain:        deadline ${new Date(Number(n.drainDeadlineAtMs)).toISOString()}${Number(n.drainDeadlineAtMs) <= Date.now() ? ' (passed: what was left here is stopped)' : ''}`] : []),
    `conditions:   ${n.conditions.length ? n.conditions.map((c) => `${c.type} for ${ago(Number(c.sinceMs))}: ${c.message}`).join('; ') + ' (no new instances are placed here)' : 'none'}`, '',
    shown.length ? table(['INSTANCE', 'APP', 'COMPONENT', 'VER', 'STATE', 'HEALTH', 'RESTARTS', 'CPU%', 'MEM', 'AGE'], shown.map((i) => [
      i.id, i.app, i.component, i.version, enumName(i.state, 'INSTANCE_STATE_') + (i.desired === 'stop' ? '*' : ''), i.health || '-', i.restarts,
      i.cpuPercent ? i.cpuPercent.toFixed(1) : '-', i.memoryUsedMib ? `${i.memoryUsedMib}Mi` : '-', ago(Number(i.createdAtMs)),
    ])) : 'no instances on this node',
    ...(shown.length < instances.length ? [`(${instances.length - shown.length} stopped not shown: tessera ps --node ${n.id} -a)`] : []),
    '', ...lines,
  ].join('\n'));
}));
node.command('drain <id>').description('stop placing work on a node and move its instances off (as nomad node drain)').option('--reason <text>', 'why', '')
  .option('--deadline <duration>', 'then stop the instances still on the node, moved or not (90s, 10m, 2h; as nomad node drain -deadline); without it they stay until each can move', durationOption('--deadline'))
  .option('--wait <seconds>', 'then follow until no instance runs on the node (exit 0) or the time runs out (exit 1), as nomad node drain does', waitOption)
  .action((id, o) => run(async (c) => {
    const n = await c.drainNode({ nodeId: id, reason: o.reason, deadlineMs: o.deadline ?? 0 });
    const by = Number(n.drainDeadlineAtMs) ? ` (instances still here at ${new Date(Number(n.drainDeadlineAtMs)).toISOString()} are stopped then)` : '';
    if (!o.wait) {
      out(n, () => `node ${n.id} is ${enumName(n.state, 'NODE_STATE_')}${by}`);
      return;
    }
    process.stderr.write(`node ${n.id} is ${enumName(n.state, 'NODE_STATE_')}${by}\n`);
    await waitDrain(c, id, o.wait);
  }));
node.command('cordon <id>').description('place no new instances on a node; those it runs stay (as kubectl cordon; drain moves them off)').option('--reason <text>', 'why', '').action((id, o) => run(async (c) => {
  const n = await c.cordonNode({ nodeId: id, reason: o.reason });
  out(n, () => `node ${n.id} is cordoned: ${n.cordonReason}`);
}));
node.command('uncordon <id>').description('let new instances be placed on a cordoned node again').action((id) => run(async (c) => {
  const n = await c.cordonNode({ nodeId: id, undo: true });
  out(n, () => `node ${n.id} is uncordoned`);
}));
node.command('undrain <id>').description('make a drained node eligible again').action((id) => run(async (c) => {
  const n = await c.drainNode({ nodeId: id, undo: true });
  out(n, () => `node ${n.id} is ${enumName(n.state, 'NODE_STATE_')}`);
}));

node.command('remove <id>').description('forget a DOWN node (its agent stopped for good): as nomad node purge or kubectl delete node').option('--reason <text>', 'why', '').action((id, o) => run(async (c) => {
  const n = await c.removeNode(id, o.reason);
  out(n, () => `node ${n.id} removed`);
}));

program.command('apply').description('apply an app spec (YAML or JSON); prints what changed and what cannot be placed')
  .requiredOption('-f, --file <file>', 'spec file, or - for standard input')
  .option('--dry-run', 'validate and plan only; store nothing')
  .option('--detailed-exitcode', 'with --dry-run: exit 0 when nothing would change, 2 when something would (as terraform plan -detailed-exitcode); errors exit 1')
  .option('--wait <seconds>', 'then follow the rollout until the version runs healthy everywhere or its canaries wait for promotion (exit 0), fails (exit 2) or the time runs out (exit 1)', waitOption)
  .action((o) => run(async (c) => {
    if (o.detailedExitcode && !o.dryRun) program.error('error: --detailed-exitcode goes with --dry-run');
    const spec = readSpecFile(o.file);
    const res = await c.applyApp(spec, !!o.dryRun);
    if (o.detailedExitcode && (res.changed || res.plan.some((p) => p.action !== 'PLAN_ACTION_NONE'))) process.exitCode = 2;
    if (o.wait && !o.dryRun && res.app) {
      process.stderr.write(res.changed ? `app ${res.app.name} version ${res.app.version} applied; rolling out\n` : `app ${res.app.name} unchanged (version ${res.app.version})\n`);
      for (const l of planLines(res.plan)) process.stderr.write(`${l}\n`);
      for (const u of res.unplaced) process.stderr.write(`${unplacedLine(u)}\n`);
      return waitRollout(c, res.app.name, Number(res.app.version), o.wait);
    }
    out(res, () => {
      const over = Number(res.app?.version ?? 0);
      const lines = [o.dryRun ? `dry run: app ${res.app?.name} is valid; ${res.planned} instance(s) would be placed${over && !res.changed ? `; no change against version ${over}` : over ? `; against version ${over}:` : ''}` : res.changed ? `app ${res.app?.name} version ${res.app?.version} applied; rolling out` : `app ${res.app?.name} unchanged (version ${res.app?.version})`];
      lines.push(...planLines(res.plan));
      for (const u of res.unplaced) {
        lines.push(unplacedLine(u));
        for (const [node, why] of Object.entries(u.reasons).slice(0, 5)) lines.push(`    ${node}: ${why}`);
      }
      return lines.join('\n');
    });
  }));

program.command('apps').description('list apps').option('--chunk-size <n>', chunkHelp('apps'), chunkSize, 500).action((o) => run(async (c) => {
  const res = { apps: await c.allApps(Number(o.chunkSize)) };
  out(res.apps, () => res.apps.length ? table(['NAME', 'VERSION', 'STABLE', 'STATUS', 'INSTANCES', 'UPDATED', 'REASON'], res.apps.map((a) => [
    a.name, a.version, a.stableVersion || '-', a.status, Object.entries(a.instancesByState).map(([k, v]) => `${v} ${k}`).join(', ') || '0', ago(Number(a.updatedAtMs)), a.statusReason,
  ])) : 'no apps');
}));

const app = program.command('app').description('one app');
app.command('get <name>').description('show an app and its spec')
  .option('--spec', "print only the current version's spec, as YAML that apply -f takes back unchanged (as kubectl get -o yaml, nomad job inspect)")
  .action((name, o) => run(async (c) => {
  const a = await c.getApp(name);
  if (o.spec) {
    out(a.spec, () => definitionYaml('AppSpec', a.spec ?? {}, ['name'], []));
    return;
  }
  const { events, lines } = await recentEvents(c, name);
  const cn = a.canary && Number(a.canary.version) === Number(a.version) ? a.canary : undefined;
  const canaryLine = cn ? [`canaries of version ${cn.version}: ${cn.healthy} of ${cn.wanted} healthy${Number(cn.promotedAtMs) ? `, promoted ${ago(Number(cn.promotedAtMs))} ago${cn.promotedBy ? ` by ${cn.promotedBy}` : ''}` : Number(a.stableVersion) === Number(a.version) ? '' : ', waiting for promotion'}`] : [];
  // A count set by a scaling policy, which the spec's instances do not show (as kubectl get deploy shows an HPA's replicas).
  const counts = Object.entries(a.policyInstances ?? {}).map(([comp, n]) => [comp, n, a.spec?.components.find((x) => x.name === comp)?.instances] as const)
    .filter(([, n, spec]) => n !== spec).map(([comp, n, spec]) => `${comp}: ${n} instance(s), the count a scaling policy set (the spec says ${spec ?? '-'})`);
  out({ ...a, events }, () => [`app ${a.name}: version ${a.version} (stable ${a.stableVersion || '-'}), ${a.status}: ${a.statusReason}`, ...canaryLine, ...counts, '', definitionYaml('AppSpec', a.spec ?? {}, ['name'], []), '', ...lines].join('\n'));
}));
app.command('history <name>').description('kept versions of an app').option('-p, --diff', "each version's changes against the kept version before it, as apply's plan lines (as nomad job history -p)").action((name, o) => run(async (c) => {
  const h = await c.appHistory(name);
  out(h.versions, () => {
    const lines = [table(['VERSION', 'STATUS', 'CREATED', 'BY', 'COMPONENTS', 'REASON'], h.versions.map((v) => [
      v.version, v.status, ago(Number(v.createdAtMs)), v.by || '-', clip((v.spec?.components ?? []).map((x) => `${x.name}x${x.instances} ${x.image}`).join(', '), 80), v.reason,
    ]))];
    if (!o.diff) return lines.join('\n');
    lines.push(...historyPlanLines(h.versions));
    return lines.join('\n');
  });
}));
program.command('scale <app> <component> <instances>').description("set a component's instance count: a new version, the running instances kept (as kubectl scale)")
  .option('--wait <seconds>', 'then follow the rollout (see apply --wait)', waitOption)
  .action((name: string, component: string, n: string, o) => run(async (c) => {
    if (!/^\d+$/.test(n)) program.error('error: <instances> is a whole number, 0 or more');
    const res = await c.scaleApp(name, component, Number(n));
    if (o.wait && res.app) return waitRollout(c, name, Number(res.app.version), o.wait);
    out(res, () => [
      res.changed ? `app ${name} version ${res.app?.version}: ${component} scaled to ${n}` : `app ${name} unchanged: ${component} has ${n} instance(s) already`,
      ...res.unplaced.map(unplacedLine),
    ].join('\n'));
  }));
app.command('restart <name>').description("replace an app's instances by its update strategy, spec unchanged (as kubectl rollout restart): e.g. to pull an image again with imagePullPolicy Always")
  .option('--component <name>', 'only this component')
  .option('--wait <seconds>', 'then follow the rollout (see apply --wait)', waitOption).action((name, o) => run(async (c) => {
    const a = await c.restartApp(name, o.component ?? '');
    if (o.wait) return waitRollout(c, name, Number(a.version), o.wait);
    out(a, () => `app ${a.name}: version ${a.version} replaces ${o.component ? `the instances of ${o.component}` : 'every instance'}, spec unchanged; follow it with: tessera ps ${a.name}`);
  }));
app.command('promote <name>').description("a version's canaries (update.canary) are good: replace the other instances by the update strategy (as nomad deployment promote)")
  .option('--expect-version <n>', 'refuse unless this is the version being rolled out (the one you checked)', wholeNumber('--expect-version', 1))
  .option('--wait <seconds>', 'then follow the rollout (see apply --wait)', waitOption).action((name, o) => run(async (c) => {
    const a = await c.promoteApp(name, Number(o.expectVersion ?? 0));
    if (o.wait) return waitRollout(c, name, Number(a.version), o.wait);
    out(a, () => `app ${a.name}: version ${a.version} promoted (${a.canary?.wanted ?? 0} canar${a.canary?.wanted === 1 ? 'y' : 'ies'} healthy); the other instances are replaced now; follow it with: tessera ps ${a.name}`);
  }));
app.command('delete <name>').description('stop every instance of an app and remove it').action((name) => run(async (c) => {
  const a = await c.deleteApp(name);
  out(a, () => `app ${a.name} is being deleted`);
}));

program.command('rollback <app>').description('go back to an earlier version (default: the last stable one); prints what it changes')
  .option('--to <version>', 'version to go back to', wholeNumber('--to', 1))
  .option('--dry-run', 'plan only: what the rollback would change; store nothing')
  .option('--detailed-exitcode', 'with --dry-run: exit 0 when nothing would change, 2 when something would (see apply); errors exit 1')
  .option('--wait <seconds>', 'then follow the rollout (see apply --wait)', waitOption).action((name, o) => run(async (c) => {
    if (o.detailedExitcode && !o.dryRun) program.error('error: --detailed-exitcode goes with --dry-run');
    if (o.wait && o.dryRun) program.error('error: --wait does not go with --dry-run');
    const a = o.dryRun ? await c.planRollback(name, Number(o.to ?? 0)) : await c.rollbackApp(name, Number(o.to ?? 0));
    if (o.detailedExitcode && a.plan.some((p) => p.action !== 'PLAN_ACTION_NONE')) process.exitCode = 2;
    if (o.wait) {
      process.stderr.write(`app ${a.name}: version ${a.version} rolling out (${a.statusReason})\n`);
      for (const l of planLines(a.plan)) process.stderr.write(`${l}\n`);
      return waitRollout(c, name, Number(a.version), o.wait);
    }
    out(a, () => {
      const lines = planLines(a.plan);
      return [o.dryRun ? `${a.statusReason} (app ${a.name} is at version ${a.version})${lines.length ? ':' : '; no change in what runs'}` : `app ${a.name}: version ${a.version} rolling out (${a.statusReason})`, ...lines].join('\n');
    });
  }));

program.command('ps [app]').description('list instances: node, state, health, restarts').option('--node <id>', 'only this node')
  .option('-a, --all', 'also those stopped (replaced, scaled down, drained: kept 10 minutes), as docker ps -a; failed and stopping ones are always listed')
  .option('--chunk-size <n>', chunkHelp('instances'), chunkSize, 500).action((name, o) => run(async (c) => {
  const every = await c.allInstances(name ?? '', o.node ?? '', Number(o.chunkSize));
  const res = { instances: o.all ? every : every.filter((i) => !stoppedForGood(i)) };
  const hidden = every.length - res.instances.length;
  out(res.instances, () => res.instances.length ? table(['INSTANCE', 'APP', 'COMPONENT', 'VER', 'NODE', 'STATE', 'HEALTH', 'RESTARTS', 'PORTS', 'CPU%', 'MEM', 'AGE', 'MESSAGE'], res.instances.map((i) => [
    i.id, i.app, i.component, i.version, i.nodeId, enumName(i.state, 'INSTANCE_STATE_') + (i.desired === 'stop' ? '*' : ''), i.health || '-', i.restarts,
    Object.entries(i.ports).map(([k, v]) => `${k}:${v}`).join(',') || '-', i.cpuPercent ? i.cpuPercent.toFixed(1) : '-', i.memoryUsedMib ? `${i.memoryUsedMib}Mi` : '-',
    ago(Number(i.createdAtMs)), clip(i.message || (i.replacing ? `replacing: ${i.replacing}` : i.canary ? 'canary: waiting for promotion' : i.outdated ? 'outdated: an older spec than its app\'s version' : ''), 80),
  ])) + (res.instances.some((i) => i.desired === 'stop') ? `\n* no longer wanted: being stopped, or kept ${o.all ? '10 minutes to show why it stopped' : 'a while to show why it failed'}` : '')
    + (hidden ? `\n(${hidden} stopped instance${hidden === 1 ? '' : 's'} not shown: --all)` : '') : hidden ? `no instances running (${hidden} stopped: --all)` : 'no instances');
}));

program.command('logs [instance-id]').description("an instance's container output (stdout and stderr), from the agent running it; or every running instance of an app (--app), each line prefixed with its instance")
  .option('-f, --follow', 'then what it writes next, until it stops (Ctrl-C to leave)')
  .option('--tail <n>', 'only the last n lines (of each instance)', (v) => {
    if (!/^[1-9]\d*$/.test(v)) throw new InvalidArgumentError('--tail takes a whole number of lines, 1 or more (without it: the whole log)');
    return Number(v);
  })
  .option('-t, --timestamps', "prefix each line with the engine's time")
  .option('--app <name>', 'every running instance of this app (as kubectl logs -l)')
  .option('--component <name>', 'with --app: only this component')
  .action((id: string | undefined, o) => run(async (c) => {
    if (!id === !o.app) program.error('error: give an instance id, or --app (with --component to narrow it)');
    if (o.component && !o.app) program.error('error: --component goes with --app');
    let ids = [id ?? ''];
    if (o.app) {
      ids = (await c.allInstances(o.app, '')).filter((i) => i.desired === 'run' && (!o.component || i.component === o.component)).map((i) => i.id);
      if (!ids.length) program.error(`error: app ${o.app} has no running instances${o.component ? ` of component ${o.component}` : ''}`);
    }
    // One instance: its bytes as they come. Several: whole lines, each prefixed with its instance.
    const prefix = !!o.app;
    await c.reachable(); // streams stay on one coordinator: one that answers
    await Promise.all(ids.map((instanceId) => new Promise<void>((resolve, reject) => {
      const stream = c.instanceLogs({ instanceId, tailLines: o.tail ?? 0, follow: !!o.follow, timestamps: !!o.timestamps });
      const partial: Record<string, string> = { stdout: '', stderr: '' };
      const emit = (which: string, text: string) => {
        if (program.opts().json) process.stdout.write(JSON.stringify({ instance: instanceId, stream: which, data: text }) + '\n');
        else (which === 'stderr' ? process.stderr : process.stdout).write(prefix ? text.slice(0, -1).split('\n').map((l) => `[${instanceId}] ${l}\n`).join('') : text);
      };
      stream.on('data', (ch: { stream: string; data: Buffer }) => {
        if (!prefix) return emit(ch.stream, ch.data.toString('utf8'));
        const text = partial[ch.stream] + ch.data.toString('utf8');
        const cut = text.lastIndexOf('\n') + 1;
        partial[ch.stream] = text.slice(cut);
        if (cut) emit(ch.stream, text.slice(0, cut));
      });
      stream.on('end', () => {
        for (const [which, rest] of Object.entries(partial)) if (rest) emit(which, rest + '\n');
        resolve();
      });
      stream.on('error', reject);
    })));
  }));

const instance = program.command('instance').description('one instance');
instance.command('replace <instance-id>').description("a new instance in its slot, by the component's update order: start-first, this one stops once the new one is healthy (as kubectl delete pod under a Deployment, new one first); stop-first (a component with volumes), it stops first and the new one starts on its node")
  .option('--reason <text>', 'why, recorded in the events and the stop reason')
  .action((id: string, o) => run(async (c) => {
    const i = await c.replaceInstance(id, o.reason ?? '');
    out(i, () => `instance ${i.id} (${i.app}/${i.component}[${i.slot}] on ${i.nodeId}) is being replaced (${i.replacing}): a new instance takes slot ${i.slot}, before it stops (start-first) or after (stop-first: a component with volumes); follow with tessera ps ${i.app}`);
  }));

program.command('exec <instance-id> <command...>').description("run a command in an instance's container and print its output (as kubectl exec): put -- before the command; -i sends standard input as it comes, -t a terminal (-it for a shell); exits with the command's exit code; operators only, recorded as an instance.exec event")
  .option('-i, --stdin', 'send standard input to the command as it comes (ExecInteractive)')
  .option('-t, --tty', 'run the command in a terminal (its output raw; with -i, this terminal in raw mode: keys go as typed)')
  .option('--command-timeout <seconds>', 'kill the command if it runs longer (at most 3600; default 60, 3600 with -i or -t)', (v) => {
    if (!/^[1-9]\d*$/.test(v) || Number(v) > 3600) throw new InvalidArgumentError('--command-timeout takes whole seconds, 1 to 3600');
    return Number(v);
  })
  .action((instanceId: string, command: string[], o) => run(async (c) => {
    const interactive = !!(o.stdin || o.tty);
    const timeoutMs = (o.commandTimeout ?? (interactive ? 3600 : 60)) * 1000;
    await c.reachable(); // a stream stays on one coordinator: one that answers
    const print = (ch: { stream: string; data: Buffer; exited: boolean; exitCode: number }) => {
      if (program.opts().json) process.stdout.write(JSON.stringify(ch.exited ? { exitCode: ch.exitCode } : { stream: ch.stream, data: ch.data.toString('utf8') }) + '\n');
      else if (!ch.exited) (ch.stream === 'stderr' ? process.stderr : process.stdout).write(ch.data);
    };
    const exitCode = await new Promise<number>((resolve, reject) => {
      let code = -1;
      const onData = (ch: { stream: string; data: Buffer; exited: boolean; exitCode: number }) => {
        if (ch.exited) code = ch.exitCode;
        print(ch);
      };
      if (!interactive) {
        const stream = c.execInstance({ instanceId, command, timeoutMs });
        stream.on('data', onData);
        stream.on('end', () => resolve(code));
        stream.on('error', reject);
        return;
      }
      const stream = c.execInteractive();
      const stdin = process.stdin;
      const raw = !!o.tty && !!o.stdin && stdin.isTTY;
      const size = () => (process.stdout.isTTY ? { rows: process.stdout.rows, cols: process.stdout.columns } : undefined);
      const onResize = () => stream.write({ resize: size() });
      const done = () => {
        if (raw) stdin.setRawMode(false);
        stdin.pause();
        (stdin as { unref?: () => void }).unref?.(); // a standard input still open does not keep the CLI
        process.stdout.off('resize', onResize);
      };
      stream.write({ start: { instanceId, command, timeoutMs, tty: !!o.tty, size: o.tty ? size() : undefined } });
      if (o.tty) process.stdout.on('resize', onResize);
      if (o.stdin) {
        if (raw) stdin.setRawMode(true);
        stdin.on('data', (d: Buffer) => stream.write({ stdin: d }));
        stdin.on('end', () => stream.write({ stdinClosed: true }));
      }
      stream.on('data', onData);
      stream.on('end', () => { done(); resolve(code); });
      stream.on('error', (err) => { done(); reject(err); });
    });
    if (exitCode < 0) throw new Error('the stream ended without the exit code of the command');
    process.exitCode = exitCode;
  }));

/**
 * A message as a file would hold it, for `get` commands whose output `apply`/`set` takes back:
 * only its set fields (setFieldsOnly: typed, so an env var or label set to "" is kept and no
 * default or loader marker is printed), the `first` fields first and every object's name first
 * under it, without `omit` (what the coordinator adds).
 */
function definitionYaml(type: string, o: object, first: string[], omit: string[]): string {
  const rec = setFieldsOnly(type, o);
  const ordered = Object.fromEntries([...first.filter((k) => k in rec).map((k) => [k, rec[k]]), ...Object.entries(rec).filter(([k]) => !first.includes(k) && !omit.includes(k))]);
  return YAML.stringify(JSON.parse(JSON.stringify(ordered, (_k, v) => (v && typeof v === 'object' && !Array.isArray(v) && typeof v.name === 'string' ? { name: v.name, ...v } : v)))).trimEnd();
}

const policy = program.command('policy').description('scheduling deployment policies (scaling)');
policy.command('set').description('set a policy from a YAML or JSON file').requiredOption('-f, --file <file>', 'policy file, or -').action((o) => run(async (c) => {
  const p = await c.setPolicy(readSpecFile(o.file, 'ScalingPolicy'));
  out(p, () => `policy for ${p.app}/${p.component}: ${p.min}..${p.max} instances on ${p.checks.map((x) => `${x.metric}=${x.target}`).join(', ') || '-'}`);
}));
policy.command('get <app> <component>').description('show a policy, as YAML that policy set takes back').action((app, comp) => run(async (c) => {
  const p = await c.getPolicy(app, comp);
  out(p, () => definitionYaml('ScalingPolicy', p, ['app', 'component'], []));
}));
policy.command('list [app]').description('list policies').action((app) => run(async (c) => {
  const r = await c.listPolicies(app ?? '');
  out(r.policies, () => r.policies.length ? table(['APP', 'COMPONENT', 'MIN', 'MAX', 'CHECKS', 'VERTICAL'], r.policies.map((p) => [
    p.app, p.component, p.min, p.max, p.checks.map((x) => `${x.metric}=${x.target}`).join(', ') || '-',
    [p.verticalCpu ? `cpu ${p.verticalCpu.min}..${p.verticalCpu.max}m` : '', p.verticalMemory ? `memory ${p.verticalMemory.min}..${p.verticalMemory.max} MiB` : ''].filter(Boolean).join(', ') || '-',
  ])) : 'no policies');
}));
policy.command('delete <app> <component>').description('remove a policy (the replica count stays)').action((app, comp) => run(async (c) => {
  await c.deletePolicy(app, comp);
  out({}, () => `policy for ${app}/${comp} removed`);
}));
policy.command('eval <app> <component>').description('dry run: what the policy would do now').action((app, comp) => run(async (c) => {
  const d = await c.evaluatePolicy(app, comp);
  out(d, () => renderDecision(d));
}));

function renderDecision(d: import('../../common/generated/tessera/v1/ScalingDecision').ScalingDecision__Output): string {
  const a = d.instruction?.attributes?.[0];
  return [
    `${d.app}/${d.component}: ${d.action}${d.dryRun ? ' (dry run)' : ''}`,
    `  instruction: ${a?.name} ${a?.min}..${a?.max}${a?.unit ? ` ${a.unit}` : ''}, now ${d.inputs.current ?? '-'} -> ${a?.value}`,
    `  reason:      ${d.reason}`,
    `  inputs:      ${Object.entries(d.inputs).map(([k, v]) => `${k}=${v}`).join(' ')}`,
    ...d.checks.map((x) => `  check ${x.metric}: value ${x.value}, target ${x.target}, ${x.hasRecommendation ? `wants ${x.recommendation}` : 'no recommendation'} (${x.note})`),
  ].join('\n');
}

program.command('scaling').description('scaling decisions').command('history <app>').description('each decision: its inputs, reason and instruction')
  .option('--component <name>', 'one component').option('-n, --limit <n>', 'how many', wholeNumber('--limit', 1), 20).action((app, o) => run(async (c) => {
    const r = await c.scalingHistory(app, o.component ?? '', Number(o.limit));
    out(r.decisions, () => r.decisions.length ? table(['TIME', 'COMPONENT', 'ACTION', 'INSTRUCTION', 'APPLIED', 'REASON'], r.decisions.map((d) => {
      const a = d.instruction?.attributes?.[0];
      return [new Date(Number(d.atMs)).toISOString().slice(11, 19), d.component, d.action, `${a?.name} ${a?.min}..${a?.max} -> ${a?.value}`, d.applied ? 'yes' : 'no', clip(d.reason, 110)];
    })) : 'no decisions yet');
  }));

program.command('events').description('cluster events (placements, node states, leadership)')
  .option('-f, --follow', 'keep streaming new events')
  .option('-n, --history <count>', 'how many past events to show', wholeNumber('--history', 0), 20)
  .option('--kind <prefix...>', 'only events whose kind starts with this, e.g. node.')
  .option('--for <name>', 'only events about this app, node or instance (as kubectl events --for)')
  .action((o) => run(async (c) => {
    await c.reachable();
    const stream = c.watchEvents({ history: Number(o.history), follow: !!o.follow, kinds: o.kind ?? [], involving: o.for ?? '' });
    const json = program.opts().json;
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (e: Event__Output) => {
        process.stdout.write(json ? JSON.stringify(e) + '\n' : `${eventLine(e)}\n`);
      });
      stream.on('end', resolve);
      stream.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? resolve() : reject(err)));
      process.once('SIGINT', () => { stream.cancel(); resolve(); });
    });
  }));

// ───────────────────────────── components, pipelines, jobs ─────────────────────────────

const component = program.command('component').description('component instances the job scheduler routes to');
component.command('list [kind]').description('registered instances: kind, version, where, state, latency, in flight')
  .option('--chunk-size <n>', chunkHelp('instances'), chunkSize, 500).action((kind, o) => run(async (c) => {
  const r = { instances: await c.allComponents(kind ?? '', Number(o.chunkSize)) };
  out(r.instances, () => r.instances.length ? table(['INSTANCE', 'KIND', 'VERSION', 'SOURCE', 'NODE', 'ENDPOINT', 'STATE', 'LATENCY', 'IN FLIGHT', 'QUEUE', 'OK', 'FAILED', 'LEASE'], r.instances.map((i) => [
    i.instanceId, i.kind, i.version || '-', i.source, i.nodeId || '-', i.endpoint, i.state, `${i.latencyMs.toFixed(2)} ms`, i.inFlight, i.queueDepth, i.stepsOk, i.stepsFailed,
    i.leaseExpiresAtMs ? `${Math.max(0, Math.round((Number(i.leaseExpiresAtMs) - Date.now()) / 1000))}s left` : '-',
  ])) : 'no component instances registered');
}));
component.command('register <instance-id>').description('register an external instance (one running outside Tessera); run it again to renew the lease')
  .requiredOption('--kind <kind>', 'component kind').requiredOption('--endpoint <host:port>', 'where it serves tessera.v1.Component')
  .option('--component-version <semver>', 'its version', '').option('--operations <ops>', 'operations it offers, comma-separated', '')
  .option('--ttl <ms>', 'lease; it is deregistered unless renewed within this', wholeNumber('--ttl', 1, 'ms'), 30000)
  .action((id, o) => run(async (c) => {
    const i = await c.registerComponent({ instanceId: id, kind: o.kind, endpoint: o.endpoint, version: o.componentVersion, operations: o.operations ? String(o.operations).split(',') : [], ttlMs: Number(o.ttl) });
    out(i, () => `registered ${i.kind} ${i.version || ''} instance ${i.instanceId} at ${i.endpoint}; lease until ${new Date(Number(i.leaseExpiresAtMs)).toISOString()}`);
  }));
component.command('deregister <instance-id>').description('remove an external instance from routing').action((id) => run(async (c) => {
  const i = await c.deregisterComponent(id);
  out(i, () => `deregistered ${i.kind} instance ${i.instanceId}`);
}));

const quota = program.command('quota').description('per-kind quotas: the CPU and memory all instances of a kind may reserve');
quota.command('set <kind>').description('set a quota').option('--cpu <millicores>', 'total CPU (0: any)', wholeNumber('--cpu', 0, 'millicores'), 0).option('--memory <mib>', 'total memory in MiB (0: any)', wholeNumber('--memory', 0, 'MiB'), 0).action((kind, o) => run(async (c) => {
  const q = await c.setQuota({ kind, cpuMillis: Number(o.cpu), memoryMib: Number(o.memory) });
  out(q, () => `quota of ${q.kind}: ${q.cpuMillis || 'any'} millicores, ${q.memoryMib || 'any'} MiB (used ${q.used?.cpuMillis}m, ${q.used?.memoryMib} MiB)`);
}));
quota.command('list').description('quotas and what each kind uses').action(() => run(async (c) => {
  const r = await c.listQuotas();
  out(r.quotas, () => r.quotas.length ? table(['KIND', 'CPU (USED/LIMIT)', 'MEMORY (USED/LIMIT)'], r.quotas.map((q) => [q.kind, `${q.used?.cpuMillis}/${q.cpuMillis || 'any'} m`, `${q.used?.memoryMib}/${q.memoryMib || 'any'} MiB`])) : 'no quotas');
}));
quota.command('delete <kind>').description('remove a quota').action((kind) => run(async (c) => {
  await c.deleteQuota(kind);
  out({}, () => `quota of ${kind} removed`);
}));

const registryAuth = program.command('registry-auth').description('registry credentials: the logins agents pull private images with, named by components (imagePullCredential)');
registryAuth.command('set <name>').description('set a registry credential (the password from standard input, as docker login --password-stdin)')
  .requiredOption('--server <host[:port]>', 'the registry as image references name it, e.g. registry.example.com:5000 (docker.io for Docker Hub)')
  .requiredOption('--username <name>', 'the login')
  .action((name: string, o) => run(async (c) => {
    // Never a flag: it would stay in the shell's history and show in ps.
    if (process.stdin.isTTY) process.stderr.write('password (then Enter and Ctrl-D): ');
    const password = require('node:fs').readFileSync(0, 'utf8').replace(/\r?\n$/, '') as string;
    const r = await c.setRegistryCredential({ name, server: o.server, username: o.username, password });
    out(r, () => `registry credential ${r.name}: ${r.username} at ${r.server}`);
  }));
registryAuth.command('list').description('registry credentials (never their passwords) and the components that name them').action(() => run(async (c) => {
  const r = await c.listRegistryCredentials();
  out(r.credentials, () => r.credentials.length ? table(['NAME', 'SERVER', 'USERNAME', 'UPDATED', 'BY', 'AT REST', 'USED BY'], r.credentials.map((x) => [
    x.name, x.server, x.username, ago(Number(x.updatedAtMs)), x.by || '-', x.atRest || '-', x.usedBy.join(', ') || '-',
  ])) : 'no registry credentials');
}));
registryAuth.command('delete <name>').description('remove a registry credential (refused while an app names it)').action((name: string) => run(async (c) => {
  await c.deleteRegistryCredential(name);
  out({}, () => `registry credential ${name} removed`);
}));

const secret = program.command('secret').description('secrets: values for components\' environments (secretEnv VAR: SECRET/KEY), never shown once set');
secret.command('set <name> <key=value...>').description('set a secret\'s whole data (a key left out is removed). KEY=@FILE reads a file, KEY=- standard input; a literal KEY=VALUE stays in the shell\'s history')
  .action((name: string, pairs: string[]) => {
    const fs = require('node:fs') as typeof import('node:fs');
    const data: Record<string, string> = {};
    let stdinTaken = '';
    for (const p of pairs) {
      const i = p.indexOf('=');
      if (i < 1) program.error(`error: "${p}" is not KEY=VALUE, KEY=@FILE or KEY=-`);
      const key = p.slice(0, i);
      const v = p.slice(i + 1);
      if (key in data) program.error(`error: key ${key} is given twice`);
      if (v === '-') {
        if (stdinTaken) program.error(`error: standard input is read once: for ${stdinTaken}, not again for ${key}`);
        stdinTaken = key;
        if (process.stdin.isTTY) process.stderr.write(`${key} (then Enter and Ctrl-D): `);
        data[key] = fs.readFileSync(0, 'utf8').replace(/\r?\n$/, '');
      } else if (v.startsWith('@')) {
        try {
          data[key] = fs.readFileSync(v.slice(1), 'utf8');
        } catch (e) {
          program.error(`error: ${key}: ${(e as Error).message}`);
        }
      } else {
        data[key] = v;
      }
    }
    return run(async (c) => {
      const r = await c.setSecret({ name, data });
      out(r, () => [
        `secret ${r.name} version ${r.version}: ${r.keys.join(', ')}`,
        ...(r.usedBy.length ? [`used by ${r.usedBy.join(', ')}: running instances keep the values they started with; tessera app restart APP rolls the new ones out`] : []),
      ].join('\n'));
    });
  });
secret.command('list').description('secrets (their keys, never their values) and the components that name them').action(() => run(async (c) => {
  const r = await c.listSecrets();
  out(r.secrets, () => r.secrets.length ? table(['NAME', 'KEYS', 'VERSION', 'UPDATED', 'BY', 'AT REST', 'USED BY'], r.secrets.map((x) => [
    x.name, x.keys.join(','), x.version, ago(Number(x.updatedAtMs)), x.by || '-', x.atRest || '-', x.usedBy.join(', ') || '-',
  ])) : 'no secrets');
}));
secret.command('delete <name>').description('remove a secret (refused while an app names it)').action((name: string) => run(async (c) => {
  await c.deleteSecret(name);
  out({}, () => `secret ${name} removed`);
}));

const pipeline = program.command('pipeline').description('pipelines: the stages a job runs through');
pipeline.command('apply').description('apply a pipeline from a YAML or JSON file').requiredOption('-f, --file <file>', 'pipeline file, or -').option('--dry-run', 'validate only')
  .action((o) => run(async (c) => {
    const p = await c.applyPipeline(readSpecFile(o.file, 'Pipeline'), !!o.dryRun);
    out(p, () => `${o.dryRun ? 'dry run: ' : ''}pipeline ${p.name}${o.dryRun ? ' is valid' : ` version ${p.version}`}: ${p.stages.map((st) => `${st.name}(${st.kind || st.alternatives.map((a) => a.kind).join('|')})`).join(' -> ')}`);
  }));
pipeline.command('list').description('list pipelines').option('--chunk-size <n>', chunkHelp('pipelines'), chunkSize, 500).action((o) => run(async (c) => {
  const r = { pipelines: await c.allPipelines(Number(o.chunkSize)) };
  out(r.pipelines, () => r.pipelines.length ? table(['NAME', 'VERSION', 'STAGES', 'TIMEOUT', 'MAX PAYLOAD'], r.pipelines.map((p) => [
    p.name, p.version, p.stages.map((st) => `${st.name}(${st.kind || st.alternatives.map((a) => a.kind).join('|')})`).join(' -> '), `${p.defaultTimeoutMs} ms`, `${p.maxPayloadBytes} B`,
  ])) : 'no pipelines');
}));
pipeline.command('get <name>').description('show a pipeline: its version, then its definition as YAML that pipeline apply takes back').action((name) => run(async (c) => {
  const p = await c.getPipeline(name);
  // The definition without what the coordinator adds (version, update time): saved, it applies
  // back unchanged (as kubectl get -o yaml); the header says what those were.
  const { version, updatedAtMs } = p;
  out(p, () => `pipeline ${p.name}: version ${version}, updated ${ago(Number(updatedAtMs))} ago (${new Date(Number(updatedAtMs)).toISOString()})\n\n${definitionYaml('Pipeline', p, ['name'], ['version', 'updatedAtMs'])}`);
}));
pipeline.command('delete <name>').description('remove a pipeline').action((name) => run(async (c) => {
  await c.deletePipeline(name);
  out({}, () => `pipeline ${name} removed`);
}));

type JobOut = import('../../common/generated/tessera/v1/Job').Job__Output;
function renderJob(j: JobOut, explain = true): string {
  const state = enumName(j.state, 'JOB_STATE_');
  const lines = [`job ${j.id} (${j.pipeline}): ${state} in ${Number(j.durationMs).toFixed(0)} ms${j.plans > 1 ? `, ${j.plans} plans` : ''}${j.submittedBy ? `, submitted by ${j.submittedBy}` : ''}${j.reason ? ` - ${j.reason}` : ''}`];
  if (explain) {
    lines.push(table(['STAGE', 'KIND', 'INSTANCE', 'NODE', 'PLANNED COST', 'ATTEMPT', 'TOOK', 'OUTCOME'], j.steps.map((st) => {
      const planned = j.path.find((p) => p.stage === st.stage && p.instanceId === st.instanceId);
      return [st.stage, st.kind, st.instanceId, st.nodeId || 'external', planned ? `${Number(planned.costMs).toFixed(2)} ms` : '-', st.attempt, `${Number(st.durationMs).toFixed(2)} ms`, st.ok ? 'ok' : clip(st.error, 80)];
    })));
  }
  return lines.join('\n');
}
const job = program.command('job').description('jobs: submit to a pipeline, follow, cancel');
job.command('submit <pipeline>').description('run a job and print its result and the path it took')
  .option('-d, --data <data>', 'the payload: text, or @file (@- for standard input)', '')
  .option('--deadline <ms>', 'the job deadline, in ms from now (default: the pipeline\'s)', wholeNumber('--deadline', 1, 'ms'), 0)
  .option('--key <idempotency-key>', 'submitting again with the same key returns the same job (default: a new random key, so a retry after a lost answer does not run it twice)')
  .option('-H, --header <name=value...>', 'headers for the steps')
  .option('--no-wait', 'print the job id once it is accepted, do not wait for the result')
  .option('--explain', 'print the path and per-step timings', true)
  .action((name, o) => run(async (c) => {
    const data = String(o.data);
    let payload: Buffer;
    try {
      payload = data.startsWith('@') ? require('node:fs').readFileSync(data === '@-' ? 0 : data.slice(1)) as Buffer : Buffer.from(data);
    } catch (err) {
      return program.error(`error: --data ${data}: ${(err as Error).message}`);
    }
    const headers = Object.fromEntries(((o.header ?? []) as string[]).map((h) => [h.slice(0, h.indexOf('=')), h.slice(h.indexOf('=') + 1)]));
    const key = o.key ?? `cli-${require('node:crypto').randomUUID()}`;
    const req = { pipeline: name, payload, timeoutMs: Number(o.deadline), idempotencyKey: key, headers, wait: o.wait !== false };
    // An accepted job survives a leader change: submitting again with the same key finds it.
    let j: JobOut | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        j = await c.submitJob(req);
        break;
      } catch (err) {
        const se = err as grpc.ServiceError;
        if (attempt >= 5 || se.code !== grpc.status.UNAVAILABLE || !se.metadata?.get('tessera-leader-address')) throw err;
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
    out({ ...j, result: j!.result.toString('utf8') }, () => {
      if (o.wait === false) return `job ${j!.id} accepted (${enumName(j!.state, 'JOB_STATE_')}); follow it with: tessera job watch ${j!.id}`;
      const body = j!.state === 'JOB_STATE_SUCCEEDED' ? j!.result.toString('utf8') : '';
      return [body, '', renderJob(j!, o.explain)].join('\n').replace(/^\n/, '');
    });
    if (o.wait !== false && j!.state !== 'JOB_STATE_SUCCEEDED') process.exitCode = 1;
  }));
job.command('get <id>').description('a job: state, result, path, steps').action((id) => run(async (c) => {
  const j = await c.getJob(id);
  out({ ...j, result: j.result.toString('utf8') }, () => [renderJob(j), j.result.length ? `result: ${j.result.toString('utf8').slice(0, 2000)}` : ''].filter(Boolean).join('\n'));
}));
job.command('list').description('recent jobs').option('--pipeline <name>', 'one pipeline').option('--state <state>', 'QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED', oneOf('--state', ['QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'])).option('-n, --limit <n>', 'how many', wholeNumber('--limit', 1), 20)
  .option('--page-token <token>', 'the next page: the token the page before printed (same --pipeline and --state)')
  .action((o) => run(async (c) => {
    const r = await c.listJobs({ pipeline: o.pipeline ?? '', state: o.state ? `JOB_STATE_${String(o.state).toUpperCase()}` as never : 'JOB_STATE_UNSPECIFIED', limit: Number(o.limit), pageToken: o.pageToken ?? '' });
    // BY when callers are identified (tokens or TLS), as app history shows it.
    const by = r.jobs.some((j) => j.submittedBy);
    out(r.jobs, () => r.jobs.length ? table(['ID', 'PIPELINE', 'STATE', 'SUBMITTED', ...(by ? ['BY'] : []), 'TOOK', 'PLANS', 'PATH', 'REASON'], r.jobs.map((j) => [
      j.id, j.pipeline, enumName(j.state, 'JOB_STATE_'), ago(Number(j.submittedAtMs)), ...(by ? [j.submittedBy || '-'] : []), `${Number(j.durationMs).toFixed(0)} ms`, j.plans,
      clip(j.path.map((p) => p.instanceId).join(' > '), 60), clip(j.reason, 60) || '-',
    ])) + (r.nextPageToken ? `\nmore: --page-token ${r.nextPageToken}` : '') : 'no jobs');
    // With --json the output stays the list; the next page's token goes to stderr.
    if (program.opts().json && r.nextPageToken) process.stderr.write(`more: --page-token ${r.nextPageToken}\n`);
  }));
job.command('cancel <id>').description('cancel a queued or running job').action((id) => run(async (c) => {
  const j = await c.cancelJob(id);
  out(j, () => `job ${j.id}: ${enumName(j.state, 'JOB_STATE_')}`);
}));
job.command('watch <id>').description('follow a job until it ends').action((id) => run(async (c) => {
  await c.reachable();
  const stream = c.watchJob(id);
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (j: JobOut) => process.stdout.write((program.opts().json ? JSON.stringify({ ...j, result: j.result.toString('utf8') }) : renderJob(j, false)) + '\n'));
    stream.on('end', resolve);
    stream.on('error', reject);
  });
}));

// ─────────────────────────────── operator ───────────────────────────────

const operator = program.command('operator').description('cluster operations: snapshots of the cluster state, keys for secrets at rest');
operator.command('keygen [name]').description('print a new line for the coordinators\' --secrets-key-file (name:base64 of 32 random bytes; made here, sent nowhere)')
  .action((name = `k${new Date().toISOString().slice(0, 10).replace(/-/g, '')}`) => {
    try {
      process.stdout.write(`${newKeyLine(name)}\n`);
    } catch (e) {
      process.stderr.write(`error: ${(e as Error).message}\n`);
      process.exitCode = 1;
    }
  });
operator.command('snapshot').description("etcd snapshots: Tessera's whole state, to back up and restore (as nomad operator snapshot)")
  .command('save <file>').description('save a snapshot of etcd through a coordinator (restore it with etcdctl snapshot restore: see the README, Backup and restore)')
  .action((file: string) => run(async (c) => {
    const fs = require('node:fs') as typeof import('node:fs');
    const tmp = `${file}.part`;
    // Written aside and renamed once whole: an interrupted save leaves no file that looks good.
    // 0600: it holds every spec and every job's payload.
    const fd = fs.openSync(tmp, 'w', 0o600);
    const hash = require('node:crypto').createHash('sha256') as import('node:crypto').Hash;
    let bytes = 0;
    let total = 0;
    let revision = '';
    let shown = 0;
    const progress = process.stderr.isTTY && !program.opts().json;
    try {
      await c.reachable();
      await new Promise<void>((resolve, reject) => {
        const stream = c.saveSnapshot();
        stream.on('data', (ch: { data: Buffer; remainingBytes: string | number; revision: string | number }) => {
          if (!revision) {
            revision = String(ch.revision);
            total = ch.data.length + Number(ch.remainingBytes);
          }
          try {
            fs.writeSync(fd, ch.data);
          } catch (err) {
            stream.cancel(); // the disk is full, say: stop the coordinator reading etcd for nothing
            reject(err);
            return;
          }
          hash.update(ch.data);
          bytes += ch.data.length;
          if (progress && Date.now() - shown > 500) {
            shown = Date.now();
            process.stderr.write(`\r${(bytes / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MiB`);
          }
        });
        stream.on('end', () => resolve());
        stream.on('error', reject);
      });
      if (!bytes) throw new Error('the coordinator sent an empty snapshot');
      fs.fsyncSync(fd);
    } catch (err) {
      fs.closeSync(fd);
      fs.rmSync(tmp, { force: true });
      throw err;
    } finally {
      if (progress && shown) process.stderr.write('\n');
    }
    fs.closeSync(fd);
    fs.renameSync(tmp, file);
    const sha256 = hash.digest('hex');
    out({ file, bytes, revision: Number(revision), sha256 }, () => [
      `saved ${file}: ${(bytes / 1048576).toFixed(2)} MiB${Number(revision) ? `, etcd revision ${revision}` : ''}, sha256 ${sha256}`,
      `check it with: etcdctl snapshot status ${file}; restore it with etcdctl snapshot restore (README: Backup and restore)`,
    ].join('\n'));
  }));

// ─────────────────────────────── sql (examples/db) ───────────────────────────────

interface SqlResult { columns: string[]; rows: (string | number | null)[][]; changed?: number; explain?: string[]; executor?: string }
async function runSql(c: AdminClient, statement: string, o: { pipeline: string; explain?: boolean; deadline: string | number }): Promise<boolean> {
  const j = await c.submitJob({ pipeline: o.pipeline, payload: Buffer.from(statement), wait: true, timeoutMs: Number(o.deadline), idempotencyKey: `sql-${require('node:crypto').randomUUID()}` });
  if (program.opts().json) {
    process.stdout.write(JSON.stringify({ job: { ...j, result: undefined }, result: j.state === 'JOB_STATE_SUCCEEDED' ? JSON.parse(j.result.toString('utf8')) : undefined }, null, 2) + '\n');
    return j.state === 'JOB_STATE_SUCCEEDED';
  }
  if (j.state !== 'JOB_STATE_SUCCEEDED') {
    process.stderr.write(`error: ${j.reason}\n`);
    if (o.explain) process.stderr.write(renderJob(j) + '\n');
    return false;
  }
  const r = JSON.parse(j.result.toString('utf8')) as SqlResult;
  const show = (v: unknown) => (v === null ? 'NULL' : typeof v === 'number' && !Number.isInteger(v) ? String(Math.round(v * 1e6) / 1e6) : String(v));
  if (r.columns.length) {
    process.stdout.write(table(r.columns.map((x) => x.toUpperCase()), r.rows.map((row) => row.map(show))) + '\n');
    process.stdout.write(`(${r.rows.length} row${r.rows.length === 1 ? '' : 's'}, ${Number(j.durationMs).toFixed(0)} ms)\n`);
  } else {
    process.stdout.write(`OK${r.changed !== undefined ? `, ${r.changed} row(s)` : ''} (${Number(j.durationMs).toFixed(0)} ms)\n`);
  }
  if (o.explain) {
    process.stdout.write(`\nplan:\n${(r.explain ?? []).map((l) => `  ${l}`).join('\n')}\n\npath:\n${renderJob(j)}\n`);
  }
  return true;
}
program.command('sql [statement...]').description('run SQL on the example component database (examples/db) as a job; no statement: a REPL')
  .option('--explain', 'print the plan and the path the job took')
  .option('--pipeline <name>', 'the pipeline that runs statements', 'sql')
  .option('--deadline <ms>', 'statement deadline in ms', wholeNumber('--deadline', 1, 'ms'), 15000)
  .action((words: string[], o) => run(async (c) => {
    if (words.length) {
      if (!(await runSql(c, words.join(' '), o))) process.exitCode = 1;
      return;
    }
    const rl = require('node:readline').createInterface({ input: process.stdin, output: process.stdout, prompt: 'sql> ' }) as import('node:readline').Interface;
    let buf = '';
    rl.prompt();
    for await (const line of rl) {
      buf += `${line}\n`;
      if (!buf.trim().endsWith(';') && line.trim() !== '') { process.stdout.write('...> '); continue; }
      const stmt = buf.trim();
      buf = '';
      if (stmt && stmt !== ';') await runSql(c, stmt, o).catch((err) => process.stderr.write(`error: ${(err as grpc.ServiceError).details ?? (err as Error).message}\n`));
      rl.prompt();
    }
  }));

// grpc-js sets the TLS server name to an IP address, which Node flags as deprecated on every
// call; it is not something an operator can act on.
process.noDeprecation = true;
program.command('completion [shell]').description('print a bash completion script for commands and options: source <(tessera completion bash), or save it under /etc/bash_completion.d/tessera')
  .action((shell: string | undefined) => {
    if (shell && shell !== 'bash') program.error(`error: completion is written for bash only, not ${shell}`);
    process.stdout.write(bashCompletion(program));
  });

program.parseAsync(process.argv);
