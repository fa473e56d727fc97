import * as fs from 'node:fs';
import * as path from 'node:path';

/** The repository root: the nearest folder above this file that holds `protos/`. */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'protos')) && fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find the Tessera root above ${__dirname}`);
    dir = up;
  }
}

export const VERSION: string = (() => {
  try {
    return JSON.parse(fs.readFileSync(path.join(repoRoot(), 'package.json'), 'utf8')).version as string;
  } catch {
    return '0.0.0';
  }
})();

/**
 * The format of what a leader writes in etcd, raised when a coordinator writes something an older
 * one would misread. A leader records it (`<prefix>cluster/storage-format`, never lowered); a
 * coordinator whose format is lower does not lead that cluster (etcd refuses a member older than
 * its cluster version the same way): an older leader would, for one, not see the shared end
 * records and would run ended jobs again.
 *   1  everything before shared end records
 *   2  shared end records of jobs (jobs/ended/<batch>/<n>)
 */
export const STORAGE_FORMAT = 2;
