// The coordinator's settings: one schema (type, doc, env name, default) compiled once.
import * as os from 'node:os';
import { compileLayers, isHostPort, Layer, Schema } from '../common/config';
import { ConfigError, FieldViolation, fileViolations } from '../common/errors';
import { LOG_LEVELS } from '../common/logger';
import { tlsSchema, tlsViolations } from '../common/tls';
import { loadTokens } from './auth';
import { loadKeyring } from './secrets';

export const COORDINATOR_SCHEMA = {
  id: { type: 'string', doc: 'unique coordinator id (default: hostname-port)', env: 'TESSERA_COORDINATOR_ID' },
  listen: { type: 'string', doc: 'gRPC listen address host:port (Admin, AgentGateway, health, reflection)', env: 'TESSERA_LISTEN', default: '127.0.0.1:7400' },
  advertise: { type: 'string', doc: 'address other processes use to reach this coordinator (default: listen)', env: 'TESSERA_ADVERTISE' },
  etcdEndpoints: { type: 'list', doc: 'etcd endpoints host:port, comma-separated; empty starts an embedded single-member etcd', env: 'TESSERA_ETCD_ENDPOINTS', default: [] },
  etcdPrefix: { type: 'string', doc: 'key prefix for all Tessera state in etcd', env: 'TESSERA_ETCD_PREFIX', default: '/tessera/' },
  dataDir: { type: 'string', doc: 'data folder (the embedded etcd lives here)', env: 'TESSERA_DATA_DIR', default: './data/coordinator' },
  leaseTtlSeconds: { type: 'int', doc: 'leader lease TTL in seconds (etcd raises anything below 2)', env: 'TESSERA_LEASE_TTL', default: 3, min: 2, max: 60 },
  leaseMarginMs: { type: 'int', doc: 'a leader steps down when its lease keepalive has not succeeded for TTL minus this margin', env: 'TESSERA_LEASE_MARGIN_MS', default: 1000, min: 100 },
  heartbeatTimeoutMs: { type: 'int', doc: 'a node with no report for this long goes DOWN', env: 'TESSERA_HEARTBEAT_TIMEOUT_MS', default: 10_000, min: 500 },
  nodeGcThresholdMs: { type: 'int', doc: 'node garbage collection: a node DOWN for longer than this is removed from the node list (as Nomad\'s node_gc_threshold; 0: never)', env: 'TESSERA_NODE_GC_THRESHOLD_MS', default: 86_400_000, min: 0 },
  runtimeDownGraceMs: { type: 'int', doc: 'a node whose container runtime has not answered for this long (its runtime-down condition) has its instances replaced on other nodes, as a Kubernetes node NotReady for 5 minutes has its pods evicted (0: never)', env: 'TESSERA_RUNTIME_DOWN_GRACE_MS', default: 300_000, min: 0 },
  disruptionPercent: { type: 'int', doc: 'a zone disruption: while more than this percent of a zone\'s nodes (and at least 3) are DOWN, their instances are not replaced elsewhere, since so many nodes lost at once is more likely the leader cut off from them than hosts dead; a zone with every node DOWN is replaced elsewhere unless every zone is, as Kubernetes\' node lifecycle controller judges each zone (0: off)', env: 'TESSERA_DISRUPTION_PERCENT', default: 55, min: 0, max: 100 },
  zoneLabel: { type: 'string', doc: 'the node label that names a node\'s zone, for --disruption-percent (nodes without it form one zone)', env: 'TESSERA_ZONE_LABEL', default: 'zone' },
  failoverGraceMs: { type: 'int', doc: 'after winning an election, wait this long for agents to reconnect before marking any node DOWN', env: 'TESSERA_FAILOVER_GRACE_MS', default: 15_000, min: 0 },
  reportIntervalMs: { type: 'int', doc: 'how often agents report (sent to them in the welcome)', env: 'TESSERA_REPORT_INTERVAL_MS', default: 5_000, min: 100 },
  statusPersistIntervalMs: { type: 'int', doc: 'how often the leader writes the node records whose status changed to etcd (a node attached, detached or runs a different number of instances; and those due a refresh), in as few transactions as etcd takes', env: 'TESSERA_STATUS_PERSIST_MS', default: 5_000, min: 200 },
  statusRefreshIntervalMs: { type: 'int', doc: 'how often a node record\'s usage and last-seen time are written when nothing else about the node changed (the live figures stay in the leader\'s memory, and followers ask the leader for them: as Kubernetes\' node status, reported on change or each nodeStatusReportFrequency)', env: 'TESSERA_STATUS_REFRESH_MS', default: 60_000, min: 1_000 },
  maxEvents: { type: 'int', doc: 'how many events the bounded event log keeps', env: 'TESSERA_MAX_EVENTS', default: 2_000, min: 10 },
  logLevel: { type: 'string', doc: 'log level', env: 'TESSERA_LOG_LEVEL', default: 'info', oneOf: LOG_LEVELS },
  ...tlsSchema("this coordinator's certificate (OU=coordinator): server and client"),
  etcdCa: { type: 'string', doc: 'CA of the etcd cluster (https endpoints, client certificates; the three reloaded on SIGHUP)', env: 'TESSERA_ETCD_CA' },
  etcdCert: { type: 'string', doc: 'client certificate for etcd', env: 'TESSERA_ETCD_CERT' },
  etcdKey: { type: 'string', doc: 'client key for etcd', env: 'TESSERA_ETCD_KEY' },
  tokensFile: { type: 'string', doc: 'Admin API tokens (YAML: tokens: [{name, role: read-only|operator, sha256|token}]); empty: Admin is open', env: 'TESSERA_TOKENS_FILE', default: '' },
  secretsKeyFile: { type: 'string', doc: 'keys that seal registry passwords before they are stored in etcd (AES-256-GCM; a line per key, name:base64 of 32 bytes, the first seals, all open; mode 600; tessera operator keygen makes a line); empty: stored in the clear. Every coordinator needs the same file', env: 'TESSERA_SECRETS_KEY_FILE', default: '' },
  metricsListen: { type: 'string', doc: 'host:port for Prometheus /metrics (empty: off)', env: 'TESSERA_METRICS_LISTEN', default: '' },
  reconcileIntervalMs: { type: 'int', doc: 'how often the leader reconciles desired against observed instances', env: 'TESSERA_RECONCILE_INTERVAL_MS', default: 500, min: 50 },
  schedulerSampleSize: { type: 'int', doc: 'feasible nodes the scheduler scores per placement (0 = adaptive: max(50, 2% of nodes))', env: 'TESSERA_SCHEDULER_SAMPLE', default: 0, min: 0 },
  jobFlow: { type: 'string', doc: 'how a job\'s data moves: chain (agent to agent along the route) or per-stage (each step through the leader)', env: 'TESSERA_JOB_FLOW', default: 'chain', oneOf: ['chain', 'per-stage'] },
  jobQueueLimit: { type: 'int', doc: 'jobs that may wait for a saturated stage before submissions are refused (RESOURCE_EXHAUSTED)', env: 'TESSERA_JOB_QUEUE_LIMIT', default: 1_000, min: 0 },
  jobMaxInFlightPerInstance: { type: 'int', doc: 'jobs routed through one component instance at once before it counts as saturated', env: 'TESSERA_JOB_MAX_IN_FLIGHT', default: 128, min: 1 },
  jobRetentionMs: { type: 'int', doc: 'how long records of finished jobs are kept in etcd', env: 'TESSERA_JOB_RETENTION_MS', default: 3_600_000, min: 10_000 },
  jobMemoryJobs: { type: 'int', doc: 'finished jobs the leader keeps in memory (older ones are read from etcd)', env: 'TESSERA_JOB_MEMORY_JOBS', default: 10_000, min: 1 },
  jobHopUs: { type: 'int', doc: 'path cost of a hop between hosts, in microseconds', env: 'TESSERA_JOB_HOP_US', default: 1_000, min: 0 },
  jobSameHostHopUs: { type: 'int', doc: 'path cost of a hop that stays on one host, in microseconds', env: 'TESSERA_JOB_SAME_HOST_HOP_US', default: 100, min: 0 },
  jobRecordBudgetMb: { type: 'int', doc: 'the most megabytes of finished-job records the leader keeps in etcd: beyond it the oldest are deleted before their retention (etcd\'s default quota is 2 GiB)', env: 'TESSERA_JOB_RECORD_BUDGET_MB', default: 512, min: 1 },
  etcdCompactionIntervalMs: { type: 'int', doc: 'how often the leader compacts etcd\'s history, keeping at least this long of it (0: never, when etcd compacts itself with --auto-compaction-retention)', env: 'TESSERA_ETCD_COMPACTION_INTERVAL_MS', default: 300_000, min: 0 },
  relayKeyRotationMs: { type: 'int', doc: 'how often the key that signs direct jobs\' relay tickets is replaced (SIGHUP replaces it at once; 0: only then)', env: 'TESSERA_RELAY_KEY_ROTATION_MS', default: 3_600_000, min: 0 },
  etcdBinary: { type: 'string', doc: 'etcd binary for the embedded default', env: 'TESSERA_ETCD_BINARY', default: 'etcd' },
  embeddedEtcdClientPort: { type: 'int', doc: 'client port of the embedded etcd', env: 'TESSERA_EMBEDDED_ETCD_PORT', default: 2379, min: 1, max: 65535 },
  embeddedEtcdPeerPort: { type: 'int', doc: 'peer port of the embedded etcd', env: 'TESSERA_EMBEDDED_ETCD_PEER_PORT', default: 2380, min: 1, max: 65535 },
} satisfies Schema;

export interface CoordinatorConfig {
  id: string;
  listen: string;
  advertise: string;
  etcdEndpoints: string[];
  etcdPrefix: string;
  dataDir: string;
  leaseTtlSeconds: number;
  leaseMarginMs: number;
  heartbeatTimeoutMs: number;
  disruptionPercent: number;
  zoneLabel: string;
  failoverGraceMs: number;
  runtimeDownGraceMs: number;
  nodeGcThresholdMs: number;
  reportIntervalMs: number;
  statusPersistIntervalMs: number;
  statusRefreshIntervalMs: number;
  maxEvents: number;
  logLevel: string;
  reconcileIntervalMs: number;
  schedulerSampleSize: number;
  metricsListen: string;
  tokensFile: string;
  secretsKeyFile: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  insecureDev: boolean;
  jobFlow: 'chain' | 'per-stage';
  jobQueueLimit: number;
  jobMaxInFlightPerInstance: number;
  jobRetentionMs: number;
  relayKeyRotationMs: number;
  jobMemoryJobs: number;
  etcdCompactionIntervalMs: number;
  jobRecordBudgetMb: number;
  jobHopUs: number;
  jobSameHostHopUs: number;
  etcdBinary: string;
  embeddedEtcdClientPort: number;
  embeddedEtcdPeerPort: number;
}

/** Compiles layers into a validated CoordinatorConfig, with cross-field checks. */
export function compileCoordinatorConfig(layers: Layer[]): CoordinatorConfig {
  const raw = compileLayers<Partial<CoordinatorConfig>>(COORDINATOR_SCHEMA, layers);
  const v: FieldViolation[] = [];
  const listen = raw.listen!;
  if (!isHostPort(listen)) v.push({ field: 'listen', message: `must be host:port, got ${JSON.stringify(listen)}` });
  const advertise = raw.advertise ?? listen;
  if (!isHostPort(advertise)) v.push({ field: 'advertise', message: `must be host:port, got ${JSON.stringify(advertise)}` });
  else if (/^(0\.0\.0\.0|\[::\]):/.test(advertise)) v.push({ field: 'advertise', message: 'must be an address others can dial; set it when listening on a wildcard address' });
  else if (/:0$/.test(advertise)) v.push({ field: 'advertise', message: 'must name a port others can dial (port 0 is chosen by the kernel at bind): listen on a fixed port, or set advertise' });
  raw.etcdEndpoints!.forEach((e, i) => {
    if (!isHostPort(e.replace(/^https?:\/\//, ''))) v.push({ field: `etcdEndpoints[${i}]`, message: `must be host:port, got ${JSON.stringify(e)}` });
  });
  const prefix = raw.etcdPrefix!;
  if (!prefix.startsWith('/') || !prefix.endsWith('/')) v.push({ field: 'etcdPrefix', message: 'must start and end with "/"' });
  const ttlMs = raw.leaseTtlSeconds! * 1000;
  // The etcd client renews the lease every third of its TTL; a leader steps down once no renewal
  // has succeeded for TTL - margin. With a margin over half the TTL that is shorter than a renewal
  // and a half: the leader stepped down (resigning) between two renewals it was never late for.
  if (raw.leaseMarginMs! * 2 > ttlMs) v.push({ field: 'leaseMarginMs', message: `must be at most half the lease TTL (${ttlMs / 2} ms): the lease is renewed every third of its TTL (${Math.round(ttlMs / 3)} ms), and a leader steps down once no renewal has succeeded for the TTL less this margin, so it would step down between two renewals` });
  if (raw.heartbeatTimeoutMs! <= raw.reportIntervalMs!) {
    v.push({ field: 'heartbeatTimeoutMs', message: `must be greater than reportIntervalMs (${raw.reportIntervalMs} ms), or every node flaps` });
  }
  if (raw.relayKeyRotationMs && raw.relayKeyRotationMs < 60_000) v.push({ field: 'relayKeyRotationMs', message: 'must be 0 (replaced on SIGHUP only) or at least 60000 ms' });
  if (raw.metricsListen && !isHostPort(raw.metricsListen)) v.push({ field: 'metricsListen', message: `must be host:port, got ${JSON.stringify(raw.metricsListen)}` });
  v.push(...tlsViolations(raw));
  if (raw.tokensFile) v.push(...fileViolations(() => loadTokens(raw.tokensFile!)));
  if (raw.secretsKeyFile) v.push(...fileViolations(() => loadKeyring(raw.secretsKeyFile!)));
  if ((raw.etcdCa || raw.etcdCert || raw.etcdKey) && !(raw.etcdCa && raw.etcdCert && raw.etcdKey)) v.push({ field: 'etcdCa', message: 'etcd TLS needs etcdCa, etcdCert and etcdKey together' });
  else if (raw.etcdCa) v.push(...tlsViolations({ tlsCa: raw.etcdCa, tlsCert: raw.etcdCert, tlsKey: raw.etcdKey }).map((x) => ({ ...x, field: x.field.replace(/^tls/, 'etcd') })));
  if (v.length) throw new ConfigError(v);
  const port = listen.slice(listen.lastIndexOf(':') + 1);
  return { ...(raw as CoordinatorConfig), advertise, id: raw.id ?? `${os.hostname()}-${port}` };
}
