import { expect } from 'chai';
import { Candidate, choosePath, NoPathError, Stage } from '../../coordinator/jobs/path';

const c = (instanceId: string, kind: string, nodeId: string, latencyMs: number, over: Partial<Candidate> = {}): Candidate => ({ instanceId, kind, nodeId, latencyMs, inFlight: 0, queueDepth: 0, healthy: true, ...over });
const stage = (name: string, ...kinds: (string | [string, number])[]): Stage => ({ name, alternatives: kinds.map((k) => (Array.isArray(k) ? { kind: k[0], costHint: k[1] } : { kind: k })) });
const opts = { hopMs: 2, sameHostHopMs: 0.1 };
const ids = (p: ReturnType<typeof choosePath>) => p.steps.map((s) => s.instanceId);

describe('job path choice', () => {
  it('avoids a slower instance', () => {
    const p = choosePath([stage('a', 'A')], [c('slow', 'A', 'h1', 10), c('fast', 'A', 'h1', 1)], opts);
    expect(ids(p)).to.deep.equal(['fast']);
  });
  it('counts work in flight and queued (peak-EWMA style)', () => {
    const p = choosePath([stage('a', 'A')], [c('busy', 'A', 'h1', 1, { inFlight: 5 }), c('idle', 'A', 'h1', 2)], opts);
    expect(ids(p)).to.deep.equal(['idle']);
  });
  it('counts load as the jobs holding an instance weighted by its share of their paths', () => {
    // Three fast instances each held by 8 four-stage jobs (a quarter of each job's time is spent
    // here: load 2) and one 10x slower, idle. Counted as whole jobs (8 each) the fast ones would
    // cost 6 x 9 = 54 against the slow one's 50, and jobs would go to the slow one.
    const fast = (id: string) => c(id, 'A', 'h1', 6, { inFlight: 8, load: 2 });
    const cands = [fast('f1'), fast('f2'), fast('f3'), c('slow', 'A', 'h1', 50)];
    expect(ids(choosePath([stage('a', 'A')], cands, opts))).to.deep.equal(['f1']);
    for (const x of cands) delete x.load;
    expect(ids(choosePath([stage('a', 'A')], cands, opts))).to.deep.equal(['slow']);
  });
  it('prefers locality when the hop costs more than the difference', () => {
    const p = choosePath([stage('a', 'A'), stage('b', 'B')], [c('a1', 'A', 'h1', 1), c('b-far', 'B', 'h2', 1), c('b-near', 'B', 'h1', 1.5)], opts);
    expect(ids(p)).to.deep.equal(['a1', 'b-near']);
  });
  it('solves the whole path, not stage by stage', () => {
    // Greedy takes a-fast (h1) then pays a hop to b on h2; the path through a-h2 is cheaper.
    const cands = [c('a-fast', 'A', 'h1', 1), c('a-h2', 'A', 'h2', 1.5), c('b', 'B', 'h2', 1), c('c', 'C', 'h2', 1)];
    const p = choosePath([stage('a', 'A'), stage('b', 'B'), stage('c', 'C')], cands, opts);
    expect(ids(p)).to.deep.equal(['a-h2', 'b', 'c']);
    expect(p.totalMs).to.equal(3.7);
  });
  it('chooses between alternative kinds by their cost hint', () => {
    const cands = [c('row', 'executor-row', 'h1', 4), c('vec', 'executor-vector', 'h1', 4)];
    expect(ids(choosePath([stage('exec', 'executor-row', ['executor-vector', 0.25])], cands, opts))).to.deep.equal(['vec']);
    expect(ids(choosePath([stage('exec', ['executor-row', 0.5], ['executor-vector', 2])], cands, opts))).to.deep.equal(['row']);
  });
  it('leaves out unhealthy, saturated and excluded (retried) instances', () => {
    const cands = [c('sick', 'A', 'h1', 0.1, { healthy: false }), c('full', 'A', 'h1', 0.1, { saturated: true }), c('failed-before', 'A', 'h1', 0.1), c('ok', 'A', 'h2', 5)];
    expect(ids(choosePath([stage('a', 'A')], cands, { ...opts, exclude: new Set(['failed-before']) }))).to.deep.equal(['ok']);
  });
  it('follows figures changed in place on the same candidate list (the scheduler reuses it)', () => {
    // The stage's pool is kept while the same list comes back; health, load and latency are read anew.
    const st = [stage('a', 'A')];
    const cands = [c('x', 'A', 'h1', 1), c('y', 'A', 'h1', 2)];
    expect(ids(choosePath(st, cands, opts))).to.deep.equal(['x']);
    cands[0].inFlight = 3;
    expect(ids(choosePath(st, cands, opts))).to.deep.equal(['y']);
    cands[1].healthy = false;
    expect(ids(choosePath(st, cands, opts))).to.deep.equal(['x']);
    cands[0].saturated = true;
    expect(() => choosePath(st, cands, opts)).to.throw(NoPathError, /1 unhealthy, 1 saturated/);
    // A new list (the registry changed) is filtered again.
    expect(ids(choosePath(st, [c('z', 'A', 'h1', 1)], opts))).to.deep.equal(['z']);
  });
  it('names the stage that has no usable instance', () => {
    expect(() => choosePath([stage('parse', 'parser'), stage('plan', 'planner')], [c('p', 'parser', 'h1', 1)], opts)).to.throw(NoPathError, 'stage "plan": no instance of planner is registered');
    expect(() => choosePath([stage('plan', 'planner')], [c('x', 'planner', 'h1', 1, { healthy: false })], opts)).to.throw(NoPathError, /none of 1 instance\(s\) of planner can take work \(1 unhealthy/);
  });
  it('keeps a local option when trimming to the top K', () => {
    const cands = [c('a', 'A', 'h9', 1), ...Array.from({ length: 10 }, (_, i) => c(`b${i}`, 'B', 'h1', 1)), c('b-local', 'B', 'h9', 1.05)];
    const p = choosePath([stage('a', 'A'), stage('b', 'B')], cands, { ...opts, topK: 3 });
    expect(ids(p)).to.deep.equal(['a', 'b-local']);
  });
});
