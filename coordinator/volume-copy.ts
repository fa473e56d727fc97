// The leader's copy of a slot's volume from the agent that holds it to the agent the slot moved
// to (VolumeSpec.migrate): AgentVolumes.FetchVolume on one, its chunks written as they come to
// AgentVolumes.PutVolume on the other, with backpressure; nothing is kept on the leader.
import * as grpc from '@grpc/grpc-js';
import { CHANNEL_OPTIONS, clientCredentials } from '../common/grpc';
import { tesseraProto } from '../common/proto';
import type { LiveTls } from '../common/tls';
import type { VolumeChunk__Output } from '../common/generated/tessera/v1/VolumeChunk';
import type { VolumeRef } from '../common/generated/tessera/v1/VolumeRef';
import type { VolumeWritten__Output } from '../common/generated/tessera/v1/VolumeWritten';
import type { AgentVolumesClient } from '../common/generated/tessera/v1/AgentVolumes';

/** At most this long for one volume. */
export const VOLUME_COPY_DEADLINE_MS = 30 * 60_000;

export class VolumeCopier {
  private clients = new Map<string, AgentVolumesClient>();

  constructor(private readonly tls?: LiveTls) {}

  private client(endpoint: string): AgentVolumesClient {
    let c = this.clients.get(endpoint);
    if (!c) {
      c = new (tesseraProto().AgentVolumes)(endpoint, clientCredentials(this.tls), CHANNEL_OPTIONS) as unknown as AgentVolumesClient;
      this.clients.set(endpoint, c);
    }
    return c;
  }

  /** Copies one volume; the bytes of its tar stream (0: the source node had none). */
  copy(from: string, to: string, ref: VolumeRef): Promise<number> {
    const deadline = Date.now() + VOLUME_COPY_DEADLINE_MS;
    return new Promise<number>((resolve, reject) => {
      let settled = false;
      const done = (err?: Error, bytes = 0) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve(bytes);
      };
      const src = this.client(from).fetchVolume(ref, { deadline });
      let first = true;
      const dst = this.client(to).putVolume({ deadline }, (err: grpc.ServiceError | null, res?: VolumeWritten__Output) => {
        if (err) {
          src.cancel();
          return done(named(err, `writing it on ${to}`));
        }
        done(undefined, Number(res?.bytes ?? 0));
      });
      dst.write({ ref });
      src.on('data', (c: VolumeChunk__Output) => {
        first = false;
        if (!dst.write({ data: c.data })) {
          src.pause();
          dst.once('drain', () => src.resume());
        }
      });
      src.on('end', () => dst.end());
      src.on('error', (err: grpc.ServiceError) => {
        dst.cancel();
        // The source never had the volume (the slot's instance never wrote one): nothing to copy.
        if (err.code === grpc.status.NOT_FOUND && first) return done(undefined, 0);
        done(named(err, `reading it on ${from}`));
      });
    });
  }

  /** Removes the copy a node holds (after it was copied elsewhere). */
  drop(endpoint: string, ref: VolumeRef): Promise<void> {
    return new Promise((resolve, reject) => {
      this.client(endpoint).dropVolume(ref, { deadline: Date.now() + 30_000 }, (err: grpc.ServiceError | null) => (err ? reject(named(err, `removing it on ${endpoint}`)) : resolve()));
    });
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}

function named(err: grpc.ServiceError, doing: string): Error {
  return Object.assign(new Error(`${doing}: ${err.details || err.message}`), { code: err.code });
}
