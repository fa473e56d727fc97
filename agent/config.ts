// The agent's settings: one schema compiled once (defaults < --config file < env < flags).
import * as os from 'node:os';
import { compileLayers, isHostPort, Layer, Schema } from '../common/config';
import { ConfigError, FieldViolation } from '../common/errors';
import { LOG_LEVELS } from '../common/logger';
import { tlsSchema, tlsViolations } from '../common/tls';
import { readAuthFile } from './images';

export const AGENT_SCHEMA = {
  coordinators: { type: 'list', doc: 'coordinator addresses host:port, comma-separated; any one will do, the agent follows redirects to the leader', env: 'TESSERA_COORDINATORS', default: ['127.0.0.1:7400'] },
  stateDir: { type: 'string', doc: 'state folder: node id, volumes', env: 'TESSERA_STATE_DIR', default: './data/agent' },
  nodeId: { type: 'string', doc: 'node id (default: generated once and kept in the state dir)', env: 'TESSERA_NODE_ID' },
  hostname: { type: 'string', doc: 'hostname to report (default: the OS hostname)', env: 'TESSERA_HOSTNAME' },
  labels: { type: 'map', doc: 'node labels k=v,k2=v2 used by placement constraints', env: 'TESSERA_LABELS', default: {} },
  reportIntervalMs: { type: 'int', doc: 'report interval override (default: what the coordinator says)', env: 'TESSERA_AGENT_REPORT_INTERVAL_MS', min: 100 },
  cpuMillis: { type: 'int', doc: 'CPU capacity offered to Tessera in millicores (default: all cores)', env: 'TESSERA_CPU_MILLIS', min: 1 },
  memoryMib: { type: 'int', doc: 'memory capacity offered to Tessera in MiB (default: total memory)', env: 'TESSERA_MEMORY_MIB', min: 1 },
  logLevel: { type: 'string', doc: 'log level', env: 'TESSERA_LOG_LEVEL', default: 'info', oneOf: LOG_LEVELS },
  portRange: { type: 'string', doc: 'host ports for instances with dynamic ports, START-END', env: 'TESSERA_PORT_RANGE', default: '20000-32000' },
  dockerSocket: { type: 'string', doc: 'Docker Engine socket', env: 'TESSERA_DOCKER_SOCKET', default: '/var/run/docker.sock' },
  registryAuth: { type: 'string', doc: 'Docker config file (JSON with "auths", as docker login writes) with credentials for private registries; read at each pull', env: 'TESSERA_REGISTRY_AUTH', default: '' },
  imageGcHighPercent: { type: 'int', doc: 'image garbage collection: when the filesystem holding the Engine\'s images is fuller than this (percent), unused images this agent pulled are removed, longest unused first (100: off)', env: 'TESSERA_IMAGE_GC_HIGH_PERCENT', default: 85, min: 0, max: 100 },
  imageGcLowPercent: { type: 'int', doc: 'image garbage collection stops once the filesystem is this full (percent) or less', env: 'TESSERA_IMAGE_GC_LOW_PERCENT', default: 80, min: 0, max: 100 },
  imageGcMinAgeMs: { type: 'int', doc: 'an image is removed only after it has gone unused this long (no container uses it)', env: 'TESSERA_IMAGE_GC_MIN_AGE_MS', default: 120_000, min: 0 },
  imageGcIntervalMs: { type: 'int', doc: 'how often the image filesystem is checked', env: 'TESSERA_IMAGE_GC_INTERVAL_MS', default: 60_000, min: 100 },
  diskPressurePercent: { type: 'int', doc: 'while the filesystem holding the Engine\'s images is fuller than this (percent), the node takes no new instances (its disk-pressure condition, as Kubernetes\' DiskPressure; checked at each report; 100: off)', env: 'TESSERA_DISK_PRESSURE_PERCENT', default: 95, min: 1, max: 100 },
  ...tlsSchema("this agent's certificate (OU=agent, CN=node id): its identity"),
  metricsListen: { type: 'string', doc: 'host:port for Prometheus /metrics (empty: off; costs about 11 MB)', env: 'TESSERA_METRICS_LISTEN', default: '' },
  relayListen: { type: 'string', doc: 'address of the step relay other hosts send job steps to (port 0: any free port)', env: 'TESSERA_RELAY_LISTEN', default: '127.0.0.1:7490' },
  relayAdvertise: { type: 'string', doc: 'relay address to give the coordinators (default: the bound address)', env: 'TESSERA_RELAY_ADVERTISE', default: '' },
  taskListen: { type: 'string', doc: 'loopback address of the task-state endpoint instances report to (port 0: any free port)', env: 'TESSERA_TASK_LISTEN', default: '127.0.0.1:7480' },
} satisfies Schema;

export interface AgentConfig {
  coordinators: string[];
  stateDir: string;
  nodeId?: string;
  hostname: string;
  labels: Record<string, string>;
  reportIntervalMs?: number;
  cpuMillis?: number;
  memoryMib?: number;
  logLevel: string;
  portRange: string;
  dockerSocket: string;
  registryAuth: string;
  imageGcHighPercent: number;
  imageGcLowPercent: number;
  imageGcMinAgeMs: number;
  imageGcIntervalMs: number;
  diskPressurePercent: number;
  taskListen: string;
  relayListen: string;
  relayAdvertise: string;
  metricsListen: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecureDev: boolean;
  /** Parsed from portRange. */
  ports: { start: number; end: number };
}

export function compileAgentConfig(layers: Layer[]): AgentConfig {
  const raw = compileLayers<Partial<AgentConfig>>(AGENT_SCHEMA, layers);
  const v: FieldViolation[] = [];
  if (!raw.coordinators!.length) v.push({ field: 'coordinators', message: 'at least one coordinator address is required' });
  raw.coordinators!.forEach((c, i) => {
    if (!isHostPort(c)) v.push({ field: `coordinators[${i}]`, message: `must be host:port, got ${JSON.stringify(c)}` });
  });
  if (raw.nodeId !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(raw.nodeId)) {
    v.push({ field: 'nodeId', message: 'must be 1-128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit' });
  }
  for (const k of Object.keys(raw.labels ?? {})) {
    if (!/^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$/.test(k)) v.push({ field: `labels.${k}`, message: 'label keys are 1-63 characters of letters, digits, ".", "_", "/" or "-"' });
  }
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(raw.portRange ?? '');
  const ports = m ? { start: Number(m[1]), end: Number(m[2]) } : { start: 0, end: 0 };
  if (!m || ports.start < 1024 || ports.end > 65535 || ports.end < ports.start) v.push({ field: 'portRange', message: `must be START-END within 1024-65535, got ${JSON.stringify(raw.portRange)}` });
  v.push(...tlsViolations(raw));
  if (raw.metricsListen && !isHostPort(raw.metricsListen)) v.push({ field: 'metricsListen', message: `must be host:port, got ${JSON.stringify(raw.metricsListen)}` });
  if (!isHostPort(raw.relayListen ?? '')) v.push({ field: 'relayListen', message: `must be host:port, got ${JSON.stringify(raw.relayListen)}` });
  if (raw.relayAdvertise && !isHostPort(raw.relayAdvertise)) v.push({ field: 'relayAdvertise', message: `must be host:port, got ${JSON.stringify(raw.relayAdvertise)}` });
  if (!isHostPort(raw.taskListen ?? '') || !/^(127\.|localhost:|\[::1\])/.test(raw.taskListen ?? '')) v.push({ field: 'taskListen', message: `must be a loopback host:port, got ${JSON.stringify(raw.taskListen)}` });
  if (raw.imageGcLowPercent! > raw.imageGcHighPercent!) v.push({ field: 'imageGcLowPercent', message: `must be at most imageGcHighPercent (${raw.imageGcHighPercent}), got ${raw.imageGcLowPercent}` });
  if (raw.registryAuth) {
    try {
      readAuthFile(raw.registryAuth);
    } catch (err) {
      v.push({ field: 'registryAuth', message: (err as Error).message });
    }
  }
  if (v.length) throw new ConfigError(v);
  return { ...(raw as AgentConfig), hostname: raw.hostname ?? os.hostname(), ports };
}
