// The component manager's routing figures: jobs holding an instance count as whole jobs for
// saturation, and by their share of the path for the path cost (the load).
import { expect } from 'chai';
import { ComponentManager } from '../../coordinator/components';
import type { Deployments } from '../../coordinator/deployments';
import type { NodeRegistry } from '../../coordinator/node-registry';
import { createLogger } from '../../common/logger';
import type { Store } from '../../coordinator/store';
import { Keys } from '../../coordinator/keys';

function manager(): ComponentManager {
  // Pure in-memory use: only external instances (their record "written" to a store that keeps nothing).
  const store = { commit: async () => undefined } as unknown as Store;
  const deployments = { runningRecords: () => [], kindOfInstance: () => '' } as unknown as Deployments;
  const registry = { allRecords: () => [], observed: () => [] } as unknown as NodeRegistry;
  return new ComponentManager(store, new Keys('/t/'), deployments, registry, { maxInFlightPerInstance: 4, suspectMs: 1000, decayMs: 1000 }, createLogger('test', 'silent'));
}

describe('component routing figures', () => {
  it('counts a job holding an instance as its share of the path for load, as a whole job for saturation', async () => {
    const cm = manager();
    for (const id of ['a1', 'b1']) await cm.register({ instanceId: id, kind: id[0], version: '1.0.0', operations: [], endpoint: '127.0.0.1:1', ttlMs: 30_000 } as never);
    const job = { ids: ['a1', 'b1'], shares: [0.9, 0.1] };
    for (let i = 0; i < 4; i++) cm.acquire(job);
    const byId = new Map(cm.candidates().map((c) => [c.instanceId, c]));
    expect(byId.get('a1')).to.include({ inFlight: 4, saturated: true });
    expect(byId.get('a1')!.load).to.be.closeTo(3.6, 1e-9);
    expect(byId.get('b1')!.load).to.be.closeTo(0.4, 1e-9);
    // Released as acquired; the last release leaves exactly 0 (no drift from the fractions).
    for (let i = 0; i < 4; i++) cm.release(job);
    for (const c of cm.candidates()) expect(c).to.include({ inFlight: 0, load: 0, saturated: false });
    cm.release(job); // one release too many is ignored
    expect(cm.candidates()[0]).to.include({ inFlight: 0, load: 0 });
  });
});
