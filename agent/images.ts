// Images: the agent pulls an instance's image from its registry by the spec's pull policy
// (Kubernetes' imagePullPolicy, Nomad's docker driver pulling what the host lacks), with the
// credentials of a Docker config file (--registry-auth) for private registries. One pull per
// image at a time: instances that need the same image wait for the same pull.
import { registryOf } from '../common/image-ref';
import * as fs from 'node:fs';
import type Docker from 'dockerode';

export type PullPolicy = 'IfNotPresent' | 'Always' | 'Never';

/** The image is not on this host and the policy says never pull it. */
export class ImageMissingError extends Error {}

/** The registry did not give the image (unreachable, unknown, unauthorized): the start failed, and is tried again by the restart policy. */
export class ImagePullError extends Error {}

export interface RegistryAuth {
  username: string;
  password: string;
  serveraddress: string;
}

export interface PullProgress {
  /** Bytes downloaded so far over all layers, and their total as far as the registry said. */
  currentBytes: number;
  totalBytes: number;
}

export { registryOf };

const HUB_KEYS = ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io'];

/**
 * The credentials for an image's registry in a Docker config file's `auths` (what `docker login`
 * writes: `auth` is base64 of user:password; `username` and `password` are read too). Undefined
 * when the file names no credentials for that registry. Throws when the file cannot be read.
 */
export function authFor(image: string, config: unknown): RegistryAuth | undefined {
  const auths = (config as { auths?: Record<string, { auth?: string; username?: string; password?: string }> })?.auths ?? {};
  const registry = registryOf(image);
  const keys = registry === 'docker.io' ? HUB_KEYS : [registry, `https://${registry}`, `http://${registry}`, `https://${registry}/v1/`, `https://${registry}/v2/`];
  for (const k of keys) {
    const a = auths[k];
    if (!a) continue;
    if (a.username) return { username: a.username, password: a.password ?? '', serveraddress: registry === 'docker.io' ? HUB_KEYS[0] : registry };
    if (a.auth) {
      const text = Buffer.from(a.auth, 'base64').toString('utf8');
      const colon = text.indexOf(':');
      if (colon < 0) continue;
      return { username: text.slice(0, colon), password: text.slice(colon + 1), serveraddress: registry === 'docker.io' ? HUB_KEYS[0] : registry };
    }
  }
  return undefined;
}

/** Reads a Docker config file (JSON with `auths`), with the reason it cannot be used. */
export function readAuthFile(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`registry auth file ${file}: ${(err as Error).message}`);
  }
  try {
    const o = JSON.parse(text) as unknown;
    if (!o || typeof o !== 'object') throw new Error('not a JSON object');
    return o;
  } catch (err) {
    throw new Error(`registry auth file ${file} is not a Docker config (JSON with "auths"): ${(err as Error).message}`);
  }
}

export class ImagePuller {
  private pulls = new Map<string, Promise<void>>();
  /** Told of each image pulled (image garbage collection tracks what the agent brought). */
  onPulled?: (image: string) => void;

  constructor(private readonly docker: Docker, private readonly authFile?: string) {}

  /** Whether this host has the image. */
  async present(image: string): Promise<boolean> {
    try {
      await this.docker.getImage(image).inspect();
      return true;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return false;
      throw err;
    }
  }

  /**
   * Pulls the image (what a host without it, or a policy of Always, needs before a container is
   * created): one pull per image at a time, callers of the same image share it. A pull that
   * fails rejects with ImagePullError and the registry's reason.
   */
  pull(image: string, onProgress?: (p: PullProgress) => void, credential?: { server: string; username: string; password: string } | null): Promise<void> {
    // Shared by callers with the same login only: one with a wrong password must not spoil a pull
    // that another's would have made.
    const key = `${image}\u0000${credential?.server ?? ''}\u0000${credential?.username ?? ''}\u0000${credential?.password ?? ''}`;
    let p = this.pulls.get(key);
    if (!p) {
      p = this.pullNow(image, onProgress, credential ?? undefined).then(() => this.onPulled?.(image)).finally(() => this.pulls.delete(key));
      this.pulls.set(key, p);
    }
    return p;
  }

  /** credential: the one the instance's spec names (the leader sends it); else the --registry-auth file's. */
  private async pullNow(image: string, onProgress?: (p: PullProgress) => void, credential?: { server: string; username: string; password: string }): Promise<void> {
    let auth: RegistryAuth | undefined;
    try {
      auth = credential
        ? { username: credential.username, password: credential.password, serveraddress: credential.server === 'docker.io' ? HUB_KEYS[0] : credential.server }
        : this.authFile ? authFor(image, readAuthFile(this.authFile)) : undefined;
    } catch (err) {
      throw new ImagePullError(`image pull failed for ${image}: ${(err as Error).message}`);
    }
    // A reference without a tag or digest would pull every tag: Docker's own default is latest.
    const ref = /@|:[^/]*$/.test(image) ? image : `${image}:latest`;
    const layers = new Map<string, { current: number; total: number }>();
    try {
      const stream = await this.docker.pull(ref, auth ? { authconfig: auth } : {});
      await new Promise<void>((resolve, reject) => {
        this.docker.modem.followProgress(stream, (err: Error | null) => (err ? reject(err) : resolve()), (e: { id?: string; status?: string; error?: string; progressDetail?: { current?: number; total?: number } }) => {
          if (!onProgress || !e.id || !e.progressDetail?.total) return;
          layers.set(e.id, { current: e.progressDetail.current ?? 0, total: e.progressDetail.total });
          let currentBytes = 0;
          let totalBytes = 0;
          for (const l of layers.values()) {
            currentBytes += l.current;
            totalBytes += l.total;
          }
          onProgress({ currentBytes, totalBytes });
        });
      });
    } catch (err) {
      const e = err as { statusCode?: number; json?: { message?: string }; message: string };
      const why = e.json?.message ?? e.message.replace(/^\(HTTP code \d+\) [a-z ]+ - /, '');
      throw new ImagePullError(`image pull failed for ${image}: ${why.trim()}`);
    }
  }
}
