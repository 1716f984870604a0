// Control schema installs, schema isolation, a non-superuser management role, and the migration applier's rules.
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyTenantMigrations } from '../../src/migrate/apply.js';
import { loadMigrations } from '../../src/migrate/loader.js';
import { CONTROL_SCHEMA_VERSION, installControlSchema } from '../../src/tenants/control-schema.js';
import { TenantDirectory } from '../../src/tenants/directory.js';
import { scramVerifier } from '../../src/tenants/scram.js';
import { TenantService } from '../../src/tenants/service.js';
import { freshDatabase, uniqueTenantId, type TestDatabase } from '../support/db.js';

const EXAMPLES = path.resolve('examples/migrations');
let db: TestDatabase;
let pool: pg.Pool;

beforeAll(async () => {
  db = await freshDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 6 });
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

async function install(p: pg.Pool): Promise<void> {
  const c = await p.connect();
  try {
    await installControlSchema(c);
  } finally {
    c.release();
  }
}

describe('control schema', () => {
  it('installs idempotently, also when installers race', async () => {
    await Promise.all([install(pool), install(pool), install(pool)]);
    await install(pool);
    const meta = await pool.query('SELECT schema_version FROM pgtenant.meta');
    expect(meta.rows).toEqual([{ schema_version: CONTROL_SCHEMA_VERSION }]);
    const { rows } = await pool.query(
      `SELECT has_schema_privilege('public', 'pgtenant', 'USAGE') AS pgtenant_usage,
              has_schema_privilege('public', 'public', 'CREATE') AS public_create`,
    );
    expect(rows[0]).toEqual({ pgtenant_usage: false, public_create: false });
  });

  it('upgrades an install of an older version in place, keeping its tenants (version 3, before per-tenant client caps)', async () => {
    const old = await freshDatabase();
    const p = new pg.Pool({ connectionString: old.url, max: 2 });
    try {
      await install(p);
      const id = uniqueTenantId('upg');
      await new TenantService(p, { isolation: 'role', migrationsDir: null }).create(id, { password: 'upgrade-password-1' });
      await p.query('ALTER TABLE pgtenant.tenants DROP COLUMN max_clients');
      await p.query('UPDATE pgtenant.meta SET schema_version = 3');
      const stale = await new TenantService(p, { isolation: 'role', migrationsDir: null }).get(id).catch((e) => e);
      expect(stale.code).toBe('not_initialized');
      // A proxy upgraded before the schema says what to do (its clients get 57P03 meanwhile).
      const directory = new TenantDirectory({ connectionString: old.url, ttlMs: 1000 });
      try {
        await expect(directory.lookup(id)).rejects.toMatchObject({ code: 'not_initialized', message: expect.stringContaining("older than this pgtenant: run 'pgtenant init'") });
      } finally {
        await directory.close();
      }
      await install(p);
      expect((await p.query('SELECT schema_version FROM pgtenant.meta')).rows).toEqual([{ schema_version: CONTROL_SCHEMA_VERSION }]);
      const svc = new TenantService(p, { isolation: 'role', migrationsDir: null });
      expect(await svc.get(id)).toMatchObject({ id, state: 'active', maxClients: null, poolSize: null });
      expect((await svc.setMaxClients(id, 4)).maxClients).toBe(4);
    } finally {
      await p.end();
      await old.drop();
    }
  });

  it('journals shared migrations once per version (tenant_id NULL) and tenant ones per tenant', async () => {
    await install(pool);
    await pool.query(`INSERT INTO pgtenant.migrations (tenant_id, version, name, checksum) VALUES (NULL, '1', 'a', 'x')`);
    const dup = await pool.query(`INSERT INTO pgtenant.migrations (tenant_id, version, name, checksum) VALUES (NULL, '1', 'a', 'x')`).catch((e) => e);
    expect(dup.code).toBe('23505');
    await pool.query(`DELETE FROM pgtenant.migrations WHERE tenant_id IS NULL`);
  });
});

describe('SCRAM verifiers', () => {
  it('match what PostgreSQL computes for the same password, salt and iterations', async () => {
    const role = uniqueTenantId('scram');
    await pool.query(`SET password_encryption = 'scram-sha-256'`);
    await pool.query(`CREATE ROLE "${role}" PASSWORD 'Tr0ub4dor & 3 spaces'`);
    const { rows } = await pool.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role]);
    await pool.query(`DROP ROLE "${role}"`);
    const stored = rows[0].rolpassword as string;
    const m = /^SCRAM-SHA-256\$(\d+):([^$]+)\$/.exec(stored)!;
    expect(scramVerifier('Tr0ub4dor & 3 spaces', Number(m[1]), Buffer.from(m[2]!, 'base64'))).toBe(stored);
  });
});

describe('schema isolation', () => {
  it('creates a schema owned by the management role, with no role and no password', async () => {
    await install(pool);
    const svc = new TenantService(pool, { isolation: 'schema', migrationsDir: EXAMPLES });
    const id = uniqueTenantId('shared');
    const { tenant, password, migrationsApplied } = await svc.create(id);
    expect(tenant).toMatchObject({ id, schema: id, role: null, state: 'active' });
    expect(password).toBeNull();
    expect(migrationsApplied).toBe(3);
    const { rows } = await pool.query(
      `SELECT n.nspowner::regrole::text = current_user AS owned, to_regclass($2) IS NOT NULL AS notes,
              (SELECT count(*) FROM pg_roles WHERE rolname = $1)::int AS roles
         FROM pg_namespace n WHERE n.nspname = $1`,
      [id, `${id}.notes`],
    );
    expect(rows[0]).toEqual({ owned: true, notes: true, roles: 0 });
    await expect(svc.create(uniqueTenantId('shared'), { password: 'some password' })).rejects.toMatchObject({ code: 'invalid_password' });
    expect((await svc.suspend(id)).state).toBe('suspended');
    await svc.drop(id);
    expect((await pool.query('SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = $1', [id])).rows[0].n).toBe(0);
  });
});

describe('a management role that is not a superuser', () => {
  it('installs the control schema and runs the whole lifecycle', async () => {
    const other = await freshDatabase();
    const mgmt = uniqueTenantId('mgmt');
    const admin = new pg.Pool({ connectionString: other.url, max: 1 });
    // The database owner owns schema public (PostgreSQL 15+), so init can lock it down.
    await admin.query(`CREATE ROLE "${mgmt}" LOGIN CREATEROLE PASSWORD 'management-pw'`);
    await admin.query(`ALTER DATABASE "${other.name}" OWNER TO "${mgmt}"`);
    await admin.end();
    const url = new URL(other.url);
    url.username = mgmt;
    url.password = 'management-pw';
    const mpool = new pg.Pool({ connectionString: url.toString(), max: 2 });
    try {
      await install(mpool);
      const svc = new TenantService(mpool, { isolation: 'role', migrationsDir: EXAMPLES });
      const id = uniqueTenantId('managed');
      const { password } = await svc.create(id);
      const t = new URL(other.url);
      t.username = id;
      t.password = password!;
      const c = new pg.Client({ connectionString: t.toString() });
      await c.connect();
      const { rows } = await c.query('SELECT current_user AS u, current_schema() AS s, count(*)::int AS n FROM notes');
      expect(rows[0]).toEqual({ u: id, s: id, n: 0 });
      await c.end();
      await svc.suspend(id);
      await svc.resume(id);
      await svc.drop(id);
      expect((await mpool.query('SELECT count(*)::int AS n FROM pg_roles WHERE rolname = $1', [id])).rows[0].n).toBe(0);
    } finally {
      await mpool.end();
      await other.drop();
    }
  });
});

describe('migration applier', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'pgtenant-mig-'));
    await mkdir(path.join(dir, 'tenant'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  async function inTransaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await pool.connect();
    try {
      await c.query('BEGIN');
      const r = await fn(c);
      await c.query('COMMIT');
      return r;
    } catch (err) {
      await c.query('ROLLBACK');
      throw err;
    } finally {
      c.release();
    }
  }

  it('skips applied versions, applies new ones, and refuses an applied file whose checksum changed', async () => {
    await install(pool);
    await writeFile(path.join(dir, 'tenant', '20260101000000_one.sql'), 'CREATE TABLE one (id int);');
    const svc = new TenantService(pool, { isolation: 'role', migrationsDir: dir });
    const id = uniqueTenantId('journal');
    const { tenant } = await svc.create(id);

    await writeFile(path.join(dir, 'tenant', '20260102000000_two.sql'), 'CREATE TABLE two (id int);');
    let files = (await loadMigrations(dir)).tenant;
    expect(files.map((f) => f.version)).toEqual(['20260101000000', '20260102000000']);
    expect(await inTransaction((c) => applyTenantMigrations(c, tenant, files))).toBe(1);
    expect(await inTransaction((c) => applyTenantMigrations(c, tenant, files))).toBe(0);
    const owner = await pool.query(`SELECT tableowner FROM pg_tables WHERE schemaname = $1 AND tablename = 'two'`, [id]);
    expect(owner.rows[0].tableowner).toBe(id);

    await writeFile(path.join(dir, 'tenant', '20260101000000_one.sql'), 'CREATE TABLE one (id bigint);');
    files = (await loadMigrations(dir)).tenant;
    await expect(inTransaction((c) => applyTenantMigrations(c, tenant, files))).rejects.toMatchObject({ code: 'checksum_mismatch' });
    await svc.drop(id);
  });

  it('rejects badly named files and a missing folder, and ignores non-SQL files', async () => {
    const bad = await mkdtemp(path.join(tmpdir(), 'pgtenant-mig-'));
    try {
      await mkdir(path.join(bad, 'tenant'));
      await writeFile(path.join(bad, 'tenant', '.gitkeep'), '');
      await writeFile(path.join(bad, 'tenant', 'README.md'), 'notes');
      expect(await loadMigrations(bad)).toEqual({ tenant: [], shared: [] });
      await writeFile(path.join(bad, 'tenant', 'create_things.sql'), 'SELECT 1;');
      await expect(loadMigrations(bad)).rejects.toMatchObject({ code: 'invalid_migration' });
      await expect(loadMigrations(path.join(bad, 'nope'))).rejects.toMatchObject({ code: 'invalid_migration' });
    } finally {
      await rm(bad, { recursive: true, force: true });
    }
  });
});
