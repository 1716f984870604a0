// Finding, running and parsing pgbench; every target is driven by the same invocation.
import { execFileSync } from 'node:child_process';
import { runCommand } from './processes.mjs';

/** Path of an executable on PATH, or null. */
export function findExecutable(name) {
  try {
    return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
}

/** A clean libpq environment: inherited PG* variables would silently change what pgbench connects to. */
export function libpqEnv({ port, user, password, database }) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  return {
    ...env,
    PGHOST: '127.0.0.1',
    PGPORT: String(port),
    PGUSER: user,
    PGPASSWORD: password,
    PGDATABASE: database,
    PGSSLMODE: 'disable',
    PGCONNECT_TIMEOUT: '10',
  };
}

/** Pulls TPS, average latency and failures out of pgbench's summary; null fields when absent. */
export function parsePgbenchOutput(text) {
  const num = (re) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : null;
  };
  return {
    // With -C (a connection per transaction) pgbench reports tps including the reconnections.
    tps: num(/^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)/m),
    latencyMs: num(/^latency average = ([\d.]+) ms/m),
    transactions: num(/^number of transactions actually processed: (\d+)/m),
    failed: num(/^number of failed transactions: (\d+)/m),
  };
}

/** Creates the pgbench tables at the given scale as the connecting role (so they land in its search_path). */
export async function initTables(pgbench, conn, scale) {
  const r = await runCommand(pgbench, ['-i', '-q', '-s', String(scale)], { env: libpqEnv(conn), timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`pgbench -i failed (exit ${r.code}):\n${r.stderr.trim()}`);
}

/** The select-only invocation; `connect` adds -C, a new connection for every transaction. */
export function pgbenchArgs({ mode, clients, threads, seconds, connect = false }) {
  return ['-S', '-n', ...(connect ? ['-C'] : []), '-M', mode, '-c', String(clients), '-j', String(threads), '-T', String(seconds)];
}

/** One select-only run; resolves with parsed numbers, or throws with pgbench's own words. */
export async function runSelectOnly(pgbench, conn, { mode, clients, threads, seconds, connect = false }) {
  const args = pgbenchArgs({ mode, clients, threads, seconds, connect });
  const r = await runCommand(pgbench, args, { env: libpqEnv(conn), timeoutMs: (seconds + 60) * 1000 });
  const parsed = parsePgbenchOutput(r.stdout);
  if (r.code !== 0 || parsed.tps === null) {
    const detail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-6).join('\n');
    throw new Error(`pgbench exit ${r.code ?? r.signal}: ${detail}`);
  }
  return parsed;
}
