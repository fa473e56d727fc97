// The cluster's storage format (common/version.ts STORAGE_FORMAT): a leader records the format it
// writes, never lowering it, and a coordinator that knows only older formats does not lead (it
// would misread what a newer leader wrote). A downgrade guard in the manner of etcd's cluster
// version: an older member is refused, the operator upgrades it.
import type { Etcd3 } from 'etcd3';
import { withTimeout } from '../common/etcd';
import { STORAGE_FORMAT, VERSION } from '../common/version';
import type { Keys } from './keys';
import type { Op } from './store';

export class StorageFormatError extends Error {}

/** The format recorded in etcd (0: none yet, a cluster older than the record). */
export async function storedFormat(client: Etcd3, keys: Keys, timeoutMs = 5_000): Promise<number> {
  const v = await withTimeout(client.get(keys.storageFormat).string(), timeoutMs, 'storage format read');
  if (v === null) return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new StorageFormatError(`${keys.storageFormat} holds "${v.slice(0, 40)}", not a storage format: not leading a cluster whose state cannot be told apart`);
  return n;
}

/** Why this coordinator may not lead a cluster whose recorded format is `stored`; undefined when it may. */
export function formatRefusal(stored: number, keys: Keys): string | undefined {
  if (stored <= STORAGE_FORMAT) return undefined;
  return `the cluster's state under ${keys.prefix} was written by a newer Tessera (storage format ${stored}); this coordinator (${VERSION}) reads formats up to ${STORAGE_FORMAT} and does not lead it: upgrade it`;
}

/** The write that records this coordinator's format, when the recorded one is older. */
export function formatOps(stored: number, keys: Keys): Op[] {
  return stored < STORAGE_FORMAT ? [{ type: 'put', key: keys.storageFormat, value: String(STORAGE_FORMAT) }] : [];
}
