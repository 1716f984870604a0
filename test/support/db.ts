// Per-file test databases on the shared test server, unique tenant ids, and a runner for the built CLI.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { inject } from 'vitest';

export interface TestDatabase {
  /** Superuser URL of the new database. */
  url: string;
  name: string;
  /** Superuser URL of the server's maintenance database. */
  adminUrl: string;
  drop(): Promise<void>;
}

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Tenant ids handed out in this worker: their roles are cluster-wide and are dropped with the database. */
const issuedIds = new Set<string>();

const suffix = (n: number): string =>
  Array.from(randomBytes(n), (b) => 'abcdefghijklmnopqrstuvwxyz0123456789'[b % 36]).join('');

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = '/' + encodeURIComponent(database);
  return u.toString();
}

/** Runs fn on a fresh connection to url, closed afterwards. */
export async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/**
 * A unique tenant id such as `acme_k3j9`: roles are cluster-wide while test files run in parallel, each in
 * its own database, so a fixed id would collide.
 */
export function uniqueTenantId(prefix: string): string {
  const id = `${prefix}_${suffix(6)}`;
  issuedIds.add(id);
  return id;
}

export async function freshDatabase(): Promise<TestDatabase> {
  const adminUrl = inject('pgAdminUrl');
  const name = `pgtenant_t_${suffix(10)}`;
  await withClient(adminUrl, (c) => c.query(`CREATE DATABASE "${name}"`));
  return {
    url: withDatabase(adminUrl, name),
    name,
    adminUrl,
    async drop() {
      await withClient(adminUrl, async (c) => {
        // Tenant roles outlive the database: collect those tied to it (search_path set in it, or issued here).
        const { rows } = await c.query<{ rolname: string }>(
          `SELECT r.rolname FROM pg_catalog.pg_db_role_setting s
             JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
             JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
            WHERE d.datname = $1 AND NOT r.rolsuper`,
          [name],
        );
        const roles = new Set([...rows.map((r) => r.rolname), ...issuedIds]);
        await c.query(`SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = $1`, [name]);
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
        const existing = await c.query<{ rolname: string }>('SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY($1) AND NOT rolsuper', [[...roles]]);
        for (const { rolname } of existing.rows) {
          // A role still owning things elsewhere (another file's database) is left alone.
          await c.query(`DROP ROLE "${rolname.replace(/"/g, '""')}"`).catch(() => undefined);
        }
      });
    },
  };
}

/** Absolute path of the CLI entry (runs dist/, built by `npm run build` / the pretest script). */
export function bin(): string {
  return path.join(ROOT, 'bin', 'pgtenant.js');
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `node bin/pgtenant.js ...args` with a clean PGTENANT_* environment plus env. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGTENANT_') && k !== 'DATABASE_URL'));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin(), ...args], { cwd: ROOT, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}
