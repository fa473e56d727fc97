// The coordinator's Prometheus metrics (served with --metrics-listen).
import type { MetricDef } from '../common/metrics';
import { TLS_EXPIRY_METRIC } from '../common/tls';

export const COORDINATOR_METRICS: MetricDef[] = [
  { name: 'tessera_coordinator_leader', help: '1 while this coordinator leads', type: 'gauge' },
  { name: 'tessera_coordinator_leader_term', help: 'the leader term (campaign key create revision) this coordinator holds, 0 when following', type: 'gauge' },
  { name: 'tessera_coordinator_etcd_up', help: '1 while etcd answers linearizable reads', type: 'gauge' },
  { name: 'tessera_etcd_endpoint_answering', help: '1 while an etcd endpoint answers its probe (with several endpoints: new calls avoid one at 0 while another answers)', type: 'gauge', labels: ['endpoint'] },
  { name: 'tessera_nodes', help: 'nodes by state (on the leader)', type: 'gauge', labels: ['state'] },
  { name: 'tessera_node_conditions', help: 'nodes with a condition that keeps new instances off them, by type (runtime-down, disk-pressure; on the leader)', type: 'gauge', labels: ['type'] },
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
  { name: 'tessera_job_seconds', help: 'job latency from submission to its end, by pipeline and final state', type: 'histogram', labels: ['pipeline', 'state'] },
  { name: 'tessera_job_step_seconds', help: 'time of one step in its component (as the relay measured it), by stage', type: 'histogram', labels: ['pipeline', 'stage'], buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] },
  { name: 'tessera_jobs_total', help: 'jobs ended, by pipeline and final state', type: 'counter', labels: ['pipeline', 'state'] },
  { name: 'tessera_job_retries_total', help: 'steps re-planned onto another instance after a failure', type: 'counter', labels: ['pipeline', 'stage'] },
  { name: 'tessera_jobs_refused_total', help: 'submissions refused, by gRPC code', type: 'counter', labels: ['code'] },
  { name: 'tessera_jobs_forwarded_total', help: 'submissions a follower forwarded to the leader over a SubmitJobs stream of its own (clients that reach the leader directly save a hop)', type: 'counter', labels: [] },
  { name: 'tessera_jobs_in_flight', help: 'accepted jobs not yet ended (running or queued)', type: 'gauge' },
  { name: 'tessera_job_records_bytes', help: 'bytes of finished-job records this leader holds in etcd (bounded by --job-record-budget-mb)', type: 'gauge' },
  { name: 'tessera_job_end_record_retries_total', help: 'end records of answered jobs that etcd did not take, written again', type: 'counter' },
  { name: 'tessera_job_records_expired_early_total', help: 'windows of finished-job records deleted before their retention to stay within the budget', type: 'counter' },
  { name: 'tessera_jobs_queued', help: 'jobs waiting for an instance that is not saturated', type: 'gauge' },
  { ...TLS_EXPIRY_METRIC, labels: [...TLS_EXPIRY_METRIC.labels] },
];
