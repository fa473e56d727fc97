// Mocha's spec reporter plus, at the end, the slowest files (where the suite's time goes) and one
// closing line in the plain form CI reads: "tests: N passed, N failed, N skipped".
// Run in one process, a file's time includes its set-up and tear-down. With --parallel the events
// reach the reporter only once a file has ended: the workers write each file's wall time
// (test/helpers/file-times.ts), and the reporter prints those and each worker's total, which is
// what to balance (scripts/test.sh starts the longest files first); without them, the tests' own.
import fs from 'node:fs';
import path from 'node:path';
import Mocha from 'mocha';
import { fileTimesPath } from './file-times';

const fileOf = (f?: string) => (f ? `${path.basename(path.dirname(f))}/${path.basename(f, '.js')}` : '?');

class SpecWithSummary extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    const parallel = (runner as unknown as { isParallelMode?: () => boolean }).isParallelMode?.() ?? false;
    const started = new Map<Mocha.Suite, number>();
    const byFile = new Map<string, number>();
    const add = (f: string | undefined, ms: number) => byFile.set(fileOf(f), (byFile.get(fileOf(f)) ?? 0) + ms);
    const t0 = Date.now();
    if (parallel) {
      const test = (t: Mocha.Test) => add(t.file, t.duration ?? 0);
      runner.on(Mocha.Runner.constants.EVENT_TEST_PASS, test);
      runner.on(Mocha.Runner.constants.EVENT_TEST_FAIL, test);
    } else {
      runner.on(Mocha.Runner.constants.EVENT_SUITE_BEGIN, (s: Mocha.Suite) => { if (s.parent?.root) started.set(s, Date.now()); });
      runner.on(Mocha.Runner.constants.EVENT_SUITE_END, (s: Mocha.Suite) => {
        const at = started.get(s);
        if (at !== undefined) add(s.file, Date.now() - at);
      });
    }
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const s = runner.stats!;
      const walls = parallel ? readFileTimes() : undefined;
      const times = walls?.byFile ?? byFile;
      const slow = [...times].sort((a, b) => b[1] - a[1]).slice(0, 12);
      if (slow.length > 1) {
        const what = !parallel ? '' : walls ? ' (set-up included)' : ' (their tests\' own time)';
        process.stdout.write(`\nslowest files${what}, of ${((Date.now() - t0) / 1000).toFixed(0)} s in all:\n`);
        for (const [f, ms] of slow) process.stdout.write(`  ${(ms / 1000).toFixed(1).padStart(6)} s  ${f}\n`);
        if (walls) process.stdout.write(`  by worker: ${[...walls.byWorker.values()].map(({ ms, files }) => `${(ms / 1000).toFixed(0)} s in ${files} files`).join(', ')}\n`);
      }
      process.stdout.write(`\ntests: ${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

/** The workers' file times (file-times.ts) of this run, read and removed; undefined if none. */
function readFileTimes(): { byFile: Map<string, number>; byWorker: Map<number, { ms: number; files: number }> } | undefined {
  const f = fileTimesPath(process.pid);
  let text: string;
  try {
    text = fs.readFileSync(f, 'utf8');
    fs.rmSync(f, { force: true });
  } catch {
    return undefined;
  }
  const byFile = new Map<string, number>();
  const byWorker = new Map<number, { ms: number; files: number }>();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const { file, ms, worker } = JSON.parse(line) as { file: string; ms: number; worker: number };
    byFile.set(fileOf(file), (byFile.get(fileOf(file)) ?? 0) + ms);
    const w = byWorker.get(worker) ?? { ms: 0, files: 0 };
    byWorker.set(worker, { ms: w.ms + ms, files: w.files + 1 });
  }
  return byFile.size ? { byFile, byWorker } : undefined;
}

export = SpecWithSummary;
