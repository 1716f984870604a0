// Runs the real `pgtenant migrate up --json` CLI as a child process and times it, process start included.
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { runCommand } from './processes.mjs';

/** Inherited PGTENANT_* or DATABASE_URL would silently change what the CLI does; the flags say everything. */
function cleanEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PGTENANT_') && k !== 'DATABASE_URL') env[k] = v;
  return env;
}

export function migrateArgs(repoRoot, url, dir, concurrency) {
  const args = [join(repoRoot, 'bin', 'pgtenant.js'), 'migrate', 'up', '--upstream', url, '--dir', dir, '--json', '--log-level', 'warn'];
  if (concurrency != null) args.push('--concurrency', String(concurrency));
  return args;
}

/** The command line as printed in the report, the management password masked. */
export function showCommand(args, url) {
  const masked = (a) => {
    if (a !== url) return a;
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  };
  return ['node', ...args.map(masked)].map((a, i) => (i === 1 ? 'bin/pgtenant.js' : a)).join(' ');
}

/**
 * One `migrate up`; resolves with the wall time and the CLI's JSON summary, or throws with the CLI's own words.
 * A summary with failures is returned (and flagged by the caller), not thrown: the figures are still worth seeing.
 */
export async function pgtenantMigrate(repoRoot, url, dir, { concurrency, tenants }) {
  const args = migrateArgs(repoRoot, url, dir, concurrency);
  const started = performance.now();
  const r = await runCommand(process.execPath, args, { cwd: repoRoot, env: cleanEnv(), timeoutMs: 120_000 + tenants * 200 });
  const seconds = (performance.now() - started) / 1000;
  let summary;
  try {
    summary = JSON.parse(r.stdout);
  } catch {
    const said = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-10).join('\n');
    throw new Error(`pgtenant migrate up exited ${r.code ?? r.signal} without a JSON summary on stdout:\n${said || '(no output)'}`);
  }
  for (const key of ['ok', 'total', 'migrated', 'upToDate', 'failed', 'durationMs', 'concurrency']) {
    if (!(key in summary)) throw new Error(`pgtenant migrate up --json: the summary has no '${key}': ${r.stdout.trim().slice(0, 500)}`);
  }
  return { seconds, exitCode: r.code, summary, stderr: r.stderr.trim(), command: args };
}
