// A Docker registry (the HTTP API v2's pull side) on 127.0.0.1, serving images taken from the
// local Engine with `docker save`: what the agent's image pulls are tested against without
// reaching any registry off this host. The Engine treats registries on 127.0.0.0/8 as insecure
// (plain HTTP) by default. Optionally asks for basic auth, as a private registry would.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';

const MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';
const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The files of a tar archive (regular files only), by name. */
function untar(tar: Buffer): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  let off = 0;
  let longName: string | undefined;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const field = (a: number, n: number) => h.subarray(a, a + n).toString('utf8').replace(/\0.*$/s, '');
    const size = parseInt(field(124, 12).trim() || '0', 8);
    const type = String.fromCharCode(h[156] || 48);
    const prefix = field(345, 155);
    const name = longName ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
    const body = tar.subarray(off + 512, off + 512 + size);
    longName = undefined;
    if (type === 'x') {
      const m = /\d+ path=([^\n]*)\n/.exec(body.toString('utf8'));
      if (m) longName = m[1];
    } else if (type === 'L') {
      longName = body.toString('utf8').replace(/\0.*$/s, '');
    } else if (type === '0' || type === '\0') {
      files.set(name, Buffer.from(body));
    }
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

export interface RegistryRequest {
  method: string;
  path: string;
  authorized: boolean;
}

export class TestRegistry {
  readonly requests: RegistryRequest[] = [];
  private blobs = new Map<string, Buffer>();
  private manifests = new Map<string, Buffer>();

  private constructor(private readonly server: http.Server, readonly address: string, private readonly auth?: { username: string; password: string }) {}

  static async start(opts: { auth?: { username: string; password: string } } = {}): Promise<TestRegistry> {
    let reg: TestRegistry | undefined;
    const server = http.createServer((req, res) => reg!.handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    reg = new TestRegistry(server, `127.0.0.1:${(server.address() as AddressInfo).port}`, opts.auth);
    return reg;
  }

  /** Serves a local image as name:tag (e.g. tessera/pulltest:1); the reference to pull is `${address}/${name}:${tag}`. */
  publish(localImage: string, name: string, tag: string): string {
    const files = untar(execFileSync('docker', ['save', localImage], { maxBuffer: 1 << 30 }));
    const [m] = JSON.parse(files.get('manifest.json')!.toString()) as { Config: string; Layers: string[] }[];
    const config = files.get(m.Config)!;
    this.blobs.set(sha(config), config);
    const layers = m.Layers.map((l) => {
      const gz = gzipSync(files.get(l)!);
      this.blobs.set(sha(gz), gz);
      return { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', size: gz.length, digest: sha(gz) };
    });
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MANIFEST_V2,
      config: { mediaType: 'application/vnd.docker.container.image.v1+json', size: config.length, digest: sha(config) }, layers,
    }));
    this.manifests.set(`${name}:${tag}`, manifest);
    this.manifests.set(`${name}:${sha(manifest)}`, manifest);
    return `${this.address}/${name}:${tag}`;
  }

  /** Authorized requests for a tag's manifest: one per pull (the Engine asks by tag, then fetches what it lacks by digest). */
  manifestRequests(name: string, tag: string): RegistryRequest[] {
    return this.requests.filter((r) => r.path === `/v2/${name}/manifests/${tag}` && r.authorized);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = (req.url ?? '/').split('?')[0];
    const authorized = !this.auth || req.headers.authorization === `Basic ${Buffer.from(`${this.auth.username}:${this.auth.password}`).toString('base64')}`;
    this.requests.push({ method: req.method ?? '', path: url, authorized });
    const json = (code: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(code, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0', ...headers });
      res.end(JSON.stringify(body));
    };
    if (!authorized) return json(401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }, { 'www-authenticate': 'Basic realm="tessera-test-registry"' });
    if (url === '/v2/' || url === '/v2') return json(200, {});
    let m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url);
    if (m) {
      const body = this.manifests.get(`${m[1]}:${m[2]}`);
      if (!body) return json(404, { errors: [{ code: 'MANIFEST_UNKNOWN', message: `manifest unknown: ${m[1]}:${m[2]}` }] });
      res.writeHead(200, { 'content-type': MANIFEST_V2, 'content-length': body.length, 'docker-content-digest': sha(body), 'docker-distribution-api-version': 'registry/2.0' });
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    m = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(url);
    if (m) {
      const body = this.blobs.get(m[2]);
      if (!body) return json(404, { errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown' }] });
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'docker-content-digest': m[2] });
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    json(404, { errors: [{ code: 'NAME_UNKNOWN', message: `not found: ${url}` }] });
  }
}
