// The agent's Prometheus metrics (served with --metrics-listen; off by default: see common/metrics.ts).
import type { MetricDef } from '../common/metrics';
import { TLS_EXPIRY_METRIC } from '../common/tls';

export const AGENT_METRICS: MetricDef[] = [
  { name: 'tessera_clock_offset_seconds', help: 'the system clock minus the clock timers and health checks run on: non-zero after a step of the system clock, until slewed away (at 5% of real time)', type: 'gauge' },
  { name: 'tessera_agent_connected', help: '1 while attached to the leader', type: 'gauge' },
  { name: 'tessera_agent_host_cpu_percent', help: 'host CPU use, percent of all cores', type: 'gauge' },
  { name: 'tessera_agent_host_memory_used_mib', help: 'host memory in use', type: 'gauge' },
  { name: 'tessera_agent_host_memory_total_mib', help: 'host memory', type: 'gauge' },
  { name: 'tessera_agent_host_disk_used_mib', help: 'state dir filesystem in use', type: 'gauge' },
  { name: 'tessera_agent_host_load1', help: 'load average over 1 minute', type: 'gauge' },
  { name: 'tessera_agent_containers', help: 'instances on this node by state', type: 'gauge', labels: ['state'] },
  { name: 'tessera_agent_health_check_failures_total', help: 'failed health checks', type: 'counter' },
  { name: 'tessera_agent_images_removed_total', help: 'unused images removed by image garbage collection', type: 'counter' },
  { name: 'tessera_agent_relays_refused_total', help: 'job relays refused for their caller: a certificate that may not relay (certificate), or an admin certificate without a valid lease ticket (ticket: a key this agent was not given, say)', type: 'counter', labels: ['reason'] },
  { name: 'tessera_agent_restarts_total', help: 'container restarts by the restart policy', type: 'counter' },
  { ...TLS_EXPIRY_METRIC, labels: [...TLS_EXPIRY_METRIC.labels] },
];
