// A root-hook plugin (.mocharc's "require"): each test file's wall time, set-up and tear-down
// included. Under --parallel, mocha runs the root hooks once per file in the worker that runs it,
// and the reporter (in the main process) only sees the tests' own durations; so each worker
// appends a line per file to a file named by the main process's pid, which the reporter reads at
// the end (test/helpers/reporter.ts) to print where the suite's wall time goes, by lane.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Context } from 'mocha';

/** Where the workers of the mocha process `pid` put their file times. */
export function fileTimesPath(pid: number): string {
  return path.join(os.tmpdir(), `tessera-test-file-times-${pid}.jsonl`);
}

let started = 0;

export const mochaHooks = {
  beforeAll(): void {
    started = Date.now();
  },
  afterAll(this: Context): void {
    const file = this.test?.parent?.suites?.[0]?.file ?? this.test?.parent?.file;
    if (!file || !process.send) return; // not a parallel worker: the reporter times suites itself
    try {
      fs.appendFileSync(fileTimesPath(process.ppid), `${JSON.stringify({ file, ms: Date.now() - started, worker: process.pid })}\n`);
    } catch {
      /* a report, not a test */
    }
  },
};
