// Three coordinators and two agents as real processes against a real etcd.
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import type { Event__Output } from '../../common/generated/tessera/v1/Event';
import { EtcdCluster } from '../helpers/etcd';
import { Fleet, Proc } from '../helpers/processes';
import { statusOf, waitForLeader } from '../helpers/cluster';
import { waitFor } from '../helpers/ports';

type Coord = Proc & { address: string; id: string };

describe('cluster core: 3 coordinators, 2 agents, real etcd', function () {
  this.timeout(120_000);
  let etcd: EtcdCluster;
  let fleet: Fleet;
  let coords: Coord[];
  let agents: (Proc & { nodeId: string })[];

  const addrs = () => coords.filter((c) => c.running).map((c) => c.address);
  const admin = (address: string) => new AdminClient([address], { timeoutMs: 3_000 });
  const byId = (id: string) => coords.find((c) => c.id === id)!;

  async function nodesOn(address: string) {
    const c = admin(address);
    try {
      return (await c.listNodes()).nodes;
    } finally {
      c.close();
    }
  }

  async function allAttachedTo(leaderId: string): Promise<boolean> {
    const nodes = await nodesOn(byId(leaderId).address);
    return nodes.length === agents.length && nodes.every((n) => n.connectedTo === leaderId && n.state === 'NODE_STATE_READY');
  }

  /**
   * Collects events for the whole test from whichever coordinator is up, re-opening the stream
   * (with some history, de-duplicated by id) when the coordinator serving it is killed.
   */
  const events: Event__Output[] = [];
  const seen = new Set<string>();
  let eventStream: grpc.ClientReadableStream<Event__Output> | undefined;
  let eventClient: AdminClient | undefined;
  let closing = false;
  function openEvents(history: number): void {
    if (closing) return;
    eventClient?.close();
    const live = coords.filter((c) => c.running);
    if (!live.length) {
      setTimeout(() => openEvents(200), 300);
      return;
    }
    eventClient = admin(live[Math.floor(Math.random() * live.length)].address);
    const stream = eventClient.watchEvents({ history, follow: true });
    eventStream = stream;
    stream.on('data', (e: Event__Output) => {
      if (!seen.has(e.id)) {
        seen.add(e.id);
        events.push(e);
      }
    });
    let reopened = false;
    const again = () => {
      if (reopened || eventStream !== stream) return;
      reopened = true;
      setTimeout(() => openEvents(200), 300);
    };
    stream.on('error', again);
    stream.on('end', again);
  }

  before(async () => {
    etcd = await EtcdCluster.start(1);
    fleet = new Fleet();
    coords = [];
    for (let i = 0; i < 3; i++) coords.push(await fleet.coordinator({ etcd: etcd.endpoints }));
    const leader = await waitForLeader(addrs());
    agents = [
      fleet.agent({ coordinators: addrs() }),
      fleet.agent({ coordinators: [...addrs()].reverse() }),
    ];
    await waitFor('both agents attached to the leader', () => allAttachedTo(leader), 20_000);
    openEvents(-1);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(fleet.dump());
  });

  after(async () => {
    closing = true;
    eventStream?.cancel();
    eventClient?.close();
    await fleet?.stop();
    await etcd?.stop();
  });

  it('has exactly one leader, and every coordinator agrees on it', async () => {
    const statuses = await Promise.all(addrs().map(statusOf));
    const leaders = new Set(statuses.map((s) => s!.leader!.id));
    expect(leaders.size).to.equal(1);
    const leaderId = [...leaders][0];
    expect(coords.map((c) => c.id)).to.include(leaderId);
    for (const s of statuses) {
      expect(s!.coordinators.map((c) => c.id).sort()).to.deep.equal(coords.map((c) => c.id).sort());
      expect(s!.coordinators.filter((c) => c.leader)).to.have.length(1);
      expect(s!.etcd.every((m) => m.healthy)).to.equal(true);
    }
  });

  it('shows every node READY through Admin on every coordinator', async () => {
    await waitFor('followers to see both nodes READY', async () => {
      for (const a of addrs()) {
        const nodes = await nodesOn(a);
        if (nodes.length !== 2 || !nodes.every((n) => n.state === 'NODE_STATE_READY')) return false;
      }
      return true;
    }, 10_000);
    const nodes = await nodesOn(coords[2].address);
    expect(nodes.map((n) => n.id).sort()).to.deep.equal(agents.map((a) => a.nodeId).sort());
    expect(nodes[0].capacity!.cpuMillis).to.be.greaterThan(0);
    await waitFor('usage figures on a follower', async () => (await nodesOn(coords[2].address)).every((n) => (n.usage?.memoryTotalMib ?? 0) > 0), 10_000);
  });

  it('answers NOT_FOUND for an unknown node and INVALID_ARGUMENT for a malformed id, on a follower too', async () => {
    const leader = await waitForLeader(addrs());
    const follower = coords.find((c) => c.id !== leader)!;
    const c = admin(follower.address);
    try {
      await c.getNode('no-such-node').then(() => expect.fail('expected NOT_FOUND'), (e: grpc.ServiceError) => {
        expect(e.code).to.equal(grpc.status.NOT_FOUND);
        expect(e.details).to.contain('no-such-node');
      });
      await c.drainNode({ nodeId: 'no-such-node' }).then(() => expect.fail('expected NOT_FOUND'), (e: grpc.ServiceError) => expect(e.code).to.equal(grpc.status.NOT_FOUND));
      await c.drainNode({ nodeId: '../etc' }).then(() => expect.fail('expected INVALID_ARGUMENT'), (e: grpc.ServiceError) => {
        expect(e.code).to.equal(grpc.status.INVALID_ARGUMENT);
        expect(e.details).to.match(/^nodeId: /);
      });
      // An enum number this version does not know (as a newer client might send).
      await c.listNodes({ state: 99 as never }).then(() => expect.fail('expected INVALID_ARGUMENT'), (e: grpc.ServiceError) => {
        expect(e.code).to.equal(grpc.status.INVALID_ARGUMENT);
        expect(e.details).to.match(/^state: /);
      });
    } finally {
      c.close();
    }
  });

  it('drains and undrains a node through a follower, which forwards the write to the leader', async () => {
    const leader = await waitForLeader(addrs());
    const follower = coords.find((c) => c.id !== leader)!;
    const c = admin(follower.address);
    try {
      const drained = await c.drainNode({ nodeId: agents[1].nodeId, reason: 'kernel upgrade' });
      expect(drained.state).to.equal('NODE_STATE_DRAINING');
      expect(drained.drain).to.equal(true);
      await waitFor('the leader to see the node DRAINING', async () => (await nodesOn(byId(leader).address)).find((n) => n.id === agents[1].nodeId)?.state === 'NODE_STATE_DRAINING');
      const back = await c.drainNode({ nodeId: agents[1].nodeId, undo: true });
      expect(back.state).to.equal('NODE_STATE_READY');
    } finally {
      c.close();
    }
    await waitFor('drain events on the stream', () => events.some((e) => e.kind === 'node.drain' && e.subject === agents[1].nodeId) && events.some((e) => e.kind === 'node.eligible'), 5_000);
  });

  it('survives SIGKILL of the leader: new leader, agents re-attached, no node marked DOWN', async () => {
    const oldLeader = await waitForLeader(addrs());
    const before = (await nodesOn(coords.find((c) => c.id !== oldLeader)!.address)).map((n) => n.id).sort();
    const eventsBefore = events.length;
    const t0 = Date.now();
    await byId(oldLeader).kill('SIGKILL');
    const newLeader = await waitForLeader(addrs(), 10_000, oldLeader);
    const electedMs = Date.now() - t0;
    const killedAddress = byId(oldLeader).address;
    expect(electedMs).to.be.lessThan(8_000);
    await waitFor('agents re-attached to the new leader', () => allAttachedTo(newLeader), 15_000);
    // Each agent says it lost its leader (a warning), then that it is attached again.
    for (const a of agents) {
      const log = fs.readFileSync(a.logFile, 'utf8');
      expect(log, a.nodeId).to.match(new RegExp(`"level":"warn".*"address":"${killedAddress}".*"msg":"lost the stream to the leader`));
    }
    // Let the grace period pass: a node that had not come back would be DOWN by now.
    await new Promise((r) => setTimeout(r, 4_500));
    const after = await nodesOn(byId(newLeader).address);
    expect(after.map((n) => n.id).sort()).to.deep.equal(before);
    expect(after.every((n) => n.state === 'NODE_STATE_READY')).to.equal(true);
    await waitFor('the new leader\'s election event', () => events.slice(eventsBefore).some((e) => e.kind === 'leader.elected' && e.subject === newLeader), 5_000);
    const during = events.slice(eventsBefore);
    expect(during.filter((e) => e.kind === 'node.down'), JSON.stringify(during)).to.have.length(0);
    expect(during.some((e) => e.kind === 'leader.elected' && e.subject === newLeader)).to.equal(true);
    // The dead coordinator's candidacy expires with its lease.
    await waitFor('the dead coordinator to leave the member list', async () => !(await statusOf(byId(newLeader).address))!.coordinators.some((c) => c.id === oldLeader), 10_000);
    // Bring it back as a follower for the next tests.
    const revived = await fleet.coordinator({ etcd: etcd.endpoints, id: oldLeader });
    coords[coords.findIndex((c) => c.id === oldLeader)] = revived;
    await waitFor('the revived coordinator to follow', async () => (await statusOf(revived.address))?.leader?.id === newLeader, 10_000);
  });

  it('hands over at once on a graceful stop of the leader', async () => {
    const oldLeader = await waitForLeader(addrs());
    const others = coords.filter((c) => c.id !== oldLeader);
    const t0 = Date.now();
    const exited = byId(oldLeader).kill('SIGTERM');
    const newLeader = await waitForLeader(others.map((c) => c.address), 5_000, oldLeader);
    const ms = Date.now() - t0;
    // Resigning revokes the lease, so the successor does not wait for a TTL (2 s here).
    expect(ms, `handover took ${ms} ms`).to.be.lessThan(1_000);
    await exited;
    await waitFor('agents re-attached after the graceful handover', () => allAttachedTo(newLeader), 10_000);
    // A handover is routine in the agents' logs (an info line), not the warning a lost stream is.
    for (const a of agents) {
      const mine = fs.readFileSync(a.logFile, 'utf8').split('\n').filter((l) => l.includes(`"address":"${byId(oldLeader).address}"`));
      expect(mine.some((l) => l.includes('"level":"info"') && l.includes('the leader handed this agent over')), `${a.nodeId}: ${mine.join('\n')}`).to.equal(true);
    }
    const revived = await fleet.coordinator({ etcd: etcd.endpoints, id: oldLeader });
    coords[coords.findIndex((c) => c.id === oldLeader)] = revived;
    await waitFor('the revived coordinator to follow', async () => (await statusOf(revived.address))?.leader?.id === newLeader, 10_000);
  });

  it('marks an agent that stops reporting DOWN after the timeout, and READY when it returns', async () => {
    const leader = await waitForLeader(addrs());
    const agent = agents[0];
    const from = events.length;
    agent.pause(); // SIGSTOP: the socket stays open, the reports stop
    try {
      const t0 = Date.now();
      await waitFor('n1 DOWN', async () => (await nodesOn(byId(leader).address)).find((n) => n.id === agent.nodeId)?.state === 'NODE_STATE_DOWN', 10_000);
      const downMs = Date.now() - t0;
      expect(downMs, 'DOWN only after the 3 s heartbeat timeout').to.be.greaterThan(2_000);
    } finally {
      agent.resume();
    }
    await waitFor('n1 READY again', async () => (await nodesOn(byId(leader).address)).find((n) => n.id === agent.nodeId)?.state === 'NODE_STATE_READY', 10_000);
    await waitFor('down and ready events', () => {
      const mine = events.slice(from).filter((e) => e.subject === agent.nodeId).map((e) => e.kind);
      return mine.includes('node.down') && mine.includes('node.ready');
    }, 5_000);
    const down = events.slice(from).find((e) => e.kind === 'node.down')!;
    expect(down.fields.reason).to.match(/no report for/);
  });

  it('keeps the agent running while no coordinator is reachable, and re-attaches when they return', async () => {
    const old = coords.map((c) => ({ id: c.id, port: Number(c.address.split(':')[1]) }));
    await Promise.all(coords.map((c) => c.kill('SIGKILL')));
    await new Promise((r) => setTimeout(r, 2_000));
    expect(agents.every((a) => a.running), 'agents keep running with no coordinator').to.equal(true);
    const back: Coord[] = [];
    for (const o of old) back.push(await fleet.coordinator({ etcd: etcd.endpoints, id: o.id, port: o.port }));
    coords = back;
    const leader = await waitForLeader(addrs(), 15_000);
    await waitFor('agents re-attached to the restarted cluster', () => allAttachedTo(leader), 20_000);
  });
});
