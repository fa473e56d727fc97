// Routes named once per relay stream (RelayRequest.route_id): the caller's interner and the
// agent's table, without a network (the wire is covered in test/integration/relay.test.ts).
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { deadlineHere, RELAY_FEATURES, ROUTE_IDS, routeKey, RouteInterner, RouteTable, pickOptionIndex } from '../../common/relay';
import type { RelayRequest__Output } from '../../common/generated/tessera/v1/RelayRequest';
import type { RouteHop__Output } from '../../common/generated/tessera/v1/RouteHop';

const opt = (id: string, extra: Partial<RouteHop__Output['options'][number]> = {}) => ({
  kind: 'k', operation: '', instanceId: id, nodeId: 'n1', endpoint: '127.0.0.1:1', agentEndpoint: '127.0.0.1:2', whenHeader: '', ...extra,
});
const route = (...ids: string[]): RouteHop__Output[] => ids.map((id, i) => ({ stage: `s${i}`, options: [opt(id)], timeoutMs: 1000 }));
const req = (r: RouteHop__Output[]): RelayRequest__Output => ({
  jobId: 'j', route: r, payload: Buffer.alloc(0), headers: {}, deadlineMs: 0, attempt: 1, firstIndex: 0, callId: 0, routeId: 0, compactHops: true, budgetMs: 0, leaseTicket: '',
});

/** The response headers of a stream whose relay understands route ids. */
function understands(interner: RouteInterner, generation: number): void {
  const md = new grpc.Metadata();
  md.set(RELAY_FEATURES, ROUTE_IDS);
  interner.onMetadata(md, generation);
}

describe('relay route ids', () => {
  it('leaves every route in place on a stream whose relay has not said it understands ids', () => {
    const interner = new RouteInterner();
    const batch = [req(route('a')), req(route('a'))];
    interner.apply(batch, 1);
    expect(batch.map((r) => [r.route.length, r.routeId])).to.deep.equal([[1, 0], [1, 0]]);
    interner.onMetadata(new grpc.Metadata(), 1);
    interner.apply(batch, 1);
    expect(batch.map((r) => [r.route.length, r.routeId])).to.deep.equal([[1, 0], [1, 0]]);
    understands(interner, 1);
    interner.apply(batch, 2);
    expect(batch.map((r) => [r.route.length, r.routeId]), 'the next stream has not said so yet').to.deep.equal([[1, 0], [1, 0]]);
  });

  it('names a route object the caller uses again (the leader reuses planned routes) by the id of its text', () => {
    const interner = new RouteInterner();
    understands(interner, 1);
    const shared = route('a', 'b');
    const batch = [req(shared), req(shared), req(route('a', 'b')), req(route('a', 'c'))];
    interner.apply(batch, 1);
    expect(batch.map((r) => r.route.length)).to.deep.equal([2, 0, 0, 2]);
    expect(batch[1].routeId).to.equal(batch[0].routeId);
    expect(batch[2].routeId, 'an equal copy is the same route').to.equal(batch[0].routeId);
    expect(batch[3].routeId).to.not.equal(batch[0].routeId);
    expect(shared, 'the shared route object is left as it was').to.have.length(2);
  });

  it('sends a route once per stream, then only its id; a change anywhere is a new route', () => {
    const interner = new RouteInterner();
    const batch = [req(route('a', 'b')), req(route('a', 'b')), req(route('a', 'c'))];
    const callersOwn = batch[1];
    understands(interner, 1);
    interner.apply(batch, 1);
    expect(batch[0].route).to.have.length(2);
    expect(batch[1].route, 'same route, same stream: id only').to.deep.equal([]);
    expect(batch[1].routeId).to.equal(batch[0].routeId);
    expect(callersOwn.route, "the caller's request keeps its route").to.have.length(2);
    expect(batch[2].routeId).to.not.equal(batch[0].routeId);
    expect(batch[2].route).to.have.length(2);

    const endpointMoved = route('a', 'b');
    endpointMoved[1].options[0].endpoint = '127.0.0.1:3';
    expect(routeKey(endpointMoved)).to.not.equal(routeKey(route('a', 'b')));

    const later = [req(route('a', 'b'))];
    interner.apply(later, 1);
    expect(later[0].route).to.deep.equal([]);
    const newStream = [req(route('a', 'b'))];
    understands(interner, 2);
    interner.apply(newStream, 2);
    expect(newStream[0].route, 'a new stream is told the route again').to.have.length(2);
    expect(newStream[0].routeId).to.equal(batch[0].routeId);
  });

  it("carries a direct job's lease ticket once per stream (the agent keeps it for the lease's prefix)", () => {
    const interner = new RouteInterner();
    const withTicket = (t: string) => ({ ...req(route('a')), leaseTicket: t });
    understands(interner, 1);
    const batch = [withTicket('t1'), withTicket('t1'), withTicket('t2'), req(route('a'))];
    interner.apply(batch, 1);
    expect(batch.map((r) => r.leaseTicket)).to.deep.equal(['t1', '', 't2', '']);
    const later = [withTicket('t1')];
    interner.apply(later, 1);
    expect(later[0].leaseTicket).to.equal('');
    const newStream = [withTicket('t1')];
    understands(interner, 2);
    interner.apply(newStream, 2);
    expect(newStream[0].leaseTicket, 'a new stream is given it again').to.equal('t1');
  });

  it('forgets every id past its bound, and the agent keeps every id still in use', () => {
    const interner = new RouteInterner(4);
    const table = new RouteTable(8);
    understands(interner, 1);
    const sendAndResolve = (ids: string[]) => {
      const items = ids.map((id) => req(route(id)));
      interner.apply(items, 1);
      for (const it of items) expect(table.resolve(it), `route ${it.routeId}`).to.equal(undefined);
      return items.map((it) => it.route[0].options[0].instanceId);
    };
    for (let round = 0; round < 5; round++) {
      const ids = Array.from({ length: 6 }, (_, i) => `i${(i + round) % 7}`);
      expect(sendAndResolve(ids)).to.deep.equal(ids);
      expect(sendAndResolve(ids.slice(0, 3))).to.deep.equal(ids.slice(0, 3));
    }
  });

  it('the agent refuses an id it was never told, and resolves one it was', () => {
    const table = new RouteTable();
    expect(table.resolve({ ...req([]), routeId: 9 })).to.equal('unknown route id 9');
    const r = route('x');
    expect(table.resolve({ ...req(r), routeId: 9 })).to.equal(undefined);
    const byId = { ...req([]), routeId: 9 };
    expect(table.resolve(byId)).to.equal(undefined);
    expect(byId.route).to.equal(r);
    expect(table.resolve(req(route('y'))), 'no id: the route as sent').to.equal(undefined);
  });

  it('picks the planned option unless a header rule says otherwise', () => {
    const options = [opt('row'), opt('vec', { whenHeader: 'shape=wide' })];
    expect(pickOptionIndex(options, {})).to.equal(0);
    expect(pickOptionIndex(options, { shape: 'wide' })).to.equal(1);
    expect(pickOptionIndex([opt('only')], { shape: 'wide' })).to.equal(0);
  });
});

describe('a relayed request\'s deadline', () => {
  it('is counted on the receiving host\'s clock from the time left when it was sent', () => {
    // Sent by a host whose clock is 30 s behind this one's, with 4 s left.
    const r = { ...req(route('a')), deadlineMs: 1_000_000 + 4_000 - 30_000, budgetMs: 4_000 };
    deadlineHere(r, 1_000_000);
    expect(r.deadlineMs).to.equal(1_004_000);
  });

  it('stays as sent when the sender gave no budget (an older sender)', () => {
    const r = { ...req(route('a')), deadlineMs: 1_004_000 };
    deadlineHere(r, 1_000_000);
    expect(r.deadlineMs).to.equal(1_004_000);
  });
});
