// A DirectJobs client against coordinators from before DirectJobs (a rolling upgrade under way):
// they answer the stream with UNIMPLEMENTED, and the client submits through SubmitJobs instead,
// for a while. The coordinator here is a real gRPC server on loopback serving the Admin service
// without DirectJobs (grpc-js answers a method with no handler with UNIMPLEMENTED) and a
// SubmitJobs stream that answers each submission with a succeeded job.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../common/admin-client';
import { tesseraProto } from '../../common/proto';

type Submissions = { submissions: { callId: string; request: { pipeline: string; payload: Buffer } }[] };

describe('direct jobs against coordinators without DirectJobs', () => {
  let server: grpc.Server;
  let address = '';
  const calls = { submitJobs: 0 };

  before(async () => {
    server = new grpc.Server();
    const service = tesseraProto().Admin.service;
    server.addService(service, {
      SubmitJobs: (call: grpc.ServerDuplexStream<Submissions, unknown>) => {
        call.on('data', (batch: Submissions) => {
          call.write({
            outcomes: batch.submissions.map((s) => {
              calls.submitJobs++;
              return { callId: s.callId, job: { id: `old-${calls.submitJobs}`, pipeline: s.request.pipeline, state: 'JOB_STATE_SUCCEEDED', result: s.request.payload, flow: 'chain' } };
            }),
          });
        });
        call.on('end', () => call.end());
      },
    } as grpc.UntypedServiceImplementation);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    address = `127.0.0.1:${port}`;
  });
  after(() => server.forceShutdown());

  it('submits through SubmitJobs when the coordinator answers DirectJobs with UNIMPLEMENTED', async () => {
    const admin = new AdminClient([address]);
    const direct = admin.directJobs();
    try {
      const jobs = await Promise.all([1, 2, 3].map((i) => direct.submit({ pipeline: 'p', payload: Buffer.from(`x${i}`), wait: true })));
      expect(jobs.map((j) => [j.state, j.flow, j.result.toString()])).to.deep.equal([1, 2, 3].map((i) => ['JOB_STATE_SUCCEEDED', 'chain', `x${i}`]));
      // Later submissions do not ask for a lease again (for UNSUPPORTED_RETRY_MS): straight to SubmitJobs.
      const later = await direct.submit({ pipeline: 'p', payload: Buffer.from('y'), wait: true });
      expect(later.result.toString()).to.equal('y');
      expect(direct.counts).to.deep.include({ direct: 0, viaLeader: 4 });
      expect(calls.submitJobs).to.equal(4);
    } finally {
      direct.close();
      admin.close();
    }
  });
});
