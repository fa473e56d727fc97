// Mocha's spec reporter plus, at the end, the slowest files (set-up and tear-down included: where
// the suite's time goes) and one closing line in the plain form CI reads:
// "tests: N passed, N failed, N skipped".
import path from 'node:path';
import Mocha from 'mocha';

class SpecWithSummary extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    const started = new Map<Mocha.Suite, number>();
    const byFile = new Map<string, number>();
    const t0 = Date.now();
    runner.on(Mocha.Runner.constants.EVENT_SUITE_BEGIN, (s: Mocha.Suite) => { if (s.parent?.root) started.set(s, Date.now()); });
    runner.on(Mocha.Runner.constants.EVENT_SUITE_END, (s: Mocha.Suite) => {
      const at = started.get(s);
      if (at === undefined) return;
      const file = s.file ? `${path.basename(path.dirname(s.file))}/${path.basename(s.file, '.js')}` : s.title;
      byFile.set(file, (byFile.get(file) ?? 0) + Date.now() - at);
    });
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const s = runner.stats!;
      const slow = [...byFile].sort((a, b) => b[1] - a[1]).slice(0, 12);
      if (slow.length > 1) {
        process.stdout.write(`\nslowest files (of ${((Date.now() - t0) / 1000).toFixed(0)} s):\n`);
        for (const [f, ms] of slow) process.stdout.write(`  ${(ms / 1000).toFixed(1).padStart(6)} s  ${f}\n`);
      }
      process.stdout.write(`\ntests: ${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

export = SpecWithSummary;
