// /metrics on a coordinator and an agent, scraped and parsed as Prometheus would.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { AdminClient } from '../../common/admin-client';
import { parseMetrics } from '../../common/metrics';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet } from '../helpers/processes';
import { pastEvents, waitForLeader } from '../helpers/cluster';
import { freePort, waitFor } from '../helpers/ports';
import { removeContainers } from '../helpers/docker';
import { laneRange } from '../helpers/lane';
import { scrapeRaw } from '../helpers/scrape';

async function scrape(port: number): Promise<Map<string, number>> {
  const res = await scrapeRaw(`http://127.0.0.1:${port}/metrics`);
  expect(res.type).to.match(/^text\/plain/);
  return parseMetrics(res.body);
}

describe('Prometheus metrics', function () {
  this.timeout(90_000);
  const node = `m${randomBytes(3).toString('hex')}`;
  let etcd: EtcdCluster;
  let fleet: Fleet;

  after(async () => {
    await fleet?.stop();
    await etcd?.stop();
    removeContainers(`tessera.node=${node}`);
  });

  it('exposes the leader, nodes, placements, instructions, job latencies and host figures', async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    const [cm, am] = [await freePort(), await freePort()];
    const c = await fleet.coordinator({ etcd: etcd.endpoints, extra: ['--metrics-listen', `127.0.0.1:${cm}`] });
    await waitForLeader([c.address]);
    fleet.agent({ coordinators: [c.address], nodeId: node, extra: ['--metrics-listen', `127.0.0.1:${am}`, '--port-range', laneRange('30000-30099')] });
    const admin = new AdminClient([c.address]);
    try {
      await waitFor('node READY', async () => (await admin.listNodes()).nodes.length === 1, 20_000);
      await admin.applyApp({ name: 'm', components: [{
        name: 'x', kind: 'm-echo', image: 'tessera/components:local', command: ['node', '/app/echo.js'], env: { KIND: 'm-echo' }, ports: [{ name: 'grpc' }],
        health: { type: 'tcp', port: 'grpc', intervalMs: 500, timeoutMs: 400 }, resources: { cpuMillis: 10, memoryMib: 64 }, instances: 1, stopGraceMs: 100,
      }] });
      await waitFor('running', async () => (await admin.listInstances('m')).instances.some((i) => i.state === 'INSTANCE_STATE_RUNNING'), 20_000, 200);
      // The RUN is no longer pending once the agent reports the instance (within a dispatch
      // round or two, not the 5 s resend window after it was sent).
      const t0 = Date.now();
      await waitFor('no instruction pending', async () => (await scrape(cm)).get('tessera_instructions_pending') === 0, 5_000, 100);
      expect(Date.now() - t0, 'pending for the resend window').to.be.below(2_500);
      await admin.applyPipeline({ name: 'mp', stages: [{ name: 'one', kind: 'm-echo' }, { name: 'two', kind: 'm-echo' }] });
      await waitFor('registered', async () => (await admin.listComponents('m-echo')).instances.length === 1, 20_000, 200);
      for (let i = 0; i < 3; i++) expect((await admin.submitJob({ pipeline: 'mp', payload: Buffer.from('x'), wait: true })).state).to.equal('JOB_STATE_SUCCEEDED');
      const cmx = await waitFor('coordinator metrics', async () => {
        const m = await scrape(cm);
        return m.get('tessera_instances{state="RUNNING"}') === 1 ? m : undefined;
      }, 10_000, 200);
      expect(cmx.get('tessera_coordinator_leader')).to.equal(1);
      expect(cmx.get('tessera_coordinator_leader_term')).to.be.greaterThan(0);
      expect(cmx.get('tessera_coordinator_etcd_up')).to.equal(1);
      expect(cmx.get('tessera_nodes{state="READY"}')).to.equal(1);
      expect(cmx.get('tessera_placements_total')).to.equal(1);
      expect(cmx.get('tessera_instructions_sent_total{action="RUN"}')).to.be.at.least(1);
      expect(cmx.get('tessera_fenced_write_seconds_count')).to.be.greaterThan(0);
      // Job latencies, per pipeline and final state, and step latencies per stage.
      expect(cmx.get('tessera_job_seconds_count{pipeline="mp",state="SUCCEEDED"}')).to.equal(3);
      expect(cmx.get('tessera_jobs_total{pipeline="mp",state="SUCCEEDED"}')).to.equal(3);
      expect(cmx.get('tessera_job_step_seconds_count{pipeline="mp",stage="two"}')).to.equal(3);
      expect(cmx.get('tessera_jobs_in_flight')).to.equal(0);
      const amx = await waitFor('agent metrics', async () => {
        const m = await scrape(am);
        return m.get('tessera_agent_containers{state="RUNNING"}') === 1 ? m : undefined;
      }, 10_000, 200);
      expect(amx.get('tessera_agent_connected')).to.equal(1);
      expect(amx.get('tessera_agent_host_memory_total_mib')).to.be.greaterThan(0);
      expect(amx.has('tessera_agent_restarts_total')).to.equal(true);
      // Deregistered with its app's deletion, with no job or listing to rebuild the routing table.
      const id = (await admin.listInstances('m')).instances[0].id;
      await admin.deleteApp('m');
      const gone = await waitFor('component.deregistered', async () => (await pastEvents(admin, ['component.deregistered'])).find((e) => e.subject === id), 5_000, 200);
      // Saying why (before session 32: "stopped, unhealthy or its node is down", whichever it was).
      expect(gone.message).to.match(new RegExp(`^\\S+ instance ${id} on \\S+ deregistered: it stops(: app deleted)?$`));
    } finally {
      admin.close();
    }
  });
});
