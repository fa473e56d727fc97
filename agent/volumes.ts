// A slot's volume read and written whole, for the leader's copy of a migrating volume
// (VolumeSpec.migrate, AgentVolumes): a tar stream of the volume's directory under the agent's
// volume root. Reading and writing are refused while an instance of the slot runs here (its
// data is moving under it); a write lands in a fresh directory beside the volume, and replaces
// it only once the whole stream was taken (a copy cut short leaves the old contents).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../common/errors';
import type { Logger } from '../common/logger';

export interface VolumeRefLike { app?: string; component?: string; slot?: number; volume?: string }

const NAME_RE = /^[a-z][a-z0-9-]{0,62}$/;

export class VolumeTransfer {
  constructor(
    private readonly root: string,
    /** Whether an instance of the slot is desired or still stopping here. */
    private readonly holdsSlot: (app: string, component: string, slot: number) => boolean,
    private readonly log: Logger,
  ) {}

  /** The volume's directory, the reference checked field by field (names cannot climb out of the root). */
  dir(ref: VolumeRefLike | null | undefined, at = 'ref'): { dir: string; app: string; component: string; slot: number; volume: string } {
    const v: { field: string; message: string }[] = [];
    for (const f of ['app', 'component', 'volume'] as const) if (!NAME_RE.test(ref?.[f] ?? '')) v.push({ field: `${at}.${f}`, message: `must match ${NAME_RE.source}` });
    const slot = Number(ref?.slot ?? -1);
    if (!Number.isInteger(slot) || slot < 0) v.push({ field: `${at}.slot`, message: 'must be a whole number, 0 or more' });
    if (v.length) throw new InvalidArgumentError(v);
    const { app, component, volume } = ref as Required<VolumeRefLike>;
    return { dir: path.join(this.root, app, `${component}-${slot}`, volume), app, component, slot, volume };
  }

  private refuseWhileHeld(r: { app: string; component: string; slot: number; volume: string }): void {
    if (this.holdsSlot(r.app, r.component, r.slot)) {
      throw new FailedPreconditionError(`an instance of ${r.app}/${r.component}[${r.slot}] runs on this node: its volume ${r.volume} is not copied while in use`);
    }
  }

  /** Streams the volume as a tar archive; the byte count. */
  async fetch(ref: VolumeRefLike | null | undefined, write: (data: Buffer) => boolean, drained: () => Promise<void>, signal: AbortSignal): Promise<number> {
    const r = this.dir(ref);
    this.refuseWhileHeld(r);
    if (!fs.existsSync(r.dir)) throw new NotFoundError('volume', `${r.app}/${r.component}[${r.slot}]/${r.volume} on this node`);
    const tar = spawn('tar', ['-C', r.dir, '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const onAbort = () => tar.kill('SIGKILL');
    signal.addEventListener('abort', onAbort);
    let stderr = '';
    tar.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    let bytes = 0;
    try {
      for await (const chunk of tar.stdout as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (!write(chunk)) await drained();
      }
      const code = await exited(tar);
      if (code !== 0 && !signal.aborted) throw new Error(`tar of ${r.dir} exited with ${code}: ${stderr.trim()}`);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    this.log.info({ volume: r.dir, bytes }, 'volume read for a migration');
    return bytes;
  }

  /** Removes the volume (once the leader copied it elsewhere: a stale copy must not come back). */
  drop(ref: VolumeRefLike | null | undefined): void {
    const r = this.dir(ref);
    this.refuseWhileHeld(r);
    fs.rmSync(r.dir, { recursive: true, force: true });
    this.log.info({ volume: r.dir }, 'volume removed after a migration');
  }

  /**
   * Takes a tar stream into a new directory beside the volume, then puts it in the volume's
   * place (what was there goes); the byte count. A stream that ends early or a tar that fails
   * leaves the volume as it was.
   */
  async put(ref: VolumeRefLike | null | undefined, chunks: AsyncIterable<Buffer>): Promise<number> {
    const r = this.dir(ref);
    this.refuseWhileHeld(r);
    fs.mkdirSync(path.dirname(r.dir), { recursive: true });
    const incoming = `${r.dir}.incoming-${randomBytes(4).toString('hex')}`;
    fs.mkdirSync(incoming);
    let bytes = 0;
    try {
      const tar = spawn('tar', ['-C', incoming, '-xpf', '-', '--numeric-owner'], { stdio: ['pipe', 'ignore', 'pipe'] });
      let stderr = '';
      tar.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      const done = exited(tar);
      try {
        for await (const chunk of chunks) {
          bytes += chunk.length;
          if (!tar.stdin.write(chunk)) await new Promise((res) => tar.stdin.once('drain', res));
        }
      } finally {
        tar.stdin.end();
      }
      const code = await done;
      if (code !== 0) throw new Error(`unpacking into ${incoming} exited with ${code}: ${stderr.trim()}`);
      // The slot may have been given an instance meanwhile: then the copy does not replace its data.
      this.refuseWhileHeld(r);
      fs.rmSync(r.dir, { recursive: true, force: true });
      fs.renameSync(incoming, r.dir);
    } finally {
      fs.rmSync(incoming, { recursive: true, force: true });
    }
    this.log.info({ volume: r.dir, bytes }, 'volume written by a migration');
    return bytes;
  }
}

function exited(p: import('node:child_process').ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    p.once('error', reject);
    p.once('close', (code, sig) => resolve(code ?? (sig ? 128 : 1)));
  });
}
