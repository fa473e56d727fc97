import { expect } from 'chai';
import { decodeRecord, encodeRecord, encodeStart, endBatchOf, endedIds, findEnd, JobRecord } from '../../coordinator/jobs/record';

const T = 1_795_000_000_000;
const hop = (i: number, node = 'n1') => ({ stage: `s${i}`, kind: `k${i}`, instanceId: `app-k${i}-abcdefgh${i}`, nodeId: node, costMs: 1.2345 + i });
const step = (i: number, extra: Partial<JobRecord['steps'][number]> = {}) => ({
  stage: `s${i}`, kind: `k${i}`, instanceId: `app-k${i}-abcdefgh${i}`, nodeId: 'n1', attempt: 1, startedAtMs: T + 2 + i, durationMs: 0.5 + i, ok: true, error: '', ...extra,
});
const base = (over: Partial<JobRecord> = {}): JobRecord => ({
  id: 'j-abc-1', pipeline: 'chain4', pipelineVersion: 3, state: 'JOB_STATE_SUCCEEDED', reason: '', failedStage: '', submittedAtMs: T,
  finishedAtMs: T + 9, deadlineMs: T + 30_000, idempotencyKey: '', path: [0, 1, 2, 3].map((i) => hop(i)), steps: [0, 1, 2, 3].map((i) => step(i)),
  plans: 1, payloadBytes: 1, flow: 'chain', durationMs: 9, headers: {}, result: 'eA==', resultHeaders: {}, ...over,
});

describe('job records in etcd', () => {
  it('round-trips a job that ran on its planned path, in well under half the bytes of plain JSON', () => {
    const r = base();
    const text = encodeRecord(r);
    expect(decodeRecord(text)).to.deep.equal({ ...r, path: r.path.map((h) => ({ ...h, costMs: Math.round(Number(h.costMs) * 1000) / 1000 })), payload: undefined });
    expect(text.length).to.be.lessThan(JSON.stringify(r).length / 2);
  });

  it('keeps a failed step on an instance that left the path in full, and one that failed on it with its error', () => {
    const failedElsewhere = step(1, { instanceId: 'app-k1-gone', ok: false, error: 'UNAVAILABLE: gone' });
    const r = base({
      plans: 2, reason: 'resumed from its first stage', headers: { top: '2' }, idempotencyKey: 'key-1', resultHeaders: { rows: '3' },
      steps: [step(0), failedElsewhere, step(1, { attempt: 2 }), step(2), step(3)],
    });
    const back = decodeRecord(encodeRecord(r));
    expect(back.steps).to.deep.equal(r.steps);
    expect([back.reason, back.idempotencyKey, back.headers, back.resultHeaders]).to.deep.equal([r.reason, r.idempotencyKey, r.headers, r.resultHeaders]);

    const failed = base({ state: 'JOB_STATE_FAILED', failedStage: 's3', reason: 'stage s3: bad input', steps: [step(0), step(1), step(2), step(3, { ok: false, error: 'INVALID_ARGUMENT: bad input' })], result: undefined });
    const f = decodeRecord(encodeRecord(failed));
    expect(f.steps[3]).to.deep.equal(failed.steps[3]);
    expect([f.state, f.failedStage, f.result]).to.deep.equal(['JOB_STATE_FAILED', 's3', undefined]);
  });

  it('carries the input of a job that has not ended (a start record), and a record without a finish', () => {
    const r = base({ state: 'JOB_STATE_RUNNING', finishedAtMs: 0, durationMs: 0, steps: [], result: undefined, payload: Buffer.from('hello').toString('base64') });
    const back = decodeRecord(encodeRecord(r));
    expect(back.state).to.equal('JOB_STATE_RUNNING');
    expect(back.finishedAtMs).to.equal(0);
    expect(Buffer.from(back.payload!, 'base64').toString()).to.equal('hello');
  });

  it('keeps who submitted a job, in its start record and its end record, and nothing when no one is named', () => {
    const r = base({ submittedBy: 'ops' });
    expect(decodeRecord(encodeRecord(r)).submittedBy).to.equal('ops');
    expect(decodeRecord(JSON.parse(encodeStart(r, Buffer.from('x')))).submittedBy).to.equal('ops');
    expect(encodeRecord(base())).to.not.include('"by"');
    expect(decodeRecord(encodeRecord(base()))).to.not.have.property('submittedBy');
  });

  it('reads records written as plain JSON before this format', () => {
    const r = base();
    expect(decodeRecord(JSON.stringify(r))).to.deep.equal(r);
  });

  it('finds the shared end record of a job by the start batch its id names', () => {
    expect(endBatchOf('j-mwx1k2-a1b2c3f.1a')).to.equal('a1b2c3-f');
    expect(endBatchOf('j-mwx1k2-a1b2c310.0')).to.equal('a1b2c3-10');
    // Ids from before shared end records name none: their end is under done/<id> alone.
    expect(endBatchOf('j-mwx1k2-a1b2c31a')).to.equal(undefined);
    expect(endBatchOf('not-a-job')).to.equal(undefined);
    const a = base({ id: 'j-mwx1k2-a1b2c3f.0' });
    const b = base({ id: 'j-mwx1k2-a1b2c3f.1', state: 'JOB_STATE_FAILED', reason: 'stage s2: boom', failedStage: 's2' });
    // One value per write of the batch's ends: the first with a, a later one with b.
    const shared = [`[${encodeRecord(a)}]`, `[${encodeRecord(b)}]`];
    expect([...endedIds(shared)]).to.deep.equal([a.id, b.id]);
    expect(endedIds([]).size).to.equal(0);
    expect(findEnd(null, shared, b.id)).to.deep.include({ id: b.id, state: 'JOB_STATE_FAILED', reason: 'stage s2: boom', failedStage: 's2' });
    expect(findEnd(null, shared, 'j-mwx1k2-a1b2c3f.2')).to.equal(undefined);
    // A key of its own wins (a job too large to share, or resumed by another leader).
    expect(findEnd(encodeRecord(base({ id: a.id, reason: 'own' })), shared, a.id)?.reason).to.equal('own');
  });
});
