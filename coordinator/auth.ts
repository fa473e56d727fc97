// Admin API tokens. Each token has a name and a role: "read-only" may call the reads, "operator"
// may call everything. Tokens travel as `authorization: Bearer <token>` metadata (grpcurl -H).
// The tokens file holds sha256 hashes (or, for a trial, plain tokens):
//   tokens:
//     - { name: ci, role: operator, sha256: 9f86d0... }
//     - { name: grafana, role: read-only, token: s3cret }
// With no tokens file the Admin API is open (a warning says so at start).
import { createHash, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import YAML from 'yaml';
import * as grpc from '@grpc/grpc-js';
import { ConfigError, FieldViolation, PermissionDeniedError, UnauthenticatedError } from '../common/errors';

export type Role = 'read-only' | 'operator';

/** The Admin methods that change something, read everything at once (a snapshot) or run a command in an instance: operators only. */
export const WRITE_METHODS = new Set([
  'DrainNode', 'CordonNode', 'RemoveNode', 'ApplyApp', 'DeleteApp', 'RollbackApp', 'RestartApp', 'PromoteApp', 'ScaleApp', 'SetPolicy', 'DeletePolicy',
  'RegisterComponent', 'DeregisterComponent', 'SetQuota', 'DeleteQuota', 'ApplyPipeline', 'DeletePipeline', 'SubmitJob', 'SubmitJobs', 'DirectJobs', 'CancelJob',
  'SaveSnapshot', 'SetRegistryCredential', 'DeleteRegistryCredential', 'SetSecret', 'DeleteSecret', 'ExecInstance', 'ExecInteractive', 'ReplaceInstance',
]);

interface TokenEntry { name: string; role: Role; hash: Buffer }

export function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

export function loadTokens(file: string): TokenEntry[] {
  let doc: unknown;
  try {
    // Every value as the text written (YAML's failsafe schema): a token of digits such as
    // 0123456789 stays that, where YAML's default reading would make it the number 123456789.
    doc = YAML.parse(fs.readFileSync(file, 'utf8'), { schema: 'failsafe' });
  } catch (e) {
    throw new ConfigError([{ field: 'tokensFile', message: `cannot read ${file}: ${(e as Error).message}` }]);
  }
  const v: FieldViolation[] = [];
  const list = (doc as { tokens?: unknown[] })?.tokens;
  if (!Array.isArray(list) || !list.length) throw new ConfigError([{ field: 'tokensFile', message: `${file} must hold a non-empty "tokens" list` }]);
  const out = list.map((t, i) => {
    const e = t as Record<string, string>;
    if (!e.name) v.push({ field: `tokens[${i}].name`, message: 'is required' });
    if (e.role !== 'read-only' && e.role !== 'operator') v.push({ field: `tokens[${i}].role`, message: `must be read-only or operator, got ${JSON.stringify(e.role)}` });
    if (!e.sha256 && !e.token) v.push({ field: `tokens[${i}]`, message: 'needs sha256 (hex) or token' });
    if (e.sha256 && !/^[0-9a-f]{64}$/i.test(e.sha256)) v.push({ field: `tokens[${i}].sha256`, message: 'must be 64 hex characters' });
    return { name: e.name, role: e.role as Role, hash: e.sha256 ? Buffer.from(e.sha256, 'hex') : sha256(String(e.token ?? '')) };
  });
  if (v.length) throw new ConfigError(v);
  return out;
}

export class Authorizer {
  constructor(private tokens: TokenEntry[] | undefined) {}

  /** New tokens in place of the old (SIGHUP: the tokens file read again); on or off stays as it started. */
  replace(tokens: TokenEntry[]): void {
    if (!this.tokens) throw new RangeError('tokens were off at start');
    this.tokens = tokens;
  }

  get enabled(): boolean {
    return !!this.tokens;
  }

  /** The caller's token name, or throws UNAUTHENTICATED / PERMISSION_DENIED. */
  check(md: grpc.Metadata, method: string): string {
    if (!this.tokens) return 'anonymous';
    const header = String(md.get('authorization')[0] ?? '');
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    if (!m) throw new UnauthenticatedError('missing "authorization: Bearer <token>" metadata');
    const h = sha256(m[1]);
    const entry = this.tokens.find((t) => t.hash.length === h.length && timingSafeEqual(t.hash, h));
    if (!entry) throw new UnauthenticatedError('unknown token');
    if (WRITE_METHODS.has(method) && entry.role !== 'operator') throw new PermissionDeniedError(`token "${entry.name}" is ${entry.role}; ${method} needs the operator role`);
    return entry.name;
  }
}
