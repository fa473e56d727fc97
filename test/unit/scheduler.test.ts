import { expect } from 'chai';
import { Placer, place } from '../../coordinator/scheduler/placer';
import { Reason } from '../../coordinator/scheduler/filters';
import type { NodeView, PlacementRequest } from '../../coordinator/scheduler/types';

function node(id: string, over: Partial<NodeView> = {}): NodeView {
  return { id, state: 'READY', labels: {}, capacity: { cpuMillis: 2000, memoryMib: 4096 }, allocated: { cpuMillis: 0, memoryMib: 0 }, portRange: { start: 20000, end: 20009 }, usedPorts: new Set(), groups: new Map(), ...over };
}
function req(over: Partial<PlacementRequest> = {}): PlacementRequest {
  return { app: 'a', component: 'c', slot: 0, group: 'a/c', resources: { cpuMillis: 100, memoryMib: 128 }, ports: [], constraints: [], placement: 'spread', distinctHosts: false, ...over };
}
const fixed = (seed: number) => () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
const opts = { sampleSize: 0, random: fixed(7) };

describe('placement filters: every rejection has a named reason', () => {
  const cases: [string, NodeView, PlacementRequest, string][] = [
    ['a DOWN node', node('n', { state: 'DOWN' }), req(), Reason.NODE_NOT_READY],
    ['a draining node', node('n', { state: 'DRAINING' }), req(), Reason.NODE_DRAINING],
    ['a node whose container runtime does not answer', node('n', { conditions: { 'runtime-down': 'Docker Engine: connect ENOENT /var/run/docker.sock' } }), req(), Reason.RUNTIME_DOWN],
    ['a node under disk pressure', node('n', { conditions: { 'disk-pressure': 'image filesystem 97.0% full (over --disk-pressure-percent 95)' } }), req(), Reason.DISK_PRESSURE],
    ['a cordoned node', node('n', { cordoned: 'kernel upgrade' }), req(), Reason.CORDONED],
    ['a node with a condition of a newer agent', node('n', { conditions: { 'pid-pressure': 'too many processes' } }), req(), Reason.NODE_CONDITION],
    ['an unmet constraint', node('n', { labels: { zone: 'b' } }), req({ constraints: [{ label: 'zone', op: '=', value: 'a', values: [] }] }), Reason.CONSTRAINT],
    ['a missing label for "exists"', node('n'), req({ constraints: [{ label: 'gpu', op: 'exists', value: '', values: [] }] }), Reason.CONSTRAINT],
    ['too little cpu', node('n', { allocated: { cpuMillis: 1950, memoryMib: 0 } }), req(), Reason.INSUFFICIENT_CPU],
    ['too little memory', node('n', { capacity: { cpuMillis: 2000, memoryMib: 100 } }), req(), Reason.INSUFFICIENT_MEMORY],
    ['a fixed port in use', node('n', { usedPorts: new Set([8080]) }), req({ ports: [{ name: 'http', port: 8080 }] }), Reason.PORT_IN_USE],
    ['no free dynamic port', node('n', { portRange: { start: 20000, end: 20000 }, usedPorts: new Set([20000]) }), req({ ports: [{ name: 'http', port: 0 }] }), Reason.NO_FREE_PORT],
    ['distinct hosts', node('n', { groups: new Map([['a/c', 1]]) }), req({ distinctHosts: true }), Reason.DISTINCT_HOSTS],
  ];
  for (const [name, n, r, code] of cases) {
    it(`rejects ${name} as ${code}`, () => {
      const plan = place([n], [r], opts);
      expect(plan.placements).to.have.length(0);
      expect(plan.failures[0].counts).to.deep.equal({ [code]: 1 });
      expect(plan.failures[0].reasons.n).to.match(new RegExp(`^${code}: `));
    });
  }
  it('accepts "in" and "not_in" constraints by label value', () => {
    const nodes = [node('a', { labels: { zone: 'x' } }), node('b', { labels: { zone: 'y' } })];
    const inPlan = place(nodes, [req({ constraints: [{ label: 'zone', op: 'in', value: '', values: ['y'] }] })], opts);
    expect(inPlan.placements[0].nodeId).to.equal('b');
    const notIn = place(nodes, [req({ constraints: [{ label: 'zone', op: 'not_in', value: '', values: ['y'] }] })], opts);
    expect(notIn.placements[0].nodeId).to.equal('a');
  });
});

describe('placement scores', () => {
  it('spreads instances of one component over nodes', () => {
    const plan = place([node('a'), node('b'), node('c')], [0, 1, 2].map((slot) => req({ slot })), opts);
    expect(new Set(plan.placements.map((p) => p.nodeId)).size).to.equal(3);
  });
  it('bin-packs onto the fullest node that fits', () => {
    const plan = place([node('empty'), node('half', { allocated: { cpuMillis: 1000, memoryMib: 2048 } })], [req({ placement: 'binpack' })], opts);
    expect(plan.placements[0].nodeId).to.equal('half');
  });
  it('prefers not to return to a node it was asked to avoid', () => {
    const plan = place([node('a'), node('b')], [req({ avoid: new Set(['a']) })], opts);
    expect(plan.placements[0].nodeId).to.equal('b');
  });
  it('goes back to the node that holds the slot\'s volumes whenever it can take the instance, even a busier one, a node to avoid or one of a sample that leaves it out', () => {
    const busy = { allocated: { cpuMillis: 1800, memoryMib: 3000 }, groups: new Map([['a/c', 2]]) };
    const nodes = () => [node('home', busy), ...Array.from({ length: 200 }, (_, k) => node(`n${k}`))];
    expect(place(nodes(), [req({ prefer: 'home', avoid: new Set(['home']) })], { sampleSize: 3, random: fixed(7) }).placements[0].nodeId).to.equal('home');
    // It cannot take it (full, cordoned, gone): placed as any other.
    const full = place([node('home', { allocated: { cpuMillis: 2000, memoryMib: 4096 } }), node('b')], [req({ prefer: 'home' })], opts);
    expect(full.placements[0].nodeId).to.equal('b');
    expect(place([node('home', { cordoned: 'maintenance' }), node('b')], [req({ prefer: 'home' })], opts).placements[0].nodeId).to.equal('b');
    expect(place([node('b')], [req({ prefer: 'gone' })], opts).placements[0].nodeId).to.equal('b');
  });
  it('hands out distinct dynamic ports on one node', () => {
    const plan = place([node('a')], [0, 1, 2].map((slot) => req({ slot, ports: [{ name: 'http', port: 0 }] })), opts);
    const ports = plan.placements.map((p) => p.ports.http);
    expect(new Set(ports).size).to.equal(3);
    expect(ports.every((p) => p >= 20000 && p <= 20009)).to.equal(true);
  });
  it('explains per node why nothing fits', () => {
    const plan = place([node('a', { state: 'DOWN' }), node('b', { capacity: { cpuMillis: 50, memoryMib: 4096 } })], [req()], opts);
    expect(plan.failures[0].counts).to.deep.equal({ [Reason.NODE_NOT_READY]: 1, [Reason.INSUFFICIENT_CPU]: 1 });
    expect(Object.keys(plan.failures[0].reasons).sort()).to.deep.equal(['a', 'b']);
  });
  it('does not modify the snapshot it was given', () => {
    const snap = [node('a')];
    place(snap, [req(), req({ slot: 1 })], opts);
    expect(snap[0].allocated).to.deep.equal({ cpuMillis: 0, memoryMib: 0 });
    expect(snap[0].groups.size).to.equal(0);
  });
});

describe('placement property: a plan never over-commits a node', () => {
  for (let seed = 1; seed <= 40; seed++) {
    it(`random cluster and specs #${seed}`, () => {
      const rnd = fixed(seed * 7919);
      const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
      const nodes: NodeView[] = Array.from({ length: int(1, 30) }, (_, i) => {
        const cap = { cpuMillis: int(1, 8) * 500, memoryMib: int(1, 16) * 256 };
        const used = new Set<number>();
        for (let k = 0; k < int(0, 5); k++) used.add(20000 + int(0, 20));
        return node(`n${i}`, {
          state: rnd() < 0.1 ? 'DOWN' : rnd() < 0.1 ? 'DRAINING' : 'READY',
          capacity: cap,
          allocated: { cpuMillis: int(0, cap.cpuMillis / 2), memoryMib: int(0, cap.memoryMib / 2) },
          portRange: { start: 20000, end: 20000 + int(0, 20) },
          usedPorts: used,
          labels: { zone: ['a', 'b', 'c'][int(0, 2)] },
        });
      });
      const requests: PlacementRequest[] = Array.from({ length: int(1, 120) }, (_, i) => req({
        slot: i, component: `c${i % 4}`, group: `a/c${i % 4}`,
        resources: { cpuMillis: int(1, 20) * 50, memoryMib: int(1, 16) * 64 },
        ports: rnd() < 0.5 ? [{ name: 'p', port: 0 }] : rnd() < 0.2 ? [{ name: 'f', port: 20000 + int(0, 20) }] : [],
        placement: rnd() < 0.5 ? 'spread' : 'binpack',
        distinctHosts: rnd() < 0.2,
        constraints: rnd() < 0.3 ? [{ label: 'zone', op: '=', value: ['a', 'b'][int(0, 1)], values: [] }] : [],
      }));
      const placer = new Placer(nodes, { sampleSize: int(0, 10), random: rnd });
      const plan = placer.placeAll(requests);
      expect(plan.placements.length + plan.failures.length).to.equal(requests.length);
      const byNode = new Map(nodes.map((n) => [n.id, { cpu: n.allocated.cpuMillis, mem: n.allocated.memoryMib, ports: new Set(n.usedPorts), groups: new Map<string, number>() }]));
      for (const p of plan.placements) {
        const n = nodes.find((x) => x.id === p.nodeId)!;
        expect(n.state, 'only READY nodes').to.equal('READY');
        const acc = byNode.get(p.nodeId)!;
        acc.cpu += p.request.resources.cpuMillis;
        acc.mem += p.request.resources.memoryMib;
        for (const port of Object.values(p.ports)) {
          expect(acc.ports.has(port), `port ${port} given twice on ${p.nodeId}`).to.equal(false);
          acc.ports.add(port);
        }
        if (p.request.distinctHosts) {
          expect(acc.groups.get(p.request.group) ?? n.groups.get(p.request.group) ?? 0).to.equal(0);
        }
        acc.groups.set(p.request.group, (acc.groups.get(p.request.group) ?? 0) + 1);
        for (const c of p.request.constraints) expect(n.labels[c.label]).to.equal(c.value);
      }
      for (const n of nodes) {
        const acc = byNode.get(n.id)!;
        expect(acc.cpu, `cpu on ${n.id}`).to.be.at.most(n.capacity.cpuMillis);
        expect(acc.mem, `memory on ${n.id}`).to.be.at.most(n.capacity.memoryMib);
      }
    });
  }
});
