// Tenant lifecycle in role isolation on a real server: roles, schemas, privileges, migrations, suspend, drop, NOTIFY.
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { TenantDirectory } from '../../src/tenants/directory.js';
import { TenantService } from '../../src/tenants/service.js';
import { freshDatabase, uniqueTenantId, type TestDatabase } from '../support/db.js';

const EXAMPLES = path.resolve('examples/migrations');
let db: TestDatabase;
let pool: pg.Pool;
let svc: TenantService;

beforeAll(async () => {
  db = await freshDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 4 });
  const c = await pool.connect();
  await installControlSchema(c);
  c.release();
  svc = new TenantService(pool, { isolation: 'role', migrationsDir: EXAMPLES });
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

/** A direct connection as the tenant role, with its password. */
async function connectAs(role: string, password: string): Promise<pg.Client> {
  const u = new URL(db.url);
  u.username = role;
  u.password = encodeURIComponent(password);
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  return c;
}

const sqlstate = (p: Promise<unknown>) => p.then(() => 'no error', (e: { code?: string }) => e.code);

describe('create in role isolation', () => {
  it('makes a LOGIN role with a SCRAM verifier that owns its schema, and applies the tenant migrations', async () => {
    const id = uniqueTenantId('acme');
    const { tenant, password, migrationsApplied } = await svc.create(id);
    expect(tenant).toMatchObject({ id, schema: id, role: id, state: 'active' });
    expect(tenant.createdAt).toBeInstanceOf(Date);
    expect(password).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(migrationsApplied).toBe(3);
    const { rows } = await pool.query(
      `SELECT a.rolpassword, a.rolcanlogin, a.rolsuper, a.rolcreatedb, a.rolcreaterole, n.nspowner::regrole::text AS owner,
              (SELECT tableowner FROM pg_tables WHERE schemaname = $1 AND tablename = 'notes') AS notes_owner
         FROM pg_authid a, pg_namespace n WHERE a.rolname = $1 AND n.nspname = $1`,
      [id],
    );
    expect(rows[0].rolpassword).toMatch(/^SCRAM-SHA-256\$4096:/);
    expect(rows[0]).toMatchObject({ rolcanlogin: true, rolsuper: false, rolcreatedb: false, rolcreaterole: false, owner: id });
    expect(rows[0].notes_owner).toBe(id);
    const journal = await pool.query('SELECT version, name FROM pgtenant.migrations WHERE tenant_id = $1 ORDER BY version', [id]);
    expect(journal.rows).toEqual([
      { version: '20260101000000', name: 'create_notes' },
      { version: '20260102000000', name: 'create_projects' },
      { version: '20260103000000', name: 'pin_notes' },
    ]);
  });

  it('lets the tenant log in with its password and lands it in its own schema', async () => {
    const id = uniqueTenantId('login');
    const { password } = await svc.create(id, { password: 'correct horse battery' });
    expect(password).toBeNull();
    const c = await connectAs(id, 'correct horse battery');
    try {
      const { rows } = await c.query('SELECT current_user AS u, current_schema() AS s');
      expect(rows[0]).toEqual({ u: id, s: id });
      await c.query("INSERT INTO notes (body) VALUES ('hello')");
      expect((await c.query('SELECT body FROM notes')).rows).toEqual([{ body: 'hello' }]);
      await c.query('RESET ALL');
      expect((await c.query('SELECT current_schema() AS s')).rows[0].s).toBe(id);
    } finally {
      await c.end();
    }
    expect(await sqlstate(connectAs(id, 'wrong password!'))).toBe('28P01');
  });

  it('keeps a tenant out of other tenants, the control schema and public', async () => {
    const a = uniqueTenantId('alpha');
    const b = uniqueTenantId('beta');
    const { password } = await svc.create(a);
    await svc.create(b);
    await pool.query(`INSERT INTO "${b}".notes (body) VALUES ('secret of b')`);
    const c = await connectAs(a, password!);
    try {
      expect(await sqlstate(c.query(`SELECT * FROM "${b}".notes`))).toBe('42501');
      expect(await sqlstate(c.query(`SET ROLE "${b}"`))).toBe('42501');
      expect(await sqlstate(c.query('SELECT * FROM pgtenant.tenants'))).toBe('42501');
      expect(await sqlstate(c.query('SELECT * FROM pgtenant.migrations'))).toBe('42501');
      expect(await sqlstate(c.query('CREATE TABLE public.leak (id int)'))).toBe('42501');
      expect(await sqlstate(c.query(`CREATE TABLE "${b}".leak (id int)`))).toBe('42501');
      await c.query(`SET search_path TO "${b}"`);
      expect(await sqlstate(c.query('SELECT * FROM notes'))).toBe('42P01');
    } finally {
      await c.end();
    }
  });

  it('refuses invalid and reserved ids', async () => {
    const bad = ['Acme', '1acme', 'ac-me', 'a b', '', 'x'.repeat(64), 'public', 'postgres', 'pgtenant', 'information_schema',
      'pg_foo', 'template0', 'template1', 'current_user', 'session_user', 'none'];
    for (const id of bad) {
      await expect(svc.create(id), id).rejects.toMatchObject({ code: 'invalid_tenant_id' });
    }
    await expect(svc.get('Nope')).rejects.toMatchObject({ code: 'invalid_tenant_id' });
  });

  it('refuses a duplicate tenant, and an id whose role already exists', async () => {
    const id = uniqueTenantId('dup');
    await svc.create(id);
    await expect(svc.create(id)).rejects.toMatchObject({ code: 'tenant_exists' });
    const other = uniqueTenantId('taken');
    await pool.query(`CREATE ROLE "${other}"`);
    await expect(svc.create(other)).rejects.toMatchObject({ code: 'tenant_exists' });
    await pool.query(`DROP ROLE "${other}"`);
  });

  it('refuses a short or non-ASCII password', async () => {
    await expect(svc.create(uniqueTenantId('pw'), { password: 'short' })).rejects.toMatchObject({ code: 'invalid_password' });
    await expect(svc.create(uniqueTenantId('pw'), { password: 'pässwörd-long' })).rejects.toMatchObject({ code: 'invalid_password' });
  });

  it('leaves no role, schema or rows behind when a migration fails', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'pgtenant-mig-'));
    try {
      await mkdir(path.join(dir, 'tenant'));
      await writeFile(path.join(dir, 'tenant', '001_ok.sql'), 'CREATE TABLE fine (id int);');
      // Runs as the tenant role, which may not create in public: the failure proves the role switch too.
      await writeFile(path.join(dir, 'tenant', '002_escape.sql'), 'CREATE TABLE public.escaped (id int);');
      const failing = new TenantService(pool, { isolation: 'role', migrationsDir: dir });
      const id = uniqueTenantId('broken');
      const err = await failing.create(id).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'migration_failed' });
      expect((err as Error).message).toContain('002_escape');
      const { rows } = await pool.query(
        `SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1)::int AS roles,
                (SELECT count(*) FROM pg_namespace WHERE nspname = $1)::int AS schemas,
                (SELECT count(*) FROM pgtenant.tenants WHERE id = $1)::int AS tenants,
                (SELECT count(*) FROM pgtenant.migrations WHERE tenant_id = $1)::int AS journal,
                to_regclass('public.escaped') IS NULL AS no_escape`,
        [id],
      );
      expect(rows[0]).toEqual({ roles: 0, schemas: 0, tenants: 0, journal: 0, no_escape: true });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('suspend, resume, drop', () => {
  let directory: TenantDirectory;
  beforeAll(async () => {
    directory = new TenantDirectory({ connectionString: db.url, ttlMs: 60_000 });
    await directory.start();
  });
  afterAll(async () => directory?.close());

  const changeOf = (id: string) =>
    new Promise<number>((resolve, reject) => {
      const started = Date.now();
      const timer = setTimeout(() => reject(new Error(`no change event for ${id} within 1s`)), 1000);
      const on = (changed: string) => {
        if (changed !== id) return;
        clearTimeout(timer);
        directory.off('change', on);
        resolve(Date.now() - started);
      };
      directory.on('change', on);
    });

  it('suspend makes the role NOLOGIN and a directory on another connection drops its cached entry', async () => {
    const id = uniqueTenantId('susp');
    const { password } = await svc.create(id);
    expect((await directory.lookup(id))?.state).toBe('active');
    const changed = changeOf(id);
    const suspended = await svc.suspend(id);
    expect(suspended.state).toBe('suspended');
    await changed;
    expect((await directory.lookup(id))?.state).toBe('suspended');
    const { rows } = await pool.query('SELECT rolcanlogin FROM pg_roles WHERE rolname = $1', [id]);
    expect(rows[0].rolcanlogin).toBe(false);
    expect(await sqlstate(connectAs(id, password!))).toBe('28000');

    const resumedEvent = changeOf(id);
    expect((await svc.resume(id)).state).toBe('active');
    await resumedEvent;
    expect((await directory.lookup(id))?.state).toBe('active');
    const c = await connectAs(id, password!);
    await c.end();
  });

  it('coalesces concurrent lookups, caches misses, and answers null for invalid ids', async () => {
    const id = uniqueTenantId('coal');
    expect(await directory.lookup(id)).toBeNull();
    const created = changeOf(id);
    await svc.create(id);
    await created; // the NOTIFY of the create drops the cached miss
    const many = await Promise.all(Array.from({ length: 10 }, () => directory.lookup(id)));
    expect(many[0]).toMatchObject({ id, state: 'active' });
    for (const r of many) expect(r).toBe(many[0]); // one query, one object
    expect(await directory.lookup('Not-Valid')).toBeNull();
    expect(await directory.lookup('pg_catalog')).toBeNull();
  });

  it('reconnects its LISTEN connection after it is killed, and still sees changes', async () => {
    const id = uniqueTenantId('relisten');
    await svc.create(id);
    const reset = once(directory, 'reset');
    await pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtenant-listen' AND datname = $1`, [db.name]);
    await reset; // dropped on loss
    await once(directory, 'reset'); // and again once listening resumed
    const changed = changeOf(id);
    await svc.suspend(id);
    await changed;
  });

  it('drop terminates sessions and removes role, schema and rows', async () => {
    const id = uniqueTenantId('gone');
    const { password } = await svc.create(id);
    const session = await connectAs(id, password!);
    // events.once would reject on the 'error' that precedes 'end' (57P01, terminated by the drop).
    session.on('error', () => undefined);
    const ended = new Promise((resolve) => session.once('end', resolve));
    const changed = changeOf(id);
    await svc.drop(id);
    await changed;
    await ended;
    const { rows } = await pool.query(
      `SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1)::int AS roles,
              (SELECT count(*) FROM pg_namespace WHERE nspname = $1)::int AS schemas,
              (SELECT count(*) FROM pgtenant.tenants WHERE id = $1)::int AS tenants,
              (SELECT count(*) FROM pgtenant.migrations WHERE tenant_id = $1)::int AS journal`,
      [id],
    );
    expect(rows[0]).toEqual({ roles: 0, schemas: 0, tenants: 0, journal: 0 });
    expect(await directory.lookup(id)).toBeNull();
    await expect(svc.get(id)).rejects.toMatchObject({ code: 'tenant_not_found' });
    await expect(svc.drop(id)).rejects.toMatchObject({ code: 'tenant_not_found' });
    await expect(svc.suspend(id)).rejects.toMatchObject({ code: 'tenant_not_found' });
  });

  it('lists tenants in id order', async () => {
    const ids = (await svc.list()).map((t) => t.id);
    expect(ids).toEqual([...ids].sort());
    expect(ids.length).toBeGreaterThan(3);
  });
});

it('reports not_initialized on a database without the control schema', async () => {
  const other = await freshDatabase();
  const bare = new pg.Pool({ connectionString: other.url, max: 1 });
  try {
    const service = new TenantService(bare, { isolation: 'role' });
    await expect(service.list()).rejects.toMatchObject({ code: 'not_initialized' });
    await expect(service.create(uniqueTenantId('early'))).rejects.toMatchObject({ code: 'not_initialized' });
    const dir = new TenantDirectory({ connectionString: other.url, ttlMs: 1000 });
    await dir.start();
    await expect(dir.lookup('acme')).rejects.toMatchObject({ code: 'not_initialized' });
    await dir.close();
  } finally {
    await bare.end();
    await other.drop();
  }
});
