// Encryption at rest of the secrets the leader stores in etcd (registry passwords), as Nomad's
// keyring and Kubernetes' EncryptionConfiguration do it: with --secrets-key-file, a secret is
// sealed with AES-256-GCM before it is written, so etcd, its snapshots and its backups hold only
// ciphertext. The file lists named 256-bit keys, one a line (`name:base64`); the first seals, and
// every one opens, which is how keys rotate: put the new key first on every coordinator and
// restart them (the leader reseals what an older key sealed), then drop the old key.
//
// A sealed value names its key and is bound to where it belongs (the additional data: e.g. the
// credential's name), so a value copied to another credential does not open.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { ConfigError } from '../common/errors';

export interface Sealed {
  /** The key's name in the key file. */
  k: string;
  iv: string;
  tag: string;
  data: string;
}

const ALG = 'aes-256-gcm';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export class Keyring {
  constructor(private keys: { name: string; key: Buffer }[]) {
    if (!keys.length) throw new RangeError('a keyring needs a key');
  }

  /** Takes the keys of another keyring (SIGHUP: the key file read again); those holding this one see them. */
  replace(from: Keyring): void {
    this.keys = from.keys;
  }

  /** The key that seals: the first of the file. */
  get primary(): string { return this.keys[0].name; }
  get names(): string[] { return this.keys.map((k) => k.name); }
  /** Each key as name:fingerprint (8 hex digits of a hash of it: tells keys apart, gives nothing of them away), the sealing one first. */
  fingerprints(): string[] {
    return this.keys.map((k) => `${k.name}:${createHash('sha256').update('tessera secrets key\0').update(k.key).digest('hex').slice(0, 8)}`);
  }

  seal(plaintext: string, aad: string): Sealed {
    const { name, key } = this.keys[0];
    const iv = randomBytes(12);
    const c = createCipheriv(ALG, key, iv);
    c.setAAD(Buffer.from(aad));
    const data = Buffer.concat([c.update(plaintext, 'utf8'), c.final()]);
    return { k: name, iv: iv.toString('base64'), tag: c.getAuthTag().toString('base64'), data: data.toString('base64') };
  }

  /** The plaintext, or an Error saying why it cannot be had (a key this coordinator lacks, a value altered or moved). */
  open(s: Sealed, aad: string): string {
    const k = this.keys.find((x) => x.name === s.k);
    if (!k) throw new Error(`sealed with key "${s.k}", which this coordinator's --secrets-key-file does not hold (it has ${this.names.join(', ')})`);
    try {
      const d = createDecipheriv(ALG, k.key, Buffer.from(s.iv, 'base64'));
      d.setAAD(Buffer.from(aad));
      d.setAuthTag(Buffer.from(s.tag, 'base64'));
      return Buffer.concat([d.update(Buffer.from(s.data, 'base64')), d.final()]).toString('utf8');
    } catch {
      throw new Error(`does not open with key "${s.k}": the stored value was altered, or belongs elsewhere`);
    }
  }
}

/** Says why a sealed value cannot be opened without a keyring. */
export function noKeyring(s: Sealed): Error {
  return new Error(`sealed with key "${s.k}", and this coordinator has no --secrets-key-file`);
}

export function isSealed(v: unknown): v is Sealed {
  const s = v as Partial<Sealed> | null;
  return !!s && typeof s === 'object' && typeof s.k === 'string' && typeof s.iv === 'string' && typeof s.tag === 'string' && typeof s.data === 'string';
}

/**
 * Parses a key file: `name:base64-of-32-bytes` a line, blank lines and `#` comments skipped.
 * Refuses (ConfigError, field secretsKeyFile) a file it cannot read, a line without a name, a
 * key of another length, a name given twice, or a file without keys; and a file that any user
 * may read, or its group change (as ssh refuses such a private key).
 */
export function loadKeyring(file: string): Keyring {
  const bad = (message: string) => new ConfigError([{ field: 'secretsKeyFile', message }]);
  let text: string;
  let mode: number;
  try {
    text = fs.readFileSync(file, 'utf8');
    mode = fs.statSync(file).mode;
  } catch (e) {
    throw bad(`cannot read ${file}: ${(e as Error).message}`);
  }
  // Group read is how a service user reads a root-owned file (0640 root:tessera, as the TLS keys).
  if (mode & 0o027) throw bad(`${file} may be read or changed by others than its owner and group (mode ${(mode & 0o777).toString(8)}): chmod 600 it (or 640, with the service's group)`);
  const keys: { name: string; key: Buffer }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const at = `${file} line ${i + 1}`;
    const colon = line.indexOf(':');
    const name = colon < 0 ? '' : line.slice(0, colon);
    if (!NAME_RE.test(name)) throw bad(`${at}: expected name:base64-key with a name of letters, digits, ".", "_" or "-" (tessera operator keygen makes one)`);
    const b64 = line.slice(colon + 1).trim();
    const key = Buffer.from(b64, 'base64');
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || key.length !== 32) throw bad(`${at}: key "${name}" must be 32 bytes in base64 (44 characters), got ${/^[A-Za-z0-9+/]+={0,2}$/.test(b64) ? `${key.length} bytes` : 'something that is not base64'}`);
    if (keys.some((k) => k.name === name)) throw bad(`${at}: key "${name}" is given twice`);
    keys.push({ name, key });
  });
  if (!keys.length) throw bad(`${file} holds no key`);
  return new Keyring(keys);
}

/** A new key file line: `name:base64` of 32 random bytes. */
export function newKeyLine(name: string): string {
  if (!NAME_RE.test(name)) throw new RangeError(`a key name is letters, digits, ".", "_" or "-", got ${JSON.stringify(name)}`);
  return `${name}:${randomBytes(32).toString('base64')}`;
}
