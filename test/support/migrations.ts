// Migration test helpers: a fleet of real tenants, migration folders written on the fly, and journal queries.
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { TenantService } from '../../src/tenants/service.js';
import { freshDatabase, runCli, uniqueTenantId, type CliResult, type TestDatabase } from './db.js';

/** Creates the control schema and `n` role-isolation tenants with no migrations applied; returns their ids in order. */
export async function createFleet(url: string, n: number, prefix: string): Promise<string[]> {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  try {
    const c = await pool.connect();
    await installControlSchema(c).finally(() => c.release());
    const svc = new TenantService(pool, { isolation: 'role' });
    const ids = Array.from({ length: n }, () => uniqueTenantId(prefix)).sort();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < ids.length) await svc.create(ids[next++]!);
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    return ids;
  } finally {
    await pool.end();
  }
}

export interface MigrationDir {
  dir: string;
  /** Writes (or overwrites) `kind/name.sql`. */
  write(kind: 'tenant' | 'shared', name: string, sql: string): Promise<void>;
  remove(): Promise<void>;
}

export async function migrationDir(files: { tenant?: Record<string, string>; shared?: Record<string, string> } = {}): Promise<MigrationDir> {
  const dir = await mkdtemp(path.join(tmpdir(), 'pgtenant-migrate-'));
  const write = async (kind: 'tenant' | 'shared', name: string, sql: string): Promise<void> => {
    await mkdir(path.join(dir, kind), { recursive: true });
    await writeFile(path.join(dir, kind, `${name}.sql`), sql);
  };
  for (const kind of ['tenant', 'shared'] as const) {
    for (const [name, sql] of Object.entries(files[kind] ?? {})) await write(kind, name, sql);
  }
  return { dir, write, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** Journal rows per tenant: tenant id -> sorted versions (shared rows under ''). */
export async function journalByTenant(c: pg.ClientBase): Promise<Map<string, string[]>> {
  const { rows } = await c.query<{ tenant_id: string | null; versions: string[] }>(
    'SELECT tenant_id, array_agg(version ORDER BY version) AS versions FROM pgtenant.migrations GROUP BY tenant_id',
  );
  return new Map(rows.map((r) => [r.tenant_id ?? '', r.versions]));
}

/** Whether each schema has the named table, as one query. */
export async function tablesIn(c: pg.ClientBase, schemas: readonly string[], table: string): Promise<Map<string, boolean>> {
  const { rows } = await c.query<{ schema: string; present: boolean }>(
    `SELECT s AS schema, EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = s AND tablename = $2) AS present
       FROM unnest($1::text[]) AS s`,
    [schemas, table],
  );
  return new Map(rows.map((r) => [r.schema, r.present]));
}

/** Row count of `schema.table` for each schema, as one UNION ALL query. */
export async function rowCounts(c: pg.ClientBase, schemas: readonly string[], table: string): Promise<Map<string, number>> {
  const q = (s: string): string => `"${s.replace(/"/g, '""')}"`;
  const sql = schemas.map((s) => `SELECT '${s}' AS schema, count(*)::int AS n FROM ${q(s)}.${q(table)}`).join(' UNION ALL ');
  const { rows } = await c.query<{ schema: string; n: number }>(sql);
  return new Map(rows.map((r) => [r.schema, r.n]));
}

export interface Fleet {
  db: TestDatabase;
  ids: string[];
  files: MigrationDir;
  /** `pgtenant migrate ...args` against this fleet's database and folder. */
  cli(...args: string[]): Promise<CliResult>;
}

/** A fresh database with `n` tenants and a migrations folder, made before the enclosing describe's tests and removed after. */
export function fleetFixture(n: number, prefix: string, files: { tenant?: Record<string, string>; shared?: Record<string, string> }): Fleet {
  const fleet = {} as Fleet;
  beforeAll(async () => {
    fleet.db = await freshDatabase();
    fleet.ids = await createFleet(fleet.db.url, n, prefix);
    fleet.files = await migrationDir(files);
    fleet.cli = (...args) => runCli(['migrate', ...args, '--upstream', fleet.db.url, '--dir', fleet.files.dir]);
  }, 120_000);
  afterAll(async () => {
    await fleet.files?.remove();
    await fleet.db?.drop();
  });
  return fleet;
}
