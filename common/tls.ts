// TLS material and peer identity. Every Tessera connection is mutual TLS unless a process runs
// with --insecure-dev: an agent's identity is its certificate (CN = node id, OU = agent), a
// coordinator's OU is coordinator, an operator's OU is admin (scripts/make-certs.sh).
import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { experimental } from '@grpc/grpc-js';
import { ConfigError, FieldViolation, fileViolations } from './errors';

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

/**
 * Certificates are required unless the process runs --insecure-dev, and they must be readable
 * and valid now (checked with the settings, so a process with an expired certificate exits 2
 * saying so instead of failing every handshake).
 */
export function tlsViolations(raw: TlsFiles & { insecureDev?: boolean }): FieldViolation[] {
  if (raw.insecureDev) return [];
  if (!(raw.tlsCa && raw.tlsCert && raw.tlsKey)) return [{ field: 'tlsCert', message: 'TLS is required: give tlsCa, tlsCert and tlsKey (scripts/make-certs.sh makes them), or --insecure-dev for plaintext on a trial' }];
  return fileViolations(() => loadTls(raw));
}
export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** When the certificate and the CA certificate stop being valid (ms since the epoch). */
  certNotAfterMs: number;
  caNotAfterMs: number;
  /** Certificates of a CA bundle that have expired while others in it are valid: harmless, to be removed. */
  caExpired: { subject: string; notAfterMs: number }[];
}

/** A certificate's validity in days left at which a daemon warns at start (metrics show it all along). */
export const EXPIRY_WARNING_DAYS = 30;

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
  const ca = read(`${prefix}Ca`, f.tlsCa);
  const cert = read(`${prefix}Cert`, f.tlsCert);
  const key = read(`${prefix}Key`, f.tlsKey);
  const now = Date.now();
  /** The certificate's end of validity, or a violation: not a certificate, expired, or not valid yet. */
  const validity = (field: string, file: string | undefined, pem: Buffer): number => {
    if (!pem.length) return 0;
    let from: number;
    let to: number;
    try {
      const x = new X509Certificate(pem);
      from = Date.parse(x.validFrom);
      to = Date.parse(x.validTo);
    } catch {
      v.push({ field, message: `${file} holds no PEM certificate` });
      return 0;
    }
    if (to <= now) v.push({ field, message: `the certificate in ${file} expired on ${new Date(to).toISOString()} (renew it: scripts/make-certs.sh)` });
    else if (from > now) v.push({ field, message: `the certificate in ${file} is not valid before ${new Date(from).toISOString()} (is this host's clock right?)` });
    return to;
  };
  // A CA file may be a bundle (during a CA change, the old CA and the new): every certificate in
  // it is checked. It is usable while one of them is valid; its end of validity is that of the
  // first to expire among the valid ones (the certificates it signed stop working then).
  const caExpired: TlsMaterial['caExpired'] = [];
  let caNotAfterMs = 0;
  const blocks = ca.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length <= 1) {
    caNotAfterMs = validity(`${prefix}Ca`, f.tlsCa, ca);
  } else {
    const certs = blocks.map((b) => {
      try {
        const x = new X509Certificate(b);
        return { subject: x.subject.replace(/\n/g, ','), from: Date.parse(x.validFrom), to: Date.parse(x.validTo) };
      } catch {
        return undefined;
      }
    });
    const valid = certs.filter((c) => c && c.from <= now && c.to > now) as { subject: string; to: number }[];
    if (certs.some((c) => !c)) v.push({ field: `${prefix}Ca`, message: `${f.tlsCa} holds a block that is not a PEM certificate` });
    else if (!valid.length) v.push({ field: `${prefix}Ca`, message: `no certificate in the CA bundle ${f.tlsCa} is valid now (${certs.map((c) => `${c!.subject}: ${new Date(c!.to).toISOString()}`).join('; ')}): renew it (scripts/make-certs.sh)` });
    else caNotAfterMs = Math.min(...valid.map((c) => c.to));
    for (const c of certs) if (c && c.to <= now) caExpired.push({ subject: c.subject, notAfterMs: c.to });
  }
  const certNotAfterMs = validity(`${prefix}Cert`, f.tlsCert, cert);
  if (!v.length) {
    // The key must be the certificate's (a renewal that copied one of the two files): else the
    // handshakes fail, or a server given them while running drops every new connection.
    try {
      createSecureContext({ key, cert });
    } catch (e) {
      v.push({ field: `${prefix}Key`, message: `${f.tlsKey} is not the private key of the certificate in ${f.tlsCert} (${(e as Error).message})` });
    }
  }
  if (v.length) throw new ConfigError(v);
  return { ca, cert, key, certNotAfterMs, caNotAfterMs, caExpired };
}

/**
 * The TLS material a daemon serves and dials with, which SIGHUP can replace while it runs (as
 * Nomad reloads its TLS configuration): servers take the new certificate for new handshakes and
 * channels for new connections (connections up keep theirs until they close). It is a grpc-js
 * certificate provider for both the CA and the identity.
 */
export class LiveTls implements experimental.CertificateProvider {
  private caListeners = new Set<experimental.CaCertificateUpdateListener>();
  private identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();

  /** prefix: the settings' names in errors (tls: tlsCa, tlsCert, tlsKey; etcd: etcdCa, ...). */
  constructor(public material: TlsMaterial, private files: TlsFiles, readonly prefix = 'tls') {}

  static load(files: TlsFiles, prefix = 'tls'): LiveTls {
    return new LiveTls(loadTls(files, prefix), files, prefix);
  }

  /**
   * Reads the files again (`files`: the settings compiled again, which may name others). Throws
   * ConfigError, keeping the material in use, when they do not load (unreadable, expired, a key
   * that is not the certificate's) or `check` refuses them. True when something changed.
   */
  reload(files: TlsFiles = this.files, check?: (m: TlsMaterial) => void): boolean {
    const m = loadTls(files, this.prefix);
    check?.(m);
    const same = m.ca.equals(this.material.ca) && m.cert.equals(this.material.cert) && m.key.equals(this.material.key);
    this.files = files;
    this.material = m;
    if (same) return false;
    for (const l of this.caListeners) l({ caCertificate: m.ca });
    for (const l of this.identityListeners) l({ certificate: m.cert, privateKey: m.key });
    return true;
  }

  addCaCertificateListener(l: experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(l);
    l({ caCertificate: this.material.ca });
  }
  removeCaCertificateListener(l: experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(l);
  }
  addIdentityCertificateListener(l: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.add(l);
    l({ certificate: this.material.cert, privateKey: this.material.key });
  }
  removeIdentityCertificateListener(l: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.delete(l);
  }
}

/**
 * Publishes when each certificate stops being valid (tessera_tls_certificate_expiry_timestamp_seconds,
 * for an alert well before) and warns at start when one has EXPIRY_WARNING_DAYS or fewer left.
 */
export function reportExpiry(
  certs: Record<string, number | (() => number)>,
  log: { warn(o: Record<string, unknown>, msg: string): void },
  metrics: { set(name: string, labels: Record<string, string>, v: number): void; onCollect(fn: () => void): void } | undefined,
  nowMs = Date.now(),
  expiredInBundles: Record<string, TlsMaterial['caExpired'] | undefined> = {},
): void {
  for (const [certificate, expired] of Object.entries(expiredInBundles)) {
    for (const c of expired ?? []) log.warn({ certificate, subject: c.subject, notAfter: new Date(c.notAfterMs).toISOString() }, 'a certificate in the CA bundle has expired (the others are valid): remove it from the bundle');
  }
  for (const [certificate, value] of Object.entries(certs)) {
    const at = typeof value === 'function' ? value : () => value;
    const notAfterMs = at();
    if (!notAfterMs) continue;
    // Set at each scrape (the metrics may start serving after this), from the material in use
    // (a getter: SIGHUP may replace it). Without metrics: the warnings only (a reload).
    metrics?.onCollect(() => metrics.set('tessera_tls_certificate_expiry_timestamp_seconds', { certificate }, Math.floor(at() / 1000)));
    const days = (notAfterMs - nowMs) / 86_400_000;
    if (days <= EXPIRY_WARNING_DAYS) log.warn({ certificate, notAfter: new Date(notAfterMs).toISOString(), daysLeft: Math.floor(days) }, 'TLS certificate expires soon: renew it (scripts/make-certs.sh) and restart the process');
  }
}

/**
 * SIGHUP's part for TLS, for both daemons: the certificate, key and CA files read again (those
 * the settings name now); new handshakes use them. The running material stays if they do not
 * load (the settings' compile refused them already) or `check` refuses them.
 */
export function reloadTls(live: LiveTls, files: { tlsCa?: string; tlsCert?: string; tlsKey?: string }, log: { info(o: Record<string, unknown>, m: string): void; warn(o: Record<string, unknown>, m: string): void }, check?: (m: TlsMaterial) => void): string[] {
  const p = live.prefix;
  const fields = [`${p}Ca`, `${p}Cert`, `${p}Key`];
  if (!live.reload(files, check)) return fields;
  const m = live.material;
  // The expiry metric's names: cert and ca for the daemon's own, etcd-cert and etcd-ca for etcd's.
  const name = (n: string) => (p === 'tls' ? n : `${p}-${n}`);
  log.info({ cert: files.tlsCert, notAfter: new Date(m.certNotAfterMs).toISOString(), caNotAfter: new Date(m.caNotAfterMs).toISOString() },
    p === 'etcd' ? 'etcd client certificates reloaded: new connections to etcd use them' : 'TLS certificates reloaded: new connections use them');
  reportExpiry({ [name('cert')]: m.certNotAfterMs, [name('ca')]: m.caNotAfterMs }, log, undefined, Date.now(), { [name('ca')]: m.caExpired });
  return fields;
}

/** The expiry metric's definition, for both daemons' metric lists. */
export const TLS_EXPIRY_METRIC = { name: 'tessera_tls_certificate_expiry_timestamp_seconds', help: 'when a TLS certificate this process uses stops being valid (unix seconds), by certificate (cert, ca, etcd-cert, etcd-ca)', type: 'gauge', labels: ['certificate'] } as const;

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
  const subject = new X509Certificate(pem).subject; // "O=tessera\nOU=agent\nCN=node-1"
  return /(?:^|\n)CN=([^\n]+)/.exec(subject)?.[1] ?? '';
}
