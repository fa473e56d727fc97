// The coordinator's Prometheus metrics (served with --metrics-listen).
import type { MetricDef } from '../common/metrics';

export const COORDINATOR_METRICS: MetricDef[] = [
  { name: 'tessera_coordinator_leader', help: '1 while this coordinator leads', type: 'gauge' },
  { name: 'tessera_coordinator_leader_term', help: 'the leader term (campaign key create revision) this coordinator holds, 0 when following', type: 'gauge' },
  { name: 'tessera_coordinator_etcd_up', help: '1 while etcd answers linearizable reads', type: 'gauge' },
  { name: 'tessera_nodes', help: 'nodes by state (on the leader)', type: 'gauge', labels: ['state'] },
  { name: 'tessera_instances', help: 'desired instances by observed state (on the leader)', type: 'gauge', labels: ['state'] },
  { name: 'tessera_instructions_sent_total', help: 'deployment instructions sent to agents', type: 'counter', labels: ['action'] },
  { name: 'tessera_instructions_pending', help: 'instructions sent and not yet reflected in what agents report', type: 'gauge' },
  { name: 'tessera_placements_total', help: 'instances placed', type: 'counter' },
  { name: 'tessera_placement_failures_total', help: 'placement attempts that found no node', type: 'counter' },
  { name: 'tessera_reconcile_seconds', help: 'time of one reconcile pass', type: 'histogram' },
  { name: 'tessera_fenced_write_seconds', help: 'time of one fenced etcd transaction', type: 'histogram' },
  { name: 'tessera_fenced_writes_refused_total', help: 'leader writes refused by the fence', type: 'counter' },
  { name: 'tessera_scaling_decisions_total', help: 'scaling policy decisions recorded', type: 'counter', labels: ['action'] },
  { name: 'tessera_admin_denied_total', help: 'Admin calls refused for authentication or permission', type: 'counter', labels: ['code'] },
];
