// The tenant sets of the migration benchmark (created, settled, dropped) and the three migration files.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';

/** Three statements: a table, an index on it, a column; the same files for both methods. */
export const MIGRATIONS = [
  {
    version: '20260101000001',
    name: 'create_items',
    sql: 'CREATE TABLE items (\n  id bigint PRIMARY KEY,\n  name text NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now()\n);\n',
  },
  { version: '20260101000002', name: 'index_items_name', sql: 'CREATE INDEX items_name_idx ON items (name);\n' },
  { version: '20260101000003', name: 'add_items_note', sql: 'ALTER TABLE items ADD COLUMN note text;\n' },
];

/** Schemas touched per transaction in bulk DDL: one transaction over 10,000 tables would overflow the lock table. */
const BATCH = 250;

/** Writes MIGRATIONS to `dir/tenant/`; returns them with their paths. */
export function writeMigrations(dir) {
  const tenantDir = join(dir, 'tenant');
  mkdirSync(tenantDir, { recursive: true });
  return MIGRATIONS.map((m) => {
    const path = join(tenantDir, `${m.version}_${m.name}.sql`);
    writeFileSync(path, m.sql);
    return { ...m, path };
  });
}

export const quoteIdent = (name) => `"${name.replace(/"/g, '""')}"`;

/** `prefix_00001` ... : zero-padded so both sets sort (and are migrated) in the same order. */
export function names(prefix, count) {
  const width = String(count).length;
  return Array.from({ length: count }, (_, i) => `${prefix}_${String(i + 1).padStart(width, '0')}`);
}

/** An idle connection cut by the server stopping (Ctrl-C) must not crash the run before cleanup finishes. */
export const ignoreErrors = (client) => client.on('error', () => undefined);

async function withClient(url, fn) {
  const client = ignoreErrors(new pg.Client({ connectionString: url }));
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function inBatches(client, items, statementsFor) {
  for (let i = 0; i < items.length; i += BATCH) {
    const sql = items.slice(i, i + BATCH).flatMap(statementsFor).join(';\n');
    // A multi-statement simple query runs as one implicit transaction.
    await client.query(sql);
  }
}

/** A new database on the server; each set lives in its own, so every set sees a catalog of the same size. */
export async function createDatabase(adminUrl, name) {
  await withClient(adminUrl, (c) => c.query(`CREATE DATABASE ${quoteIdent(name)}`));
  const u = new URL(adminUrl);
  u.pathname = '/' + encodeURIComponent(name);
  return u.toString();
}

/**
 * A pgtenant set, created by the built TenantService exactly as `tenants create` does (role isolation: login role,
 * schema, registry row), with no migrations, `parallel` creates at a time.
 */
export async function createPgtenantSet(repoRoot, url, ids, { parallel = 4, onProgress } = {}) {
  const dist = (p) => pathToFileURL(join(repoRoot, 'dist', p)).href;
  const { installControlSchema } = await import(dist('tenants/control-schema.js'));
  const { TenantService } = await import(dist('tenants/service.js'));
  await withClient(url, (c) => installControlSchema(c));
  const pool = new pg.Pool({ connectionString: url, max: parallel });
  pool.on('error', () => undefined);
  pool.on('connect', ignoreErrors);
  try {
    const service = new TenantService(pool, { isolation: 'role', migrationsDir: null });
    let next = 0;
    let done = 0;
    const worker = async () => {
      while (next < ids.length) {
        const id = ids[next++];
        // One fixed password: its SCRAM verifier is still computed per tenant, like a real create.
        await service.create(id, { password: 'bench-migrate-password' });
        if (++done % 500 === 0) onProgress?.(done);
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
  } finally {
    await pool.end();
  }
  // The naive set keeps its version table in every schema. Each tenant here gets a table of the same shape (one
  // it already had, owned by it), so both sets hold the same files: on this VM the kernel's cost of creating the
  // migration's relation files differs measurably between schemas holding one table and empty ones.
  await withClient(url, (c) =>
    inBatches(c, ids, (id) => [`CREATE TABLE ${quoteIdent(id)}.accounts (id text PRIMARY KEY)`, `ALTER TABLE ${quoteIdent(id)}.accounts OWNER TO ${quoteIdent(id)}`]),
  );
}

/**
 * The naive set: plain schemas, each with the version table that Alembic / django-tenants keep inside the schema
 * (created when the tenant was, as those tools do), so the measured loop finds it already there.
 */
export async function createNaiveSet(url, schemas) {
  await withClient(url, (c) =>
    inBatches(c, schemas, (s) => [`CREATE SCHEMA ${quoteIdent(s)}`, `CREATE TABLE ${quoteIdent(s)}.schema_migrations (version text PRIMARY KEY)`]),
  );
}

/** The ceiling set: plain schemas with one table each, for the three statements run alone, nothing recorded. */
export async function createRawSet(url, schemas) {
  await withClient(url, (c) =>
    inBatches(c, schemas, (s) => [`CREATE SCHEMA ${quoteIdent(s)}`, `CREATE TABLE ${quoteIdent(s)}.accounts (id text PRIMARY KEY)`]),
  );
}

/** Removes a set: its database, and for a pgtenant set its login roles (cluster-wide, so they outlive the database). */
export async function dropSet(adminUrl, set) {
  await withClient(adminUrl, async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(set.database)} WITH (FORCE)`);
    if (set.kind !== 'pgtenant') return;
    for (let i = 0; i < set.schemas.length; i += BATCH) {
      await c.query(`DROP ROLE IF EXISTS ${set.schemas.slice(i, i + BATCH).map(quoteIdent).join(', ')}`);
    }
  });
}

/** Before a measured pass: no dead rows left by setup for the pass to step over, and no checkpoint debt. Not timed. */
export async function settle(url) {
  await withClient(url, async (c) => {
    await c.query('VACUUM ANALYZE');
    await c.query('CHECKPOINT');
  });
}

/** How many schemas of the set have the last migration's column, and how many version rows were recorded. */
export async function verifySet(url, kind, schemas) {
  return withClient(url, async (c) => {
    const { rows } = await c.query(
      `SELECT count(*)::int AS n FROM pg_catalog.pg_attribute a
         JOIN pg_catalog.pg_class t ON t.oid = a.attrelid
         JOIN pg_catalog.pg_namespace s ON s.oid = t.relnamespace
        WHERE t.relname = 'items' AND a.attname = 'note' AND NOT a.attisdropped AND s.nspname = ANY($1)`,
      [schemas],
    );
    let versions;
    if (kind === 'raw') {
      // Nothing is recorded: the ceiling runs the statements alone.
      versions = null;
    } else if (kind === 'naive') {
      // One count over all version tables, built as a UNION in batches to keep the statement small.
      versions = 0;
      for (let i = 0; i < schemas.length; i += BATCH) {
        const parts = schemas.slice(i, i + BATCH).map((s) => `SELECT count(*) AS n FROM ${quoteIdent(s)}.schema_migrations`);
        const r = await c.query(`SELECT sum(n)::int AS n FROM (${parts.join(' UNION ALL ')}) x`);
        versions += r.rows[0].n;
      }
    } else {
      const r = await c.query('SELECT count(*)::int AS n FROM pgtenant.migrations WHERE tenant_id = ANY($1)', [schemas]);
      versions = r.rows[0].n;
    }
    return { migrated: rows[0].n, versions };
  });
}
