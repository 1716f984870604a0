// The migrator's progress line and reporter: what a terminal shows, and the log lines elsewhere.
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { formatProgress, progressReporter } from '../../src/migrate/progress.js';

describe('formatProgress', () => {
  it('shows the bar, counts, failures, rate and time left', () => {
    expect(formatProgress({ done: 250, total: 1000, failed: 2, elapsedMs: 2000 })).toBe(
      '[######------------------]   250/1000 tenants  2 failed  125/s  about 6s left',
    );
  });

  it('says estimating before the first tenant and done at the end', () => {
    expect(formatProgress({ done: 0, total: 10, failed: 0, elapsedMs: 0 })).toMatch(/ 0\/10 tenants  0 failed  0\/s  estimating$/);
    expect(formatProgress({ done: 10, total: 10, failed: 1, elapsedMs: 500 })).toMatch(/^\[#{24}\]  10\/10 tenants  1 failed  20\/s  done$/);
  });

  it('writes long waits in minutes and hours', () => {
    expect(formatProgress({ done: 1, total: 200, failed: 0, elapsedMs: 1000 })).toMatch(/about 3m19s left$/);
    expect(formatProgress({ done: 1, total: 10_000, failed: 0, elapsedMs: 1000 })).toMatch(/about 2h46m left$/);
  });
});

function capture(tty: boolean): { stream: NodeJS.WriteStream; text: () => string } {
  const stream = new PassThrough() as unknown as NodeJS.WriteStream;
  (stream as { isTTY?: boolean }).isTTY = tty;
  const chunks: Buffer[] = [];
  (stream as unknown as PassThrough).on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

describe('progressReporter', () => {
  it('redraws one line on a terminal and ends it when finished', () => {
    const out = capture(true);
    const logs = capture(false);
    const r = progressReporter(out.stream, pino(logs.stream));
    r.update({ done: 0, total: 3, failed: 0, elapsedMs: 0 });
    r.update({ done: 1, total: 3, failed: 0, elapsedMs: 10 }); // within 100 ms of the last draw: skipped
    r.update({ done: 3, total: 3, failed: 1, elapsedMs: 30 });
    r.finish();
    const text = out.text();
    expect(text.startsWith('\r\x1b[K[')).toBe(true);
    expect(text.endsWith('3/3 tenants  1 failed  100/s  done\n')).toBe(true);
    expect(text.split('\r\x1b[K')).toHaveLength(3);
    expect(logs.text()).toBe('');
  });

  it('logs structured lines without control characters elsewhere', () => {
    const out = capture(false);
    const logs = capture(false);
    const r = progressReporter(out.stream, pino(logs.stream), 60_000);
    r.update({ done: 0, total: 4, failed: 0, elapsedMs: 0 });
    r.update({ done: 2, total: 4, failed: 0, elapsedMs: 100 });
    r.finish();
    const lines = logs.text().trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.msg, l.done, l.total])).toEqual([
      ['migration progress', 0, 4],
      ['migration progress', 2, 4],
    ]);
    expect(lines[1]).toMatchObject({ perSecond: 20, secondsLeft: 1 });
    expect(out.text()).toBe('');
  });

  it("with no stream at all (the proxy's migration jobs) only logs", () => {
    const logs = capture(false);
    const r = progressReporter(null, pino(logs.stream), 60_000);
    r.update({ done: 1, total: 2, failed: 1, elapsedMs: 50 });
    r.finish();
    const lines = logs.text().trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.msg, l.done, l.total, l.failed])).toEqual([
      ['migration progress', 1, 2, 1],
      ['migration progress', 1, 2, 1],
    ]);
  });
});
