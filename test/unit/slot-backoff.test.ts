import { expect } from 'chai';
import { slotBackoffMs, slotFailuresOf } from '../../coordinator/deployments';
import type { InstanceRecord } from '../../coordinator/apps/records';

const rec = (id: string, slot: number, over: Partial<InstanceRecord> = {}): InstanceRecord => ({
  id, app: 'a', component: 'c', version: 1, specHash: 'h', slot, nodeId: 'n1', ports: {}, resources: { cpuMillis: 100, memoryMib: 64 }, createdAtMs: 0, desired: 'run', ...over,
});
const failure = { exitCode: 3, oomKilled: false, message: 'exited with 3' };

describe('backoff of failing slots', () => {
  it('doubles from the restart delay and stops at a minute', () => {
    expect([1, 2, 3, 4].map((n) => slotBackoffMs(n, 1_000))).to.deep.equal([1_000, 2_000, 4_000, 8_000]);
    expect(slotBackoffMs(20, 1_000)).to.equal(60_000);
  });
  it('is rebuilt from the tombstones of failed instances (a new leader keeps a crash loop\'s delay)', () => {
    const f = slotFailuresOf([
      rec('i1', 0, { desired: 'stop', stoppedAtMs: 100, failure }),
      rec('i2', 0, { desired: 'stop', stoppedAtMs: 300, failure }),
      rec('i3', 0, { desired: 'stop', stoppedAtMs: 200, failure }),
      rec('i4', 1, { desired: 'stop', stoppedAtMs: 400, failure }),
      // Stopped without a failure (scaled down, replaced, lost with its node) or running: not counted.
      rec('i5', 2, { desired: 'stop', stoppedAtMs: 500 }),
      rec('i6', 3),
      rec('i7', 0, { component: 'other', desired: 'stop', stoppedAtMs: 600, failure }),
    ]);
    expect([...f.entries()].sort()).to.deep.equal([
      ['a/c/0', { count: 3, lastAtMs: 300, nodes: ['n1'] }],
      ['a/c/1', { count: 1, lastAtMs: 400, nodes: ['n1'] }],
      ['a/other/0', { count: 1, lastAtMs: 600, nodes: ['n1'] }],
    ]);
  });
  it('remembers the nodes a slot failed on, the latest last, at most five', () => {
    const f = slotFailuresOf(['n1', 'n2', 'n1', 'n3', 'n4', 'n5', 'n6'].map((node, i) => rec(`i${i}`, 0, { nodeId: node, desired: 'stop', stoppedAtMs: 100 + i, failure })));
    expect(f.get('a/c/0')).to.deep.equal({ count: 7, lastAtMs: 106, nodes: ['n1', 'n3', 'n4', 'n5', 'n6'] });
  });
});
