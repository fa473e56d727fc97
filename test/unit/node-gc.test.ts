// Node removal and node garbage collection in the leader's registry (coordinator/node-registry.ts)
// against a stand-in for etcd that records each transaction: which nodes go, in transactions
// etcd accepts (at most 128 operations), with their events; the real thing is in
// test/integration/node-remove.test.ts.
import { expect } from 'chai';
import { NodeRecord, NodeRegistry } from '../../coordinator/node-registry';
import { Keys } from '../../coordinator/keys';
import type { EventDraft, Op, Store } from '../../coordinator/store';
import { createLogger } from '../../common/logger';

const NOW = 1_000_000_000_000;
const DAY = 86_400_000;

function node(id: string, state: NodeRecord['state'], changedAgoMs: number): NodeRecord {
  return {
    id, hostname: `h-${id}`, labels: {}, capacity: { cpuMillis: 1000, memoryMib: 1024, diskMib: 0 }, agentVersion: 'x', endpoint: '',
    state, stateReason: '', stateChangedAtMs: NOW - changedAgoMs, drain: false, drainReason: '', registeredAtMs: 0, lastSeenMs: NOW - changedAgoMs,
    connectedTo: '', instanceCount: 0,
  };
}

async function registry(nodes: NodeRecord[]): Promise<{ reg: NodeRegistry; commits: { ops: Op[]; events: EventDraft[] }[] }> {
  const commits: { ops: Op[]; events: EventDraft[] }[] = [];
  const keys = new Keys('/t/');
  const values = Object.fromEntries(nodes.map((n) => [keys.node(n.id), JSON.stringify(n)]));
  const store = {
    client: { getAll: () => ({ prefix: () => ({ strings: async () => values }) }) },
    commit: async (ops: Op[], events: EventDraft[] = []) => { commits.push({ ops, events }); },
  } as unknown as Store;
  const reg = new NodeRegistry(store, keys, { heartbeatTimeoutMs: 10_000, failoverGraceMs: 0, coordinatorId: 'c1' }, createLogger('test', 'silent'));
  await reg.load(NOW);
  return { reg, commits };
}

describe('node removal and node GC (registry)', () => {
  it('collects only nodes DOWN past the threshold, at most 50 a transaction', async () => {
    const old = Array.from({ length: 120 }, (_, i) => node(`old-${String(i).padStart(3, '0')}`, 'DOWN', DAY + 1));
    const { reg, commits } = await registry([...old, node('recent', 'DOWN', DAY - 1), node('ready', 'READY', 2 * DAY), node('draining', 'DRAINING', 2 * DAY)]);
    expect(await reg.collect(DAY, NOW)).to.equal(50);
    expect(await reg.collect(DAY, NOW)).to.equal(50);
    expect(await reg.collect(DAY, NOW)).to.equal(20);
    expect(await reg.collect(DAY, NOW)).to.equal(0);
    expect(commits.map((c) => c.ops.length + c.events.length)).to.deep.equal([100, 100, 40]);
    expect(reg.list().map((n) => n.id)).to.deep.equal(['draining', 'ready', 'recent']);
    const e = commits[0].events[0];
    expect([e.kind, e.subject]).to.deep.equal(['node.removed', 'old-000']);
    expect(e.message).to.equal('node old-000 (h-old-000) removed: DOWN for more than 86400 s (node garbage collection)');
    expect(commits[0].ops[0]).to.deep.equal({ type: 'delete', key: new Keys('/t/').node('old-000') });
  });

  it('is off at a threshold of 0', async () => {
    const { reg, commits } = await registry([node('gone', 'DOWN', 365 * DAY)]);
    expect(await reg.collect(0, NOW)).to.equal(0);
    expect(commits).to.deep.equal([]);
    expect(reg.known('gone')).to.equal(true);
  });

  it('removes a DOWN node on request and refuses any other, storing nothing', async () => {
    const { reg, commits } = await registry([node('down', 'DOWN', 1000), node('up', 'READY', 1000), node('drn', 'DRAINING', 1000)]);
    for (const [id, state] of [['up', 'READY'], ['drn', 'DRAINING']]) {
      const err = await reg.remove(id, '').catch((x: Error) => x);
      expect((err as Error).message).to.equal(`node ${id} is ${state}: only a DOWN node can be removed (drain it and stop its agent first)`);
    }
    expect(((await reg.remove('nope', '').catch((x: Error) => x)) as Error).constructor.name).to.equal('NotFoundError');
    expect(commits).to.have.length(0);
    expect((await reg.remove('down', 'decommissioned')).id).to.equal('down');
    expect(commits[0].events[0].message).to.equal('node down (h-down) removed: decommissioned');
    expect(reg.known('down')).to.equal(false);
    expect(reg.list().map((n) => n.id)).to.deep.equal(['drn', 'up']);
  });
});
