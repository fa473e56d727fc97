// The batched call stream (common/mux.ts) over a real gRPC server on loopback.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { tesseraProto } from '../../common/proto';
import { MuxClient, serveMux } from '../../common/mux';
import { waitFor } from '../helpers/ports';

type Sub = { callId?: unknown; request?: { pipeline?: string } };
type Out = { callId?: unknown; job?: { id?: string } };

describe('MuxClient over a real gRPC stream', function () {
  this.timeout(20_000);
  let server: grpc.Server;
  let client: grpc.Client & { SubmitJobs(): grpc.ClientDuplexStream<Record<string, unknown>, Record<string, unknown>> };
  const held: (() => void)[] = [];
  let cancelled = 0;

  before(async () => {
    server = new grpc.Server();
    // Answers each submission once the test releases it, with a job named after its pipeline.
    server.addService(tesseraProto().Admin.service, {
      SubmitJobs: (call: grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>) => {
        call.on('cancelled', () => cancelled++);
        serveMux<Sub, Out>(call, { req: 'submissions', res: 'outcomes' }, (s) => new Promise((resolve) => held.push(() => resolve({ job: { id: s.request?.pipeline } }))), () => ({}));
      },
    } as never);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    client = new (tesseraProto().Admin)(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as never;
  });
  after(() => {
    client?.close();
    server?.forceShutdown();
  });

  it('retire(): the calls in flight still get their answers, then the stream is closed', async () => {
    const mux = new MuxClient<Sub, Out>(() => client.SubmitJobs(), { req: 'submissions', res: 'outcomes' });
    const answers: string[] = [];
    const a = mux.call({ request: { pipeline: 'a' } }).then((o) => answers.push(String(o.job?.id)));
    const b = mux.call({ request: { pipeline: 'b' } }).then((o) => answers.push(String(o.job?.id)));
    await waitFor('both calls at the server', () => held.length === 2, 5_000, 10);
    let retired = false;
    const closed = mux.retire().then(() => (retired = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(cancelled, 'closed with calls in flight').to.equal(0);
    expect(retired).to.equal(false);
    held.shift()!();
    await a;
    expect(answers).to.deep.equal(['a']);
    await new Promise((r) => setTimeout(r, 100));
    expect(cancelled, 'closed with a call in flight').to.equal(0);
    held.shift()!();
    await b;
    expect(answers).to.deep.equal(['a', 'b']);
    await closed;
    await waitFor('the stream to be closed', () => cancelled === 1, 5_000, 10);
  });

  it('a retired stream that breaks: its calls fail and retire() resolves', async () => {
    const mux = new MuxClient<Sub, Out>(() => client.SubmitJobs(), { req: 'submissions', res: 'outcomes' });
    const p = mux.call({ request: { pipeline: 'd' } }).then(() => 'answered', (e: grpc.ServiceError) => e.code);
    await waitFor('the call at the server', () => held.length === 1, 5_000, 10);
    const closed = mux.retire();
    mux.reset('broken under it');
    expect(await p).to.equal(grpc.status.UNAVAILABLE);
    await closed;
    held.shift()!();
  });

  it('close(): the calls in flight fail at once with CANCELLED', async () => {
    const mux = new MuxClient<Sub, Out>(() => client.SubmitJobs(), { req: 'submissions', res: 'outcomes' });
    const before = cancelled;
    const p = mux.call({ request: { pipeline: 'c' } }).then(() => 'answered', (e: grpc.ServiceError) => e.code);
    await waitFor('the call at the server', () => held.length === 1, 5_000, 10);
    mux.close();
    expect(await p).to.equal(grpc.status.CANCELLED);
    await waitFor('the stream to be closed', () => cancelled === before + 1, 5_000, 10);
    held.shift()!();
  });
});
