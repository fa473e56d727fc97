// A keyed submission whose SubmitJobs stream breaks before an answer (the leader died) is sent
// again, and its timeout counts from its first send: a leader that never got it must not give it
// a whole new timeout. The coordinator is a real gRPC server on loopback whose first stream takes
// the submission and then fails with UNAVAILABLE, unanswered (as a stream cut by a leader's
// death ends); the next stream answers, and the test reads the timeout_ms each stream was sent.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { AdminClient, resentRequest } from '../../common/admin-client';
import { tesseraProto } from '../../common/proto';

type Submissions = { submissions: { callId: string; request: { pipeline: string; payload: Buffer; timeoutMs: string; idempotencyKey: string; resentAfterMs: string } }[] };

describe('keyed submissions sent again after their stream broke', () => {
  let server: grpc.Server;
  let address = '';
  /** [stream number, timeout_ms, key, ms since the test's first send, resent_after_ms] of each submission received. */
  const got: [number, number, string, number, number][] = [];
  const keysSeen = new Set<string>();
  let streams = 0;
  let t0 = 0;
  const BREAK_AFTER_MS = 1_500;

  before(async () => {
    server = new grpc.Server();
    server.addService(tesseraProto().Admin.service, {
      SubmitJobs: (call: grpc.ServerDuplexStream<Submissions, unknown>) => {
        const n = ++streams;
        call.on('data', (batch: Submissions) => {
          let fresh = false;
          for (const s of batch.submissions) {
            got.push([n, Number(s.request.timeoutMs), s.request.idempotencyKey, Date.now() - t0, Number(s.request.resentAfterMs)]);
            if (!keysSeen.has(s.request.idempotencyKey)) fresh = keysSeen.add(s.request.idempotencyKey) !== undefined;
          }
          if (fresh) {
            // Took it, then went away before answering.
            setTimeout(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'the leader went away' }), BREAK_AFTER_MS);
            return;
          }
          call.write({ outcomes: batch.submissions.map((s) => ({ callId: s.callId, job: { id: 'j-1', pipeline: s.request.pipeline, state: 'JOB_STATE_SUCCEEDED', result: s.request.payload } })) });
        });
        call.on('end', () => call.end());
      },
    } as grpc.UntypedServiceImplementation);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    address = `127.0.0.1:${port}`;
  });
  after(() => server.forceShutdown());

  it('sends it again with the time left of its timeout, not a whole one', async () => {
    const admin = new AdminClient([address]);
    const jobs = admin.jobStream();
    try {
      t0 = Date.now();
      const job = await jobs.submit({ pipeline: 'p', payload: Buffer.from('x'), timeoutMs: 10_000, idempotencyKey: 'k-1', wait: true });
      expect([job.state, job.result.toString()]).to.deep.equal(['JOB_STATE_SUCCEEDED', 'x']);
      expect(got.length, JSON.stringify(got)).to.be.at.least(2);
      const [first, last] = [got[0], got[got.length - 1]];
      expect(first.slice(0, 3)).to.deep.equal([1, 10_000, 'k-1']);
      expect(last[0], 'a later stream').to.be.above(1);
      expect(last[2], 'the same key').to.equal('k-1');
      // What was left when it was sent again: at most 10 s less the time since the first send.
      expect(last[1], 'the time left').to.be.at.most(10_000 - BREAK_AFTER_MS).and.at.most(10_000 - last[3] + 50).and.above(0);
    } finally {
      jobs.close();
      admin.close();
    }
  });

  it('sends one with neither timeout nor deadline again saying how long since its first send (the leader takes it off the default)', async () => {
    const admin = new AdminClient([address]);
    const jobs = admin.jobStream();
    try {
      got.length = 0;
      t0 = Date.now();
      const job = await jobs.submit({ pipeline: 'p', payload: Buffer.from('y'), idempotencyKey: 'k-2', wait: true });
      expect(job.state).to.equal('JOB_STATE_SUCCEEDED');
      const [first, last] = [got[0], got[got.length - 1]];
      expect([first[0] < last[0], first[2], last[2]]).to.deep.equal([true, 'k-2', 'k-2']);
      expect(first[4], 'the first send').to.equal(0);
      expect(last[4], 'the time since the first send').to.be.at.least(BREAK_AFTER_MS).and.at.most(last[3] + 50);
    } finally {
      jobs.close();
      admin.close();
    }
  });

  it('a timeout spent while it was away becomes 1 ms (its deadline passed); a deadline stands; a request with neither says how long since its first send', () => {
    expect(resentRequest({ timeoutMs: 5_000, pipeline: 'p' }, 1_000, 3_000)).to.deep.equal({ timeoutMs: 3_000, pipeline: 'p' });
    expect(resentRequest({ timeoutMs: 5_000 }, 1_000, 9_000)).to.deep.equal({ timeoutMs: 1 });
    const absolute = { pipeline: 'p', timeoutMs: 0, deadlineMs: 50_000 };
    expect(resentRequest(absolute, 1_000, 9_000)).to.equal(absolute);
    expect(resentRequest({ pipeline: 'p', timeoutMs: 0 }, 1_000, 9_000)).to.deep.equal({ pipeline: 'p', timeoutMs: 0, resentAfterMs: 8_000 });
  });
});
