// Adds one plain closing line ("N passed, N failed, N skipped") that CI tools read regardless of the runner.
import type { Reporter, TestModule } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    const counts = { passed: 0, failed: 0, skipped: 0, pending: 0 };
    for (const m of modules) for (const t of m.children.allTests()) counts[t.result().state]++;
    // A suite that could not load, or an error outside tests, is a failure too.
    const broken = modules.filter((m) => m.state() === 'failed' && ![...m.children.allTests()].length).length;
    const failed = counts.failed + broken + unhandledErrors.length;
    process.stdout.write(`\n${counts.passed} passed, ${failed} failed, ${counts.skipped + counts.pending} skipped\n`);
  }
}
