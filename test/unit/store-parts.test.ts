// Writes that grow with the fleet, split into transactions etcd takes (coordinator/store.ts).
import { expect } from 'chai';
import { packUnits, WriteUnit } from '../../coordinator/store';

const unit = (i: number, value = 'x', events = 1): WriteUnit<number> => ({
  ops: [{ type: 'put', key: `/k/${i}`, value }],
  events: Array.from({ length: events }, () => ({ kind: 'node.down', subject: `n${i}`, message: 'm' })),
  item: i,
});

describe('packUnits: transactions under etcd\'s limits', () => {
  const cases: { name: string; units: WriteUnit<number>[]; maxOps?: number; maxBytes?: number; sizes: number[] }[] = [
    { name: 'nothing: no transaction', units: [], sizes: [] },
    { name: 'a few: one', units: [unit(1), unit(2)], sizes: [2] },
    { name: '150 nodes DOWN (a put and an event each): 50 a transaction', units: Array.from({ length: 150 }, (_, i) => unit(i)), sizes: [50, 50, 50] },
    { name: '250 status puts: 100, 100, 50', units: Array.from({ length: 250 }, (_, i) => unit(i, 'x', 0)), sizes: [100, 100, 50] },
    { name: 'by bytes before operations', units: Array.from({ length: 5 }, (_, i) => unit(i, 'v'.repeat(400), 0)), maxBytes: 1_000, sizes: [2, 2, 1] },
    { name: 'a unit larger than the bytes alone: a transaction of its own', units: [unit(1, 'v'.repeat(2_000), 0), unit(2, 'v', 0)], maxBytes: 1_000, sizes: [1, 1] },
    { name: 'a unit is never split', units: [unit(1, 'x', 3), unit(2, 'x', 3)], maxOps: 5, sizes: [1, 1] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const parts = packUnits(c.units, c.maxOps, c.maxBytes);
      expect(parts.map((p) => p.length)).to.deep.equal(c.sizes);
      expect(parts.flat().map((u) => u.item)).to.deep.equal(c.units.map((u) => u.item));
      for (const p of parts) if (p.length > 1) expect(p.reduce((n, u) => n + u.ops.length + (u.events?.length ?? 0), 0)).to.be.at.most(c.maxOps ?? 100);
    });
  }
});
