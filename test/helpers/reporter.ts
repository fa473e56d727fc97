// Mocha's spec reporter plus, at the end, the slowest files (where the suite's time goes) and one
// closing line in the plain form CI reads: "tests: N passed, N failed, N skipped".
// Run in one process, a file's time includes its set-up and tear-down; with --parallel the events
// reach the reporter only once a file has ended, so a file's time is its tests' own.
import path from 'node:path';
import Mocha from 'mocha';

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
      const slow = [...byFile].sort((a, b) => b[1] - a[1]).slice(0, 12);
      if (slow.length > 1) {
        process.stdout.write(`\nslowest files${parallel ? ' (their tests\' own time)' : ''}, of ${((Date.now() - t0) / 1000).toFixed(0)} s in all:\n`);
        for (const [f, ms] of slow) process.stdout.write(`  ${(ms / 1000).toFixed(1).padStart(6)} s  ${f}\n`);
      }
      process.stdout.write(`\ntests: ${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

export = SpecWithSummary;
