// The PostgreSQL under test (embedded or PGTENANT_BENCH_DATABASE_URL) and the benchmark tenant, created through the CLI.
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { initTables } from './pgbench.mjs';
import { onCleanup, runCommand } from './processes.mjs';

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/** Host, port and database of a postgres:// URL, refusing anything but loopback so every target shares one machine. */
export function describeUrl(url) {
  const u = new URL(url);
  if (!LOOPBACK.has(u.hostname)) throw new Error(`the benchmark only talks to loopback; ${u.hostname} is not`);
  return {
    port: Number(u.port || 5432),
    database: decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres',
  };
}

/**
 * Starts the embedded PostgreSQL from dist/, or uses PGTENANT_BENCH_DATABASE_URL; stop is registered for cleanup.
 * `durable` keeps PostgreSQL's default fsync and synchronous_commit (a throwaway cluster turns them off), for
 * workloads whose cost is mostly commits; the data directory is removed at cleanup either way.
 */
export async function startServer(repoRoot, { durable = false } = {}) {
  const given = process.env.PGTENANT_BENCH_DATABASE_URL;
  if (given) return { url: given, embedded: false };
  const modulePath = join(repoRoot, 'dist', 'embedded-postgres.js');
  let startEmbeddedPostgres;
  try {
    ({ startEmbeddedPostgres } = await import(pathToFileURL(modulePath).href));
  } catch (err) {
    throw new Error(`cannot load ${modulePath} (run 'npm run build' first): ${err.message}`);
  }
  const tmp = mkdtempSync(join(tmpdir(), 'pgtenant-bench-'));
  // As root the server runs as the 'postgres' user, which must be able to reach the data directory inside.
  chmodSync(tmp, 0o755);
  onCleanup(() => rmSync(tmp, { recursive: true, force: true }));
  const server = await startEmbeddedPostgres({ dataDir: join(tmp, 'pgdata'), port: 0, persistent: durable });
  onCleanup(() => server.stop());
  return { url: server.url, embedded: true };
}

async function cli(repoRoot, args) {
  const r = await runCommand(process.execPath, [join(repoRoot, 'bin', 'pgtenant.js'), ...args, '--log-level', 'warn'], {
    cwd: repoRoot,
    timeoutMs: 120_000,
  });
  if (r.code !== 0) {
    const words = args.filter((a, i) => i < 2 && !a.startsWith('--')).join(' ');
    throw new Error(`pgtenant ${words} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim()}`);
  }
  return r.stdout;
}

/** Installs the control schema and creates the tenant whose role, schema and password every target uses. */
export async function createTenant(repoRoot, url, id, password) {
  await cli(repoRoot, ['init', '--upstream', url]);
  try {
    await cli(repoRoot, ['tenants', 'create', id, '--password', password, '--upstream', url]);
  } catch (err) {
    throw new Error(
      `${err.message}\n(on an existing server, drop a leftover tenant with: pgtenant tenants drop ${id} --yes)`,
    );
  }
}

/**
 * What the pgbench benchmarks share: the server, a tenant with a fresh password, and pgbench's tables at `scale`
 * in the tenant's schema. Resolves with the server, its port and the tenant's connection settings.
 */
export async function benchTenant(repoRoot, pgbench, { tenant, scale, log }) {
  log('starting PostgreSQL...');
  const server = await startServer(repoRoot);
  const { port, database } = describeUrl(server.url);
  const password = randomBytes(12).toString('hex');
  log(`creating tenant '${tenant}' through the CLI...`);
  await createTenant(repoRoot, server.url, tenant, password);
  const conn = { user: tenant, password, database };
  log(`creating pgbench tables (scale ${scale}) in schema '${tenant}'...`);
  await initTables(pgbench, { ...conn, port }, scale);
  return { server, port, password, conn };
}
