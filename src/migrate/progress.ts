// Progress of a long migration: one redrawn line on a terminal, a log line every few seconds anywhere else.
import type { Logger } from '../logger.js';
import type { Progress } from './runner.js';

const BAR_WIDTH = 24;

function rate(p: Progress): number {
  return p.elapsedMs > 0 ? (p.done * 1000) / p.elapsedMs : 0;
}

function secondsLeft(p: Progress): number | null {
  const r = rate(p);
  return r > 0 ? Math.ceil((p.total - p.done) / r) : null;
}

function duration(seconds: number): string {
  if (seconds < 90) return `${seconds}s`;
  const m = Math.floor(seconds / 60);
  return m < 90 ? `${m}m${String(seconds % 60).padStart(2, '0')}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/** `[#########---------------]  412/1000 tenants  2 failed  183/s  about 4s left` */
export function formatProgress(p: Progress): string {
  const filled = p.total > 0 ? Math.round((BAR_WIDTH * p.done) / p.total) : BAR_WIDTH;
  const left = secondsLeft(p);
  return [
    `[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}]`,
    `${String(p.done).padStart(String(p.total).length)}/${p.total} tenants`,
    `${p.failed} failed`,
    `${Math.round(rate(p))}/s`,
    p.done === p.total ? 'done' : left === null ? 'estimating' : `about ${duration(left)} left`,
  ].join('  ');
}

export interface ProgressReporter {
  update(p: Progress): void;
  /** Draws the final state and ends the terminal line. */
  finish(): void;
}

/**
 * On a terminal the line is redrawn at most every 100 ms; otherwise (or with no stream at all, as in the
 * proxy's migration jobs) a structured log line every `intervalMs`, so CI logs and log collectors get
 * progress without control characters.
 */
export function progressReporter(stream: NodeJS.WriteStream | null, log: Logger, intervalMs = 2000): ProgressReporter {
  let last: Progress | undefined;
  let shownAt = 0;
  const tty = stream?.isTTY === true;
  const show = (p: Progress): void => {
    if (tty) stream!.write(`\r\x1b[K${formatProgress(p)}`);
    else log.info({ done: p.done, total: p.total, failed: p.failed, perSecond: Math.round(rate(p)), secondsLeft: secondsLeft(p) }, 'migration progress');
  };
  return {
    update(p) {
      last = p;
      const now = Date.now();
      if (now - shownAt < (tty ? 100 : intervalMs)) return;
      shownAt = now;
      show(p);
    },
    finish() {
      if (!last) return;
      show(last);
      if (tty) stream!.write('\n');
    },
  };
}
