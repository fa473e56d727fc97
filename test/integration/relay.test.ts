// The step relay's wire protocol over real gRPC on loopback: an agent's relay server (the code
// the agent runs) in front of a real component, driven by raw RelayStream messages and by the
// coordinator's StepRunner. Routes are named once per stream; hops come back by option.
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { RelayServer } from '../../agent/relay-server';
import { serveComponent, RunningComponent } from '../../common/component';
import { createLogger } from '../../common/logger';
import { tesseraProto } from '../../common/proto';
import { RELAY_FEATURES, ROUTE_IDS, StepRunner } from '../../common/relay';
import type { RelayResult__Output } from '../../common/generated/tessera/v1/RelayResult';
import type { RouteHop } from '../../common/generated/tessera/v1/RouteHop';

describe('step relay protocol (agent/relay-server.ts, common/relay.ts)', function () {
  this.timeout(20_000);
  let comp: RunningComponent;
  let relay: RelayServer;
  let relayAddress: string;
  let route: RouteHop[];

  before(async () => {
    comp = await serveComponent({ handleSignals: false, kind: 'upper', version: '1.0.0', env: {}, operations: { upper: async (p) => p.toString().toUpperCase() } });
    relay = new RelayServer('n1', createLogger('test', 'silent'));
    relayAddress = await relay.start('127.0.0.1:0');
    const option = { kind: 'upper', operation: 'upper', instanceId: 'upper-1', nodeId: 'n1', endpoint: `127.0.0.1:${comp.port}`, agentEndpoint: relayAddress, whenHeader: '' };
    route = [{ stage: 'a', options: [option], timeoutMs: 2000 }, { stage: 'b', options: [option], timeoutMs: 2000 }];
  });
  after(async () => {
    relay?.stop();
    await comp?.stop();
  });

  type Seen = { route: unknown[]; routeId: number; callId: number; payload: Buffer };

  /** A raw RelayStream: send one batch, collect the answers by call id. */
  function rawStream() {
    const client = new (tesseraProto().StepRelay)(relayAddress, grpc.credentials.createInsecure());
    const call = client.RelayStream();
    const waiting = new Map<number, (r: RelayResult__Output) => void>();
    call.on('data', (b: { results: RelayResult__Output[] }) => { for (const r of b.results) waiting.get(Number(r.callId))?.(r); });
    call.on('error', () => {});
    let next = 1;
    return {
      send: (reqs: Record<string, unknown>[]) => {
        const ids = reqs.map(() => next++);
        const answers = ids.map((id) => new Promise<RelayResult__Output>((resolve) => waiting.set(id, resolve)));
        call.write({ requests: reqs.map((r, i) => ({ jobId: 'j', payload: Buffer.from('hi'), firstIndex: 0, attempt: 1, ...r, callId: ids[i] })) });
        return Promise.all(answers);
      },
      close: () => { call.end(); client.close(); },
    };
  }

  it('runs a route named earlier on the same stream by its id alone, and refuses an id it was never told', async () => {
    const s = rawStream();
    try {
      const [named, byId] = await s.send([{ route, routeId: 7 }, { route: [], routeId: 7 }]);
      expect(named).to.include({ ok: true, error: '' });
      expect(named.payload.toString()).to.equal('HI');
      expect(byId).to.include({ ok: true });
      expect(byId.payload.toString()).to.equal('HI');
      expect(byId.hops.map((h) => h.stage)).to.deep.equal(['a', 'b']);

      const [unknown] = await s.send([{ route: [], routeId: 8 }]);
      expect(unknown).to.include({ ok: false, errorCode: grpc.status.FAILED_PRECONDITION, error: 'unknown route id 8' });
    } finally {
      s.close();
    }
    // Route ids belong to their stream: a new stream has to be told again.
    const other = rawStream();
    try {
      const [fresh] = await other.send([{ route: [], routeId: 7 }]);
      expect(fresh).to.include({ ok: false, errorCode: grpc.status.FAILED_PRECONDITION });
    } finally {
      other.close();
    }
  });

  it('reports hops by option when asked (compact_hops), with their names otherwise', async () => {
    const s = rawStream();
    try {
      const [compact, named] = await s.send([{ route, compactHops: true }, { route }]);
      expect(compact.hops.map((h) => [h.index, h.option, h.instanceId, h.stage, h.ok])).to.deep.equal([[0, 1, '', '', true], [1, 1, '', '', true]]);
      expect(named.hops.map((h) => [h.index, h.option, h.instanceId, h.stage])).to.deep.equal([[0, 1, 'upper-1', 'a'], [1, 1, 'upper-1', 'b']]);
    } finally {
      s.close();
    }
  });

  it('names routes by id only to relays that say they understand them (an older agent gets every route); an id a relay refuses is sent again in full', async () => {
    for (const mode of ['older', 'current', 'forgets'] as const) {
      const advertises = mode !== 'older';
      let refused = 0;
      // A stand-in relay that records what arrives and answers each request as done.
      const seen: { route: number; routeId: number }[] = [];
      const server = new grpc.Server();
      server.addService(tesseraProto().StepRelay.service, {
        Relay: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED }),
        RelayStream: (call: grpc.ServerDuplexStream<{ requests: Seen[] }, unknown>) => {
          if (advertises) {
            const md = new grpc.Metadata();
            md.set(RELAY_FEATURES, ROUTE_IDS);
            call.sendMetadata(md);
          }
          call.on('data', (b: { requests: Seen[] }) => {
            for (const r of b.requests) seen.push({ route: r.route.length, routeId: Number(r.routeId) });
            call.write({ results: b.requests.map((r) => {
              // 'forgets': the first request naming a route by id alone is refused, as an agent that lost it would.
              if (mode === 'forgets' && !refused && Number(r.routeId) && !r.route.length) {
                refused++;
                return { ok: false, errorCode: grpc.status.FAILED_PRECONDITION, error: `unknown route id ${r.routeId}`, callId: r.callId, failedIndex: 0 };
              }
              return { ok: true, payload: r.payload, callId: r.callId, failedIndex: -1 };
            }) });
          });
          call.on('end', () => call.end());
        },
      });
      const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
      const remote = route.map((h) => ({ ...h, options: h.options!.map((o) => ({ ...o, agentEndpoint: `127.0.0.1:${port}` })) }));
      const runner = new StepRunner({ selfNodeId: '', relayCredentials: grpc.credentials.createInsecure(), chain: true });
      try {
        for (let i = 0; i < 4; i++) {
          const out = await runner.run({ jobId: 'j', route: remote, payload: Buffer.from('p'), headers: {}, deadlineMs: Date.now() + 5_000, attempt: 1, firstIndex: 0, callId: 0, routeId: 0, compactHops: true } as never);
          expect(out.ok, out.error).to.equal(true);
        }
      } finally {
        runner.close();
        server.forceShutdown();
      }
      if (mode === 'older') expect(seen, 'an older agent').to.deep.equal(Array(4).fill({ route: 2, routeId: 0 }));
      else if (mode === 'forgets') {
        expect(refused, 'the stand-in refused an id').to.equal(1);
        const i = seen.findIndex((r) => r.routeId && !r.route);
        expect(seen[i + 1], `the refused request went again with its route: ${JSON.stringify(seen)}`).to.include({ route: 2 });
        expect(seen[i + 1].routeId).to.not.equal(seen[i].routeId);
      } else {
        // The first request may go before the relay's headers arrive; once they have, the route goes once.
        const named = seen.filter((r) => r.routeId);
        expect(named.length).to.be.greaterThan(0);
        expect(named.filter((r) => r.route).length, JSON.stringify(seen)).to.equal(1);
        expect(new Set(named.map((r) => r.routeId)).size).to.equal(1);
      }
    }
  });

  it('passes a route on from host to host, and the hops say which option ran (a header rule picked the second)', async () => {
    // Host n2: its own relay and two instances; host n1's first hop sets the header that picks.
    const tag = await serveComponent({ handleSignals: false, kind: 'tag', version: '1.0.0', env: {}, operations: { tag: async (p) => ({ payload: p, headers: { case: 'lower' } }) } });
    const lower = await serveComponent({ handleSignals: false, kind: 'lower', version: '1.0.0', env: {}, operations: { lower: async (p) => p.toString().toLowerCase() } });
    const relay2 = new RelayServer('n2', createLogger('test', 'silent'));
    const relay2Address = await relay2.start('127.0.0.1:0');
    const on = (node: string, relayAt: string, kind: string, port: number, whenHeader = '') => ({ kind, operation: kind, instanceId: `${kind}-${node}`, nodeId: node, endpoint: `127.0.0.1:${port}`, agentEndpoint: relayAt, whenHeader });
    const twoHosts: RouteHop[] = [
      { stage: 'a', options: [on('n1', relayAddress, 'tag', tag.port)], timeoutMs: 2000 },
      { stage: 'b', options: [on('n2', relay2Address, 'upper', comp.port), on('n2', relay2Address, 'lower', lower.port, 'case=lower')], timeoutMs: 2000 },
    ];
    const runner = new StepRunner({ selfNodeId: '', relayCredentials: grpc.credentials.createInsecure(), chain: true });
    try {
      for (let i = 0; i < 3; i++) {
        const out = await runner.run({ jobId: 'j', route: twoHosts, payload: Buffer.from('MiXeD'), headers: {}, deadlineMs: Date.now() + 5_000, attempt: 1, firstIndex: 0, callId: 0, routeId: 0, compactHops: true } as never);
        expect([out.ok, out.error, out.payload.toString()]).to.deep.equal([true, '', 'mixed']);
        expect(out.hops.map((h) => [h.index, h.option, h.ok])).to.deep.equal([[0, 1, true], [1, 2, true]]);
      }
      expect(relay2.relayed, 'the second host ran its hop for every job').to.equal(3);
    } finally {
      runner.close();
      relay2.stop();
      relay.runner.forget(`127.0.0.1:${tag.port}`); // host n1's stream to it, else stop() waits for it to end
      await tag.stop();
      await lower.stop();
    }
  });

  it("a caller's StepRunner names routes by id and carries on when the agent's relay restarts", async () => {
    const runner = new StepRunner({ selfNodeId: '', relayCredentials: grpc.credentials.createInsecure(), chain: true });
    const run = (text: string) => runner.run({ jobId: 'j', route, payload: Buffer.from(text), headers: {}, deadlineMs: Date.now() + 5_000, attempt: 1, firstIndex: 0, callId: 0, routeId: 0, compactHops: true } as never);
    try {
      const outs = await Promise.all(['x', 'y', 'z'].map(run));
      expect(outs.map((o) => [o.ok, o.payload.toString()])).to.deep.equal([[true, 'X'], [true, 'Y'], [true, 'Z']]);
      expect((await run('again')).payload.toString()).to.equal('AGAIN');
      // The agent restarts on the same address: its routes are gone with the old stream.
      const port = relayAddress.split(':')[1];
      relay.stop();
      relay = new RelayServer('n1', createLogger('test', 'silent'));
      await relay.start(`127.0.0.1:${port}`);
      let out = await run('after');
      for (let i = 0; !out.ok && i < 20; i++) {
        expect(out.errorCode, out.error).to.equal(grpc.status.UNAVAILABLE);
        await new Promise((r) => setTimeout(r, 100));
        out = await run('after');
      }
      expect([out.ok, out.payload.toString()]).to.deep.equal([true, 'AFTER']);
      expect(out.hops.map((h) => h.option)).to.deep.equal([1, 1]);
    } finally {
      runner.close();
    }
  });
});
