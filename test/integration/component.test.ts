// The component interface from the component's side: serveComponent over real gRPC on
// loopback, and its task state arriving at a real agent task-state endpoint.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { serveComponent } from '../../common/component';
import { tesseraProto } from '../../common/proto';
import { TaskEndpoint } from '../../agent/task-endpoint';
import { waitFor } from '../helpers/ports';

describe('component interface (common/component.ts)', function () {
  this.timeout(20_000);

  it('serves operations, maps errors to statuses, and reports task state to the agent', async () => {
    const agent = new TaskEndpoint((id) => id === 'inst-1');
    const endpoint = await agent.start('127.0.0.1:0');
    const comp = await serveComponent({ handleSignals: false,
      kind: 'upper', version: '1.2.0', concurrency: 2, reportIntervalMs: 100,
      env: { TESSERA_AGENT_ENDPOINT: endpoint, TESSERA_INSTANCE_ID: 'inst-1' },
      operations: {
        upper: async (p) => p.toString().toUpperCase(),
        fail: async () => { throw new Error('boom'); },
        slow: async (p) => { await new Promise((r) => setTimeout(r, 200)); return p; },
      },
    });
    const client = new (tesseraProto().Component)(`127.0.0.1:${comp.port}`, grpc.credentials.createInsecure());
    const invoke = (operation: string, payload: string) => new Promise<{ err?: grpc.ServiceError; out?: string }>((resolve) =>
      client.invoke({ jobId: 'j', stage: 's', operation, payload: Buffer.from(payload) }, (err, res) => resolve({ err: err ?? undefined, out: res?.payload?.toString() })));
    try {
      const info = await new Promise<{ kind: string; operations: string[] }>((resolve, reject) => client.describe({}, (e, r) => (e ? reject(e) : resolve(r as never))));
      expect(info).to.include({ kind: 'upper' });
      expect(info.operations).to.deep.equal(['upper', 'fail', 'slow']);
      expect((await invoke('upper', 'hello')).out).to.equal('HELLO');
      expect((await invoke('', 'default op')).out).to.equal('DEFAULT OP');
      const failed = await invoke('fail', 'x');
      expect(failed.err?.code).to.equal(grpc.status.INTERNAL);
      expect(failed.err?.details).to.contain('boom');
      const unknown = await invoke('nope', 'x');
      expect(unknown.err?.code).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(unknown.err?.details).to.match(/^operation: upper has no operation "nope"/);
      // Four slow steps with a concurrency of two: two wait in the queue.
      const slow = [1, 2, 3, 4].map((i) => invoke('slow', String(i)));
      await new Promise((r) => setTimeout(r, 50));
      expect(comp.stats()).to.include({ inFlight: 2, queueDepth: 2 });
      await Promise.all(slow);
      await waitFor('task state at the agent', () => {
        const t = agent.get('inst-1');
        return t && Number(t.processed) === 6 && Number(t.failed) === 1 ? t : undefined;
      }, 5_000, 50);
      expect(Number(agent.get('inst-1')!.latencyP95Ms)).to.be.greaterThan(150);
    } finally {
      client.close();
      await comp.stop();
      agent.stop();
    }
  });

  it('answers broken protobuf bytes with INVALID_ARGUMENT, on Invoke and on Stream', async () => {
    const comp = await serveComponent({ handleSignals: false, kind: 'echo', operations: { echo: async (p) => p }, env: {} });
    const raw = (b: Buffer) => b;
    const Raw = grpc.makeGenericClientConstructor({
      Invoke: { path: '/tessera.v1.Component/Invoke', requestStream: false, responseStream: false, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw },
      Stream: { path: '/tessera.v1.Component/Stream', requestStream: true, responseStream: true, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw },
    }, 'RawComponent');
    const client = new Raw(`127.0.0.1:${comp.port}`, grpc.credentials.createInsecure()) as any;
    try {
      const unary: grpc.ServiceError = await new Promise((resolve) => client.Invoke(Buffer.from([0xff, 0xff]), (e: grpc.ServiceError) => resolve(e)));
      expect(unary.code).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(unary.details).to.match(/^step: malformed protobuf message/);
      const stream: grpc.ServiceError = await new Promise((resolve) => {
        const call = client.Stream();
        call.on('error', resolve);
        call.on('data', () => {});
        call.write(Buffer.from([0xff, 0xff, 0xff])); // wire type 7 does not exist
      });
      expect(stream.code).to.equal(grpc.status.INVALID_ARGUMENT);
      expect(stream.details).to.match(/malformed protobuf/);
    } finally {
      client.close();
      await comp.stop();
    }
  });
});
