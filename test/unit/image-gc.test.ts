// Image garbage collection's rules (agent/image-gc.ts) against a stand-in for the Engine's image
// and container calls and a disk whose use falls as images go: thresholds, the minimum age,
// images in use, what the agent did not pull, the order, and the record in the state dir. The
// real Engine is in test/integration/image-gc.test.ts.
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type Docker from 'dockerode';
import { createLogger } from '../../common/logger';
import { ImageGc, ImageGcOptions } from '../../agent/image-gc';

interface FakeImage { id: string; bytes: number }

/** Images by reference, containers by the image ID they use, and a disk of 1,000 bytes. */
class FakeEngine {
  images = new Map<string, FakeImage>();
  containers: string[] = [];
  base = 0;
  removed: string[] = [];
  conflict = new Set<string>();

  get used(): number {
    const ids = new Map<string, number>();
    for (const i of this.images.values()) ids.set(i.id, i.bytes);
    return this.base + [...ids.values()].reduce((a, b) => a + b, 0);
  }

  docker(): Docker {
    return {
      listContainers: async () => this.containers.map((ImageID) => ({ ImageID })),
      getImage: (ref: string) => ({
        inspect: async () => {
          const i = this.images.get(ref);
          if (!i) throw Object.assign(new Error('no such image'), { statusCode: 404 });
          return { Id: i.id };
        },
        remove: async () => {
          if (!this.images.has(ref)) throw Object.assign(new Error('no such image'), { statusCode: 404 });
          if (this.conflict.has(ref)) throw Object.assign(new Error('conflict'), { statusCode: 409, json: { message: 'image is being used by a container' } });
          this.images.delete(ref);
          this.removed.push(ref);
        },
      }),
    } as unknown as Docker;
  }

  usage = async () => ({ usedBytes: this.used, totalBytes: 1000 });
}

describe('image garbage collection (rules)', () => {
  let dir: string;
  let engine: FakeEngine;
  const log = createLogger('test', 'silent');
  const gc = (o: Partial<ImageGcOptions> = {}) => new ImageGc(engine.docker(), { highPercent: 85, lowPercent: 80, minAgeMs: 60_000, stateDir: dir, ...o }, log, engine.usage);
  const T = 1_000_000_000;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-gc-'));
    engine = new FakeEngine();
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('does nothing while the disk is under the high threshold', async () => {
    engine.base = 700;
    engine.images.set('r/a:1', { id: 'A', bytes: 100 });
    const g = gc();
    g.notePulled('r/a:1', T);
    expect(await g.sweep(T + 3_600_000)).to.deep.equal([]); // 80% used, high 85
    expect(engine.removed).to.deep.equal([]);
  });

  it('over the high threshold removes unused images it pulled, longest unused first, until under the low one', async () => {
    engine.base = 600;
    engine.images.set('r/old:1', { id: 'O', bytes: 100 });
    engine.images.set('r/mid:1', { id: 'M', bytes: 100 });
    engine.images.set('r/new:1', { id: 'N', bytes: 100 });
    const g = gc();
    g.notePulled('r/mid:1', T + 1_000);
    g.notePulled('r/old:1', T);
    g.notePulled('r/new:1', T + 2_000);
    // 90% used: removing the oldest gives 80% (at the low threshold): one is enough.
    const out = await g.sweep(T + 600_000);
    expect(out.map((r) => r.image)).to.deep.equal(['r/old:1']);
    expect(out[0].unusedMs).to.equal(600_000);
    expect([...g.tracked().keys()].sort()).to.deep.equal(['r/mid:1', 'r/new:1']);
    expect(g.removed).to.equal(1);
  });

  it('keeps images a container uses (any container, any state) and counts them as used now', async () => {
    engine.base = 800;
    engine.images.set('r/used:1', { id: 'U', bytes: 100 });
    engine.images.set('r/free:1', { id: 'F', bytes: 100 });
    engine.containers = ['U'];
    const g = gc({ lowPercent: 0 });
    g.notePulled('r/used:1', T);
    g.notePulled('r/free:1', T);
    const out = await g.sweep(T + 600_000);
    expect(out.map((r) => r.image)).to.deep.equal(['r/free:1']);
    expect(g.tracked().get('r/used:1')).to.equal(T + 600_000);
    // Its container gone: it has been unused only since that sweep, under the minimum age.
    engine.containers = [];
    expect(await g.sweep(T + 630_000)).to.deep.equal([]);
    expect((await g.sweep(T + 660_000)).map((r) => r.image)).to.deep.equal(['r/used:1']);
  });

  it('waits out the minimum age after the last use the instance manager saw', async () => {
    engine.base = 900;
    engine.images.set('r/a:1', { id: 'A', bytes: 100 });
    const g = gc({ lowPercent: 0 });
    g.notePulled('r/a:1', T);
    g.noteUsed('r/a:1', T + 100_000); // its instance ran until then
    expect(await g.sweep(T + 159_999)).to.deep.equal([]);
    expect((await g.sweep(T + 160_000)).map((r) => r.image)).to.deep.equal(['r/a:1']);
  });

  it('never removes an image an instance wants (pulled, its container not made yet), even at a minimum age of 0', async () => {
    engine.base = 900;
    engine.images.set('r/pulled:1', { id: 'P', bytes: 50 });
    engine.images.set('r/other:1', { id: 'O', bytes: 50 });
    let wanted = new Set(['r/pulled:1']);
    const g = gc({ lowPercent: 0, minAgeMs: 0, wanted: () => wanted });
    g.notePulled('r/pulled:1', T);
    g.notePulled('r/other:1', T);
    expect((await g.sweep(T + 1)).map((r) => r.image)).to.deep.equal(['r/other:1']);
    expect(g.tracked().get('r/pulled:1'), 'counted as used now').to.equal(T + 1);
    wanted = new Set();
    expect((await g.sweep(T + 2)).map((r) => r.image)).to.deep.equal(['r/pulled:1']);
  });

  it('never touches images it did not pull, even when an instance ran them', async () => {
    engine.base = 900;
    engine.images.set('local/built:1', { id: 'L', bytes: 100 });
    const g = gc({ highPercent: 0, lowPercent: 0, minAgeMs: 0 });
    g.noteUsed('local/built:1', T);
    expect(g.tracked().size).to.equal(0);
    expect(await g.sweep(T + 3_600_000)).to.deep.equal([]);
    expect(engine.images.has('local/built:1')).to.equal(true);
  });

  it('is off at a high threshold of 100', async () => {
    engine.base = 999;
    engine.images.set('r/a:1', { id: 'A', bytes: 1 });
    const g = gc({ highPercent: 100, lowPercent: 0, minAgeMs: 0 });
    g.notePulled('r/a:1', T);
    expect(g.enabled).to.equal(false);
    const file = path.join(dir, 'images.json');
    const saved = fs.statSync(file).mtimeMs;
    g.noteUsed('r/a:1', T + 60_000);
    expect(await g.sweep(T + 3_600_000)).to.deep.equal([]);
    // Its record is not rewritten at every sweep while it is off (only a pull saves it).
    expect([fs.statSync(file).mtimeMs, JSON.parse(fs.readFileSync(file, 'utf8'))['r/a:1']]).to.deep.equal([saved, T]);
    expect(g.tracked().get('r/a:1')).to.equal(T + 60_000);
  });

  it('takes new thresholds from the next sweep on (SIGHUP): turned on from off, then off again', async () => {
    engine.base = 600;
    engine.images.set('r/a:1', { id: 'A', bytes: 300 });
    const g = gc({ highPercent: 100, lowPercent: 0, minAgeMs: 0 });
    g.notePulled('r/a:1', T);
    expect(await g.sweep(T + 60_000)).to.deep.equal([]); // off: 90% used
    g.configure({ highPercent: 85, lowPercent: 80, minAgeMs: 120_000 });
    expect(g.enabled).to.equal(true);
    expect(await g.sweep(T + 60_000)).to.deep.equal([]); // on, but unused for 60 s only
    expect((await g.sweep(T + 120_000)).map((r) => r.image)).to.deep.equal(['r/a:1']);
    g.configure({ highPercent: 100, lowPercent: 0, minAgeMs: 0 });
    expect(g.enabled).to.equal(false);
  });

  it('forgets images removed by hand, and keeps one a container took meanwhile (409)', async () => {
    engine.base = 900;
    engine.images.set('r/busy:1', { id: 'B', bytes: 50 });
    const g = gc({ lowPercent: 0, minAgeMs: 0 });
    g.notePulled('r/gone:1', T);
    g.notePulled('r/busy:1', T);
    engine.conflict.add('r/busy:1');
    expect(await g.sweep(T + 1)).to.deep.equal([]);
    expect([...g.tracked().keys()]).to.deep.equal(['r/busy:1']);
  });

  it('keeps its record in the state dir: a restarted agent goes on from it', async () => {
    engine.base = 900;
    engine.images.set('r/a:1', { id: 'A', bytes: 100 });
    const g = gc({ lowPercent: 0 });
    g.notePulled('r/a:1', T);
    g.noteUsed('r/a:1', T + 5_000);
    await g.sweep(T + 10_000); // under the minimum age: nothing removed, the newer use saved
    const again = gc({ lowPercent: 0 });
    expect(again.tracked().get('r/a:1')).to.equal(T + 5_000);
    expect((await again.sweep(T + 65_000)).map((r) => r.image)).to.deep.equal(['r/a:1']);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'images.json'), 'utf8'))).to.deep.equal({});
  });

  it('says once, not at every sweep, that the image filesystem cannot be read', async () => {
    const lines: string[] = [];
    engine.images.set('r/a:1', { id: 'A', bytes: 1 });
    let fail = true;
    const g = new ImageGc(engine.docker(), { highPercent: 0, lowPercent: 0, minAgeMs: 0, stateDir: dir }, createLogger('test', 'warn', {}, (l) => lines.push(l)), async () => {
      if (fail) throw new Error('ENOENT: /var/lib/docker');
      return { usedBytes: 1, totalBytes: 1 };
    });
    g.notePulled('r/a:1', T);
    for (let i = 0; i < 3; i++) expect(await g.sweep(T + i)).to.deep.equal([]);
    expect(lines.filter((l) => l.includes('image filesystem usage unreadable'))).to.have.length(1);
    fail = false;
    expect((await g.sweep(T + 10)).map((r) => r.image)).to.deep.equal(['r/a:1']);
  });

  it('starts a new record when the old one is unreadable', () => {
    fs.writeFileSync(path.join(dir, 'images.json'), '{not json');
    expect(gc().tracked().size).to.equal(0);
  });
});
