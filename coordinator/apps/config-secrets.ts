// What components name and the leader hands to agents without ever showing it: registry
// credentials (Kubernetes' image pull secrets: a login the agent pulls an image with) and
// secrets (Kubernetes' Secrets, Nomad's Variables: values for a component's environment,
// secretEnv VAR -> "SECRET/KEY"). Both are stored sealed at rest with --secrets-key-file
// (SealedRecords); an app is refused when it names one that is missing or that this leader
// cannot open, and one an app's current or stable version names cannot be deleted (nor, for a
// secret, lose a key in use; for a credential, move to another registry).
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, type FieldViolation } from '../../common/errors';
import { registryOf } from '../../common/image-ref';
import type { Logger } from '../../common/logger';
import type { RegistryAuth } from '../../common/generated/tessera/v1/RegistryAuth';
import type { RegistryCredential } from '../../common/generated/tessera/v1/RegistryCredential';
import type { Secret } from '../../common/generated/tessera/v1/Secret';
import type { Keys } from '../keys';
import type { Keyring } from '../secrets';
import { SealedRecords } from '../sealed-records';
import { attributed, type Store } from '../store';
import { parseSecretRef, SECRET_KEY_RE, SECRET_NAME_RE, type NormalAppSpec, type NormalComponent } from './spec';

interface CredentialMeta { server: string; username: string; updatedAtMs: number; by?: string }
interface SecretMeta { keys: string[]; updatedAtMs: number; by?: string; version: number }

/** A secret's values at most (all keys and values together), as Kubernetes bounds a Secret (1 MiB there). */
export const MAX_SECRET_BYTES = 64 * 1024;

/** The components of each app's current version and its stable one (an auto-revert's target). */
export type ComponentsInUse = () => Iterable<{ app: string; component: NormalComponent }>;

/** The environment a component's secretEnv resolves to, or why it cannot be. */
export type ResolvedSecretEnv = { env: Record<string, string>; names: string[]; missing?: undefined } | { missing: string };

export class ConfigSecrets {
  private readonly credentials: SealedRecords<CredentialMeta>;
  private readonly secrets: SealedRecords<SecretMeta>;
  /** Opened secrets' data, parsed once per version. */
  private parsed = new Map<string, { version: number; data: Record<string, string> }>();

  constructor(private readonly store: Store, private readonly keys: Keys, keyring: () => Keyring | undefined, private readonly inUse: ComponentsInUse, log: Logger) {
    this.credentials = new SealedRecords({ what: 'registry credential', eventKind: 'registry-credential', plainField: 'password', keyOf: (n) => keys.registryCredential(n), keyring }, store, log);
    this.secrets = new SealedRecords({ what: 'secret', eventKind: 'secret', plainField: 'data', keyOf: (n) => keys.secret(n), keyring }, store, log);
  }

  async load(): Promise<void> {
    const c = this.store.client;
    const [creds, secrets] = await Promise.all([
      c.getAll().prefix(this.keys.registryCredentials).strings(),
      c.getAll().prefix(this.keys.secrets).strings(),
    ]);
    this.parsed.clear();
    await this.credentials.load(creds, this.keys.registryCredentials);
    await this.secrets.load(secrets, this.keys.secrets);
  }

  /** The key file was read again (SIGHUP). */
  async rekeyed(): Promise<void> {
    await this.credentials.rekeyed();
    await this.secrets.rekeyed();
  }

  /**
   * Each registry credential and secret a spec names exists (with the key named) and fits; one
   * this leader cannot open fails the spec with FAILED_PRECONDITION (not the spec's fault: set it
   * again, or give the leader its key).
   */
  check(spec: NormalAppSpec, at = 'components'): void {
    const v: FieldViolation[] = [];
    const unreadable: string[] = [];
    spec.components.forEach((c, i) => {
      if (c.imagePullCredential) {
        const cred = this.credentials.get(c.imagePullCredential);
        const field = `${at}[${i}].imagePullCredential`;
        if (!cred) v.push({ field, message: `no registry credential "${c.imagePullCredential}" (set one with tessera registry-auth set)` });
        else if (cred.unreadable) unreadable.push(`registry credential ${c.imagePullCredential} (${field}) cannot be opened: ${cred.unreadable}`);
        else if (cred.meta.server !== registryOf(c.image)) v.push({ field, message: `registry credential "${c.imagePullCredential}" is for ${cred.meta.server}, and the image ${c.image} is from ${registryOf(c.image)}` });
      }
      for (const [name, ref] of Object.entries(c.secretEnv ?? {})) {
        const field = `${at}[${i}].secretEnv.${name}`;
        const { secret, key } = parseSecretRef(ref)!;
        const s = this.secrets.get(secret);
        if (!s) v.push({ field, message: `no secret "${secret}" (set one with tessera secret set)` });
        else if (s.unreadable) unreadable.push(`secret ${secret} (${field}) cannot be opened: ${s.unreadable}`);
        else if (!s.meta.keys.includes(key)) v.push({ field, message: `secret "${secret}" has no key "${key}" (it has ${s.meta.keys.join(', ')})` });
      }
    });
    if (v.length) throw new InvalidArgumentError(v);
    if (unreadable.length) throw new FailedPreconditionError(unreadable.join('; '));
  }

  // ─────────────────────────── registry credentials ───────────────────────────

  async setRegistryCredential(c: Partial<RegistryCredential> | null | undefined, by = ''): Promise<RegistryCredential> {
    const name = c?.name ?? '';
    const v: FieldViolation[] = [];
    if (!SECRET_NAME_RE.test(name)) v.push({ field: 'credential.name', message: `must be 1-63 characters of a-z, 0-9 and "-", starting with a letter; got ${JSON.stringify(name)}` });
    const server = (c?.server ?? '').trim();
    if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(server)) v.push({ field: 'credential.server', message: `must be a registry as image references name it (host[:port], or docker.io), without a scheme or path; got ${JSON.stringify(c?.server ?? '')}` });
    if (!c?.username) v.push({ field: 'credential.username', message: 'is required' });
    if (!c?.password) v.push({ field: 'credential.password', message: 'is required' });
    if (v.length) throw new InvalidArgumentError(v);
    // Moving a credential in use to another registry would leave its components' images without
    // it (and fail the next apply, a scaling policy's included).
    const elsewhere = this.credentials.has(name) ? this.naming((x) => x.imagePullCredential === name).filter((x) => registryOf(x.image) !== server) : [];
    if (elsewhere.length) throw new FailedPreconditionError(`registry credential ${name} is named by ${elsewhere.map((x) => `${x.app}/${x.component} (image from ${registryOf(x.image)})`).join(', ')}: it cannot move to ${server}`);
    const meta: CredentialMeta = { server, username: c!.username!, updatedAtMs: Date.now(), ...(by ? { by } : {}) };
    const { value, held } = this.credentials.prepare(name, meta, c!.password!);
    await this.store.commit([{ type: 'put', key: this.keys.registryCredential(name), value }], [attributed({
      kind: 'registry-credential.set', subject: name, message: `registry credential ${name}: ${meta.username} at ${server}`, fields: { server, username: meta.username },
    }, by)]);
    this.credentials.commit(name, held);
    return this.credentialOf(name);
  }

  async deleteRegistryCredential(name: string, by = ''): Promise<RegistryCredential> {
    if (!this.credentials.has(name)) throw new NotFoundError('registry credential', name);
    const cred = this.credentialOf(name);
    // A credential an app runs with stays: its instances would fail their next pull.
    if (cred.usedBy?.length) throw new FailedPreconditionError(`registry credential ${name} is named by ${cred.usedBy.join(', ')} (the current or the stable version): apply those without it first, and let the rollout finish`);
    await this.store.commit([{ type: 'delete', key: this.keys.registryCredential(name) }], [attributed({ kind: 'registry-credential.deleted', subject: name, message: `registry credential ${name} deleted` }, by)]);
    this.credentials.commit(name, undefined);
    return cred;
  }

  listRegistryCredentials(name = ''): RegistryCredential[] {
    return this.credentials.names().filter((n) => !name || n === name).map((n) => this.credentialOf(n));
  }

  /** The login a component's image is pulled with: none when it names none, or one deleted meanwhile or that this leader cannot open (the agent's own credentials then). */
  pullAuth(comp: NormalComponent): RegistryAuth | undefined {
    const cred = comp.imagePullCredential ? this.credentials.get(comp.imagePullCredential) : undefined;
    return cred && !cred.unreadable ? { server: cred.meta.server, username: cred.meta.username, password: cred.plain } : undefined;
  }

  /** The credential as the API shows it: never its password. */
  private credentialOf(name: string): RegistryCredential {
    const c = this.credentials.get(name)!;
    const usedBy = pairs(this.naming((x) => x.imagePullCredential === name));
    return { name, server: c.meta.server, username: c.meta.username, password: '', updatedAtMs: c.meta.updatedAtMs, by: c.meta.by ?? '', usedBy, atRest: this.credentials.atRest(name) };
  }

  // ─────────────────────────────── secrets ───────────────────────────────

  /** Sets a secret's whole data (a key left out is removed: refused while a component names it). */
  async setSecret(s: Partial<Secret> | null | undefined, by = ''): Promise<Secret> {
    const name = s?.name ?? '';
    const data = (s?.data ?? {}) as Record<string, string>;
    const v: FieldViolation[] = [];
    if (!SECRET_NAME_RE.test(name)) v.push({ field: 'secret.name', message: `must be 1-63 characters of a-z, 0-9 and "-", starting with a letter; got ${JSON.stringify(name)}` });
    const keys = Object.keys(data).sort();
    if (!keys.length) v.push({ field: 'secret.data', message: 'needs at least one key (delete the secret to remove it)' });
    let bytes = 0;
    for (const k of keys) {
      if (!SECRET_KEY_RE.test(k)) v.push({ field: `secret.data.${k}`, message: 'keys are 1-253 characters of letters, digits, "_", "." or "-"' });
      else if (data[k].includes('\0')) v.push({ field: `secret.data.${k}`, message: 'must not hold a NUL byte (an environment value cannot)' });
      bytes += Buffer.byteLength(k) + Buffer.byteLength(data[k]);
    }
    if (bytes > MAX_SECRET_BYTES) v.push({ field: 'secret.data', message: `is ${bytes} bytes; a secret holds at most ${MAX_SECRET_BYTES}` });
    if (v.length) throw new InvalidArgumentError(v);
    // A key a component's environment takes stays, as a credential in use stays.
    const lost = this.secretUsers(name).filter((u) => !keys.includes(u.key));
    if (lost.length) throw new FailedPreconditionError(`secret ${name}: ${lost.map((u) => `key ${u.key} is named by ${u.app}/${u.component} (secretEnv.${u.env})`).join(', ')}: keep it, or apply those without it first`);
    const prev = this.secrets.get(name);
    const meta: SecretMeta = { keys, updatedAtMs: Date.now(), ...(by ? { by } : {}), version: (prev?.meta.version ?? 0) + 1 };
    const { value, held } = this.secrets.prepare(name, meta, JSON.stringify(Object.fromEntries(keys.map((k) => [k, data[k]]))));
    await this.store.commit([{ type: 'put', key: this.keys.secret(name), value }], [attributed({
      kind: 'secret.set', subject: name, message: `secret ${name} version ${meta.version}: ${keys.join(', ')}`, fields: { keys: keys.join(','), version: String(meta.version) },
    }, by)]);
    this.secrets.commit(name, held);
    return this.secretOf(name);
  }

  async deleteSecret(name: string, by = ''): Promise<Secret> {
    if (!this.secrets.has(name)) throw new NotFoundError('secret', name);
    const s = this.secretOf(name);
    if (s.usedBy?.length) throw new FailedPreconditionError(`secret ${name} is named by ${s.usedBy.join(', ')} (the current or the stable version): apply those without it first, and let the rollout finish`);
    await this.store.commit([{ type: 'delete', key: this.keys.secret(name) }], [attributed({ kind: 'secret.deleted', subject: name, message: `secret ${name} deleted` }, by)]);
    this.secrets.commit(name, undefined);
    this.parsed.delete(name);
    return s;
  }

  listSecrets(name = ''): Secret[] {
    return this.secrets.names().filter((n) => !name || n === name).map((n) => this.secretOf(n));
  }

  /** A component's secretEnv with its values, as a RUN hands them to the agent. */
  secretEnv(comp: NormalComponent): ResolvedSecretEnv {
    const env: Record<string, string> = {};
    for (const [name, ref] of Object.entries(comp.secretEnv ?? {})) {
      const { secret, key } = parseSecretRef(ref)!;
      const s = this.secrets.get(secret);
      if (!s) return { missing: `secret ${secret} (secretEnv.${name}) does not exist` };
      if (s.unreadable) return { missing: `secret ${secret} (secretEnv.${name}) cannot be opened: ${s.unreadable}` };
      let p = this.parsed.get(secret);
      if (!p || p.version !== s.meta.version) this.parsed.set(secret, p = { version: s.meta.version, data: JSON.parse(s.plain) as Record<string, string> });
      if (!Object.hasOwn(p.data, key)) return { missing: `secret ${secret} has no key ${key} (secretEnv.${name})` };
      env[name] = p.data[key];
    }
    return { env, names: Object.keys(env) };
  }

  private secretOf(name: string): Secret {
    const s = this.secrets.get(name)!;
    return {
      name, data: {}, keys: s.meta.keys, updatedAtMs: s.meta.updatedAtMs, by: s.meta.by ?? '', version: s.meta.version,
      usedBy: [...new Set(this.secretUsers(name).map((u) => `${u.app}/${u.component}`))].sort(), atRest: this.secrets.atRest(name),
    };
  }

  private secretUsers(name: string): { app: string; component: string; env: string; key: string }[] {
    const out = new Map<string, { app: string; component: string; env: string; key: string }>();
    for (const { app, component } of this.inUse()) {
      for (const [env, ref] of Object.entries(component.secretEnv ?? {})) {
        const r = parseSecretRef(ref);
        if (r?.secret === name) out.set(`${app}/${component.name}/${env}/${r.key}`, { app, component: component.name, env, key: r.key });
      }
    }
    return [...out.values()];
  }

  /** The components in use matching a test, each app/component once. */
  private naming(test: (c: NormalComponent) => boolean): { app: string; component: string; image: string }[] {
    const out = new Map<string, { app: string; component: string; image: string }>();
    for (const { app, component } of this.inUse()) {
      if (test(component) && !out.has(`${app}/${component.name}`)) out.set(`${app}/${component.name}`, { app, component: component.name, image: component.image });
    }
    return [...out.values()];
  }
}

function pairs(xs: { app: string; component: string }[]): string[] {
  return xs.map((x) => `${x.app}/${x.component}`);
}
