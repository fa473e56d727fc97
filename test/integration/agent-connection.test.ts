// What an agent says while it has no leader: the agent's connection (in this process, its log
// captured) against a real coordinator process over loopback gRPC, killed and started again.
// Before session 20 an agent whose coordinators were all gone logged nothing above debug: an
// operator reading its log could not tell it was cut off.
import { expect } from 'chai';
import { CoordinatorConnection } from '../../agent/connection';
import { createLogger } from '../../common/logger';
import { waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';
import { agentHello } from '../helpers/sim-nodes';
import { etcdAndFleet } from '../helpers/suite';

/** Attempts 100-300 ms apart, no jitter. */
const FAST = { initialMs: 100, maxMs: 300, multiplier: 1.5, jitter: 0 };

describe('an agent without a leader says so', function () {
  this.timeout(60_000);
  const s = etcdAndFleet();

  it('warns when the leader\'s stream is lost, then once a period while cut off, and says when it is attached again', async () => {
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'cx' });
    await waitForLeader([c.address]);
    const lines: { level: string; msg: string; afterMs?: number; forS?: number }[] = [];
    const log = createLogger('agent', 'info', {}, (line) => { lines.push(JSON.parse(line)); });
    const conn = new CoordinatorConnection([c.address], () => agentHello('conn-1', { start: 30860, end: 30869 }), log, FAST, undefined, 1_000);
    conn.start();
    let back: Awaited<ReturnType<typeof s.fleet.coordinator>> | undefined;
    try {
      await waitFor('attached', async () => conn.current === 'CONNECTED', 10_000, 50);
      const port = Number(c.address.split(':')[1]);
      await c.kill('SIGKILL');
      await waitFor('a warning for the lost stream', async () => lines.some((l) => l.level === 'warn' && /^lost the stream to the leader/.test(l.msg)), 5_000, 50);
      await waitFor('a warning a period while cut off', async () => lines.filter((l) => l.level === 'warn' && /^not attached to a leader for \d+ s: still trying/.test(l.msg)).length >= 2, 5_000, 50);
      // Each failed attempt (every 100-300 ms) is a debug line, not one of these.
      const periodic = lines.filter((l) => /^not attached to a leader/.test(l.msg));
      expect(periodic.length).to.be.at.most(4);
      back = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'cx', port });
      await waitForLeader([back.address], 15_000);
      await waitFor('attached again', async () => conn.current === 'CONNECTED', 15_000, 50);
      const attached = lines.filter((l) => l.msg === 'attached to leader');
      expect(attached).to.have.length(2);
      expect(attached[1].afterMs).to.be.above(1_000);
    } finally {
      await conn.stop();
      await back?.kill('SIGTERM'); // the next test's coordinator leads alone
    }
  });

  it('takes a graceful stop of the only coordinator for a handover, not a lost leader, even with reports arriving meanwhile', async () => {
    const c = await s.fleet.coordinator({ etcd: s.etcd.endpoints, id: 'cy' });
    expect(await waitForLeader([c.address], 15_000)).to.equal('cy');
    const lines: { level: string; msg: string; reason?: string }[] = [];
    const log = createLogger('agent', 'info', {}, (line) => { lines.push(JSON.parse(line)); });
    const conn = new CoordinatorConnection([c.address], () => agentHello('conn-2', { start: 30870, end: 30879 }), log, FAST, undefined, 60_000);
    conn.start();
    // Reports every 50 ms, as a busy agent's would come: some arrive after the coordinator has
    // resigned and while it waits (up to 1 s) to learn a successor, which it never does here.
    const reports = setInterval(() => conn.send({ report: { seq: 1, instances: [], conditions: [], sentAtMs: Date.now() } }), 50);
    try {
      await waitFor('attached', async () => conn.current === 'CONNECTED', 10_000, 50);
      await c.kill('SIGTERM');
      await waitFor('the stream ended', async () => conn.current !== 'CONNECTED', 5_000, 20);
      await new Promise((r) => setTimeout(r, 300));
      const ended = lines.filter((l) => /^(the leader handed this agent over|lost the stream to the leader)/.test(l.msg));
      // Before, a report in that second met "this coordinator is not the leader; the leader is cy" (itself).
      expect(ended.map((l) => `${l.level} ${l.msg} ${l.reason ?? ''}`)).to.have.length(1);
      expect(ended[0].level, ended[0].reason).to.equal('info');
    } finally {
      clearInterval(reports);
      await conn.stop();
    }
  });
});
