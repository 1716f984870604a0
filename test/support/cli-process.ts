// A `pgtenant` CLI process for tests: its JSON log lines as they come, its exit, and a kill that takes its workers along.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { bin } from './db.js';
import { sleep } from './proxy.js';

export interface LogLine {
  msg?: string;
  pid?: number;
  worker?: number;
  component?: string;
  listen?: string;
  [k: string]: unknown;
}

/** Live processes whose command line holds `marker` (the proxy's workers re-run its command line, so they carry it too). */
export function pidsWith(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.includes(marker) && cmdline.includes('pgtenant.js')) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids.sort((a, b) => a - b);
}

/** `node bin/pgtenant.js ...args` with a clean environment; its JSON log lines (the workers' included: they share stderr) parsed as they come. */
export class Cli {
  readonly child: ChildProcess;
  stderr = '';
  readonly lines: LogLine[] = [];
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    args: string[],
    /** A string only this process tree's command lines hold, to find (and in the end kill) its workers. */
    readonly marker: string,
  ) {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGTENANT_') && k !== 'DATABASE_URL'));
    this.child = spawn(process.execPath, [bin(), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    this.child.stderr!.on('data', (d: Buffer) => {
      const text = d.toString('utf8');
      this.stderr += text;
      const parts = (partial + text).split('\n');
      partial = parts.pop()!;
      for (const line of parts) {
        try {
          this.lines.push(JSON.parse(line) as LogLine);
        } catch {
          // not a log line (the CLI's own `pgtenant: ...` message)
        }
      }
    });
    this.child.stdout!.resume();
    this.exited = new Promise((resolve) =>
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      }),
    );
  }

  /** The first log line from index `from` on that satisfies `pred`, polled for up to `ms`. */
  async line(pred: (l: LogLine) => boolean, what: string, from = 0, ms = 15_000): Promise<LogLine> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.lines.slice(from).find(pred);
      if (found) return found;
      if (this.exit || Date.now() > deadline) {
        throw new Error(`no log line ${what} (${this.exit ? `process exited ${JSON.stringify(this.exit)}` : `after ${ms} ms`}):\n${this.stderr.slice(-4000)}`);
      }
      await sleep(20);
    }
  }

  /** Kills the primary and whatever workers it left, by pid. */
  async kill(): Promise<void> {
    for (const pid of new Set([this.child.pid!, ...pidsWith(this.marker)])) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await Promise.race([this.exited, sleep(5000)]);
  }
}

/** Polls `cond` every 25 ms for up to `ms`; true once it held. */
export async function until(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > deadline) return false;
    await sleep(25);
  }
}
