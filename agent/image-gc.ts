// Image garbage collection: a host that pulls images (new tags on every rollout, `Always`) fills
// its disk unless something removes what no instance uses any more. As the kubelet does, the
// agent looks at the filesystem holding the Engine's images, and when it is fuller than the high
// threshold it removes unused images, the longest unused first, until it is under the low one.
// Unlike the kubelet, it only touches images it pulled itself for its instances: images that came
// to the host otherwise (built there, loaded, pre-pulled by the operator) are the operator's,
// and an image that came from no registry could not be pulled back. And it removes one only
// once no container on the host, running or stopped, uses it and it has gone unused for the
// minimum age (a rollback or a restart soon after should not pull again), as Nomad's docker
// driver waits out its image_delay.
//
// Removal is by the reference an instance named (`docker rmi REF`, never forced): the tag goes,
// and the image's layers with it once no other tag names them. Which images the agent pulled,
// and when a container last used each, is kept in the state dir (images.json), so it survives
// an agent restart.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type Docker from 'dockerode';
import { steadyNow } from '../common/clock';
import type { Logger } from '../common/logger';

export interface ImageGcOptions {
  /** Usage of the image filesystem (percent) above which unused images are removed; 100 turns collection off. */
  highPercent: number;
  /** Usage (percent) collection stops at. */
  lowPercent: number;
  /** How long an image must have gone unused before it may be removed. */
  minAgeMs: number;
  /** The state dir, where the record of used images is kept. */
  stateDir: string;
  /**
   * The images the agent's instances name (running, or pulled and not yet started): never
   * removed, whatever their age (between a pull and its container, the image is in no container).
   */
  wanted?: () => Set<string>;
}

/** Used and total bytes of the filesystem that holds the Engine's images. */
export type DiskUsage = () => Promise<{ usedBytes: number; totalBytes: number }>;

export interface Removal {
  image: string;
  unusedMs: number;
}

export class ImageGc {
  /** Image reference the agent pulled -> when a container last used it (ms since the epoch). */
  private used = new Map<string, number>();
  private readonly file: string;
  private sweeping = false;
  /** Last-used times changed since the record was saved. */
  private dirty = false;
  private rootDir?: string;
  /** Why the image filesystem could not be read last time (warned once). */
  private unreadable?: string;
  /** Images removed so far (for metrics). */
  removed = 0;

  constructor(private readonly docker: Docker, private readonly opts: ImageGcOptions, private readonly log: Logger, private readonly usage?: DiskUsage) {
    this.file = path.join(opts.stateDir, 'images.json');
    try {
      const o = JSON.parse(fs.readFileSync(this.file, 'utf8')) as Record<string, unknown>;
      for (const [image, at] of Object.entries(o)) if (typeof at === 'number') this.used.set(image, at);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ file: this.file, err: (err as Error).message }, 'record of used images unreadable; starting a new one (images used before are not collected)');
    }
  }

  get enabled(): boolean {
    return this.opts.highPercent < 100;
  }

  /** New thresholds (SIGHUP: the agent's settings read again), from the next sweep on; 100 turns it off, lower on. */
  configure(o: Pick<ImageGcOptions, 'highPercent' | 'lowPercent' | 'minAgeMs'>): void {
    this.opts.highPercent = o.highPercent;
    this.opts.lowPercent = o.lowPercent;
    this.opts.minAgeMs = o.minAgeMs;
  }

  /** The agent pulled this image for an instance: from now on it is this agent's to collect. */
  notePulled(image: string, at = steadyNow()): void {
    if (!image) return;
    this.used.set(image, Math.max(this.used.get(image) ?? 0, at));
    this.save();
  }

  /** A container on this host uses the image now (only images the agent pulled are tracked). */
  noteUsed(image: string, at = steadyNow()): void {
    const before = this.used.get(image);
    if (before === undefined || before >= at) return;
    this.used.set(image, at);
    this.dirty = true; // saved with the next sweep
  }

  /** The images tracked and when each was last used (for tests and the log). */
  tracked(): Map<string, number> {
    return new Map(this.used);
  }

  /**
   * One pass: when the image filesystem is over the high threshold, removes unused images the
   * agent pulled (longest unused first) until it is under the low one. Returns what it removed.
   */
  async sweep(now = steadyNow()): Promise<Removal[]> {
    if (this.sweeping) return [];
    this.sweeping = true;
    try {
      if (!this.enabled || !this.used.size) return [];
      const before = await this.percentUsed();
      if (before === undefined || before <= this.opts.highPercent) return [];
      // In use: every container on the host, any state, Tessera's or not.
      const containers = await this.docker.listContainers({ all: true });
      const inUse = new Set(containers.map((c) => c.ImageID));
      const wanted = this.opts.wanted?.() ?? new Set<string>();
      const candidates: { image: string; lastUsed: number }[] = [];
      for (const [image, lastUsed] of this.used) {
        if (wanted.has(image)) {
          if (now > lastUsed) {
            this.used.set(image, now);
            this.dirty = true;
          }
          continue;
        }
        let id: string;
        try {
          id = (await this.docker.getImage(image).inspect()).Id;
        } catch (err) {
          if ((err as { statusCode?: number }).statusCode !== 404) throw err;
          this.used.delete(image); // gone (removed by hand, or never pulled here)
          this.dirty = true;
          continue;
        }
        if (inUse.has(id)) {
          this.used.set(image, now);
          this.dirty = true;
        } else if (now - lastUsed >= this.opts.minAgeMs) {
          candidates.push({ image, lastUsed });
        }
      }
      candidates.sort((a, b) => a.lastUsed - b.lastUsed);
      const removals: Removal[] = [];
      let pct = before;
      for (const c of candidates) {
        if (pct <= this.opts.lowPercent) break;
        try {
          await this.docker.getImage(c.image).remove();
        } catch (err) {
          const e = err as { statusCode?: number; json?: { message?: string }; message: string };
          if (e.statusCode === 404) {
            this.used.delete(c.image);
            this.dirty = true;
          } else {
            // 409: a container started from it since the listing; it stays.
            this.log.warn({ image: c.image, err: e.json?.message ?? e.message }, 'unused image not removed');
          }
          continue;
        }
        this.used.delete(c.image);
        this.dirty = true;
        this.removed++;
        removals.push({ image: c.image, unusedMs: now - c.lastUsed });
        pct = (await this.percentUsed()) ?? pct;
        this.log.info({ image: c.image, unusedForS: Math.round((now - c.lastUsed) / 1000), diskUsedPercent: Number(pct.toFixed(1)) }, 'unused image removed (image garbage collection)');
      }
      if (pct > this.opts.lowPercent) {
        this.log.warn({ diskUsedPercent: Number(pct.toFixed(1)), highPercent: this.opts.highPercent, lowPercent: this.opts.lowPercent, removed: removals.length }, 'image filesystem still over the low threshold: nothing more this agent may remove');
      }
      return removals;
    } finally {
      // Off: last uses stay in memory, and go to disk with the next pull's save, not once a
      // sweep (an agent restarted with GC turned on then counts an image unused from an older
      // use: collected sooner, never while a container uses it).
      if (this.dirty && this.enabled) this.save();
      this.sweeping = false;
    }
  }

  /** Percent of the image filesystem in use (for the sweeps, and the agent's disk-pressure condition); undefined when it cannot be read here. */
  async percentUsed(): Promise<number | undefined> {
    try {
      const u = this.usage ? await this.usage() : await this.statRoot();
      this.unreadable = undefined;
      return u.totalBytes > 0 ? (u.usedBytes / u.totalBytes) * 100 : undefined;
    } catch (err) {
      // Said once per cause, not at every interval (an agent that cannot see the Engine's root
      // dir, e.g. in another mount namespace, would repeat it forever).
      const why = (err as Error).message;
      if (why !== this.unreadable) this.log.warn({ err: why }, 'image filesystem usage unreadable; image garbage collection and the disk-pressure check skipped');
      this.unreadable = why;
      return undefined;
    }
  }

  /** statfs(2) on the Engine's root dir (docker info's DockerRootDir), as df reads it. */
  private async statRoot(): Promise<{ usedBytes: number; totalBytes: number }> {
    this.rootDir ??= ((await this.docker.info()) as { DockerRootDir?: string }).DockerRootDir || '/var/lib/docker';
    const s = await fs.promises.statfs(this.rootDir);
    return { usedBytes: (s.blocks - s.bfree) * s.bsize, totalBytes: (s.blocks - s.bfree + s.bavail) * s.bsize };
  }

  private save(): void {
    try {
      fs.mkdirSync(this.opts.stateDir, { recursive: true });
      const tmp = `${this.file}.tmp`;
      fs.writeFileSync(tmp, JSON.stringify(Object.fromEntries(this.used)));
      fs.renameSync(tmp, this.file);
      this.dirty = false;
    } catch (err) {
      this.log.warn({ file: this.file, err: (err as Error).message }, 'record of used images not saved');
    }
  }
}
