// TLS material and peer identity. Every Tessera connection is mutual TLS unless a process runs
// with --insecure-dev: an agent's identity is its certificate (CN = node id, OU = agent), a
// coordinator's OU is coordinator, an operator's OU is admin (scripts/make-certs.sh).
import * as fs from 'node:fs';
import { ConfigError, FieldViolation } from './errors';

export interface TlsFiles { tlsCa?: string; tlsCert?: string; tlsKey?: string }

/** The TLS settings every daemon has, as a schema fragment (see common/config.ts). */
export function tlsSchema(certDoc: string) {
  return {
    tlsCa: { type: 'string', doc: 'CA certificate (PEM) that signs every Tessera certificate', env: 'TESSERA_TLS_CA' },
    tlsCert: { type: 'string', doc: certDoc, env: 'TESSERA_TLS_CERT' },
    tlsKey: { type: 'string', doc: 'the private key of that certificate', env: 'TESSERA_TLS_KEY' },
    insecureDev: { type: 'bool', doc: 'plaintext gRPC without certificates: for a trial on loopback only (logged as a warning)', env: 'TESSERA_INSECURE_DEV', default: false },
  } as const;
}

/** Certificates are required unless the process runs --insecure-dev. */
export function tlsViolations(raw: TlsFiles & { insecureDev?: boolean }): FieldViolation[] {
  if (raw.insecureDev || (raw.tlsCa && raw.tlsCert && raw.tlsKey)) return [];
  return [{ field: 'tlsCert', message: 'TLS is required: give tlsCa, tlsCert and tlsKey (scripts/make-certs.sh makes them), or --insecure-dev for plaintext on a trial' }];
}
export interface TlsMaterial { ca: Buffer; cert: Buffer; key: Buffer }

export type PeerRole = 'agent' | 'coordinator' | 'admin' | 'unknown' | 'plaintext';

/** Reads the three files, or throws ConfigError naming each one that is missing or unreadable. */
export function loadTls(f: TlsFiles, prefix = 'tls'): TlsMaterial {
  const v: FieldViolation[] = [];
  const read = (field: string, file?: string) => {
    if (!file) {
      v.push({ field, message: 'is required' });
      return Buffer.alloc(0);
    }
    try {
      return fs.readFileSync(file);
    } catch (e) {
      v.push({ field, message: `cannot read ${file}: ${(e as Error).message}` });
      return Buffer.alloc(0);
    }
  };
  const out = { ca: read(`${prefix}Ca`, f.tlsCa), cert: read(`${prefix}Cert`, f.tlsCert), key: read(`${prefix}Key`, f.tlsKey) };
  if (v.length) throw new ConfigError(v);
  return out;
}

/** Who is calling, from the verified client certificate of this call. */
export function peerIdentity(call: { getAuthContext(): { transportSecurityType?: string; sslPeerCertificate?: { subject?: unknown } } }): { role: PeerRole; cn: string } {
  const ctx = call.getAuthContext();
  if (ctx.transportSecurityType !== 'ssl') return { role: 'plaintext', cn: '' };
  const subject = ctx.sslPeerCertificate?.subject as unknown as Record<string, string> | undefined;
  const ou = String(subject?.OU ?? '');
  const role: PeerRole = ou === 'agent' || ou === 'coordinator' || ou === 'admin' ? ou : 'unknown';
  return { role, cn: String(subject?.CN ?? '') };
}

/** The CN of a certificate file (an agent's node id), without extra dependencies. */
export function certCommonName(pem: Buffer): string {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { X509Certificate } = require('node:crypto') as typeof import('node:crypto');
  const subject = new X509Certificate(pem).subject; // "O=tessera\nOU=agent\nCN=node-1"
  return /(?:^|\n)CN=([^\n]+)/.exec(subject)?.[1] ?? '';
}
