// `pgtenant tenants import`: legacy schemas adopted as tenants through the built CLI, then used directly as their new roles.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { freshDatabase, runCli, uniqueTenantId, type TestDatabase } from '../support/db.js';

let db: TestDatabase;
let pool: pg.Pool;

beforeAll(async () => {
  db = await freshDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 3 });
  const c = await pool.connect();
  try {
    await installControlSchema(c);
  } finally {
    c.release();
  }
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

const q = (name: string): string => '"' + name.replace(/"/g, '""') + '"';
const importCli = (pattern: string, extra: string[] = [], upstream = db.url) =>
  runCli(['tenants', 'import', '--schema-pattern', pattern, ...extra], { PGTENANT_UPSTREAM: upstream });
const sqlstate = (p: Promise<unknown>) => p.then(() => 'no error', (e: { code?: string }) => e.code);

/** A schema as an application built it before pgtenant: owned by the superuser, open to PUBLIC. */
async function buildLegacy(schema: string): Promise<void> {
  const s = q(schema);
  await pool.query(`
    CREATE SCHEMA ${s};
    GRANT USAGE ON SCHEMA ${s} TO PUBLIC;
    CREATE TYPE ${s}.mood AS ENUM ('calm', 'busy');
    CREATE DOMAIN ${s}.label AS text CHECK (VALUE <> '');
    CREATE TYPE ${s}.pair AS (a int, b int);
    CREATE TABLE ${s}.accounts (id serial PRIMARY KEY, name ${s}.label NOT NULL, mood ${s}.mood NOT NULL DEFAULT 'calm');
    CREATE SEQUENCE ${s}.invoice_no;
    CREATE VIEW ${s}.calm_accounts AS SELECT id, name FROM ${s}.accounts WHERE mood = 'calm';
    CREATE FUNCTION ${s}.account_count(m ${s}.mood) RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM ${s}.accounts WHERE mood = m $$;
    INSERT INTO ${s}.accounts (name) VALUES ('first'), ('second');
    CREATE TYPE ${s}.span AS RANGE (subtype = int);
    CREATE TABLE ${s}.audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);
    CREATE TABLE ${s}.events (at date NOT NULL, what text) PARTITION BY RANGE (at);
    CREATE TABLE ${s}.events_2024 PARTITION OF ${s}.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    CREATE MATERIALIZED VIEW ${s}.mood_totals AS SELECT mood, count(*) AS n FROM ${s}.accounts GROUP BY mood;
    CREATE INDEX ON ${s}.mood_totals (mood);
    CREATE PROCEDURE ${s}.note(t text) LANGUAGE sql AS $$ INSERT INTO ${s}.audit (note) VALUES (t) $$;
    CREATE AGGREGATE ${s}.total(int) (sfunc = int4pl, stype = int);
  `);
}

/** A direct connection to PostgreSQL (not the proxy) as a role with its password. */
async function connectAs(role: string, password: string): Promise<pg.Client> {
  const u = new URL(db.url);
  const c = new pg.Client({ host: u.hostname, port: Number(u.port), database: db.name, user: role, password });
  await c.connect();
  return c;
}

/** Objects in the schema (relations, routines, types including row and array types) not owned by `owner`. */
async function notOwnedBy(schema: string, owner: string): Promise<string[]> {
  const { rows } = await pool.query<{ obj: string }>(
    `WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = $1::text), who AS (SELECT oid FROM pg_roles WHERE rolname = $2::text)
     SELECT c.relkind::text || ':' || c.relname AS obj FROM pg_class c WHERE c.relnamespace = (TABLE ns) AND c.relowner <> (TABLE who)
     UNION ALL SELECT 'f:' || p.proname FROM pg_proc p WHERE p.pronamespace = (TABLE ns) AND p.proowner <> (TABLE who)
     UNION ALL SELECT 't:' || t.typname FROM pg_type t WHERE t.typnamespace = (TABLE ns) AND t.typowner <> (TABLE who)
     UNION ALL SELECT 'schema' FROM pg_namespace n WHERE n.oid = (TABLE ns) AND n.nspowner <> (TABLE who)
     UNION ALL SELECT 'no such schema' WHERE NOT EXISTS (TABLE ns)`,
    [schema, owner],
  );
  return rows.map((r) => r.obj);
}

const passwordOf = (stdout: string, schema: string): string => {
  const m = new RegExp(`^imported ${schema} \\(role ${schema}\\) password: (\\S+)`, 'm').exec(stdout);
  expect(m, stdout).not.toBeNull();
  return m![1]!;
};

describe('role isolation', () => {
  const a = uniqueTenantId('legacy');
  const b = uniqueTenantId('legacy');
  const upper = a.replace('legacy', 'Legacy');
  const digit = `9${b}`;
  const passwords: Record<string, string> = {};

  beforeAll(async () => {
    for (const s of [a, b, upper, digit]) await buildLegacy(s);
  });

  it('imports valid schemas with a new role each, skips invalid names with the reason, and points to migrate stamp', async () => {
    const r = await importCli('%egacy%');
    expect(r.code, r.stderr).toBe(0);
    passwords[a] = passwordOf(r.stdout, a);
    passwords[b] = passwordOf(r.stdout, b);
    expect(passwords[a]).not.toBe(passwords[b]);
    expect(r.stdout).toMatch(new RegExp(`^skipped +${upper}: invalid tenant id`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^skipped +${digit}: invalid tenant id`, 'm'));
    expect(r.stdout).toMatch(/^2 imported, 2 skipped, 0 failed$/m);
    expect(r.stdout).toContain('pgtenant migrate stamp --tenant ID --version V');
    const { rows } = await pool.query('SELECT id, schema_name, role_name, isolation, state FROM pgtenant.tenants ORDER BY id');
    expect(rows).toEqual(
      [a, b].sort().map((id) => ({ id, schema_name: id, role_name: id, isolation: 'role', state: 'active' })),
    );
  });

  it('hands the schema and every object in it to the role, revokes PUBLIC, and leaves skipped schemas alone', async () => {
    expect(await notOwnedBy(a, a)).toEqual([]);
    expect(await notOwnedBy(b, b)).toEqual([]);
    const { rows } = await pool.query(
      `SELECT r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolinherit, a.rolpassword LIKE 'SCRAM-SHA-256$4096:%' AS scram,
              has_schema_privilege('public', $1, 'USAGE') AS public_usage,
              has_schema_privilege('public', $2, 'USAGE') AS skipped_public_usage
         FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = $1`,
      [a, upper],
    );
    expect(rows[0]).toEqual({
      rolcanlogin: true, rolsuper: false, rolcreatedb: false, rolcreaterole: false, rolinherit: false, scram: true,
      public_usage: false, skipped_public_usage: true,
    });
    const skipped = await pool.query('SELECT count(*)::int AS n FROM pg_roles WHERE rolname = ANY($1)', [[upper, digit]]);
    expect(skipped.rows[0].n).toBe(0);
  });

  it('lets the new role log in directly, land in its schema, use and ALTER the legacy objects', async () => {
    const c = await connectAs(a, passwords[a]!);
    try {
      expect((await c.query('SELECT current_user AS u, current_schema() AS s')).rows[0]).toEqual({ u: a, s: a });
      expect((await c.query('SELECT name FROM accounts ORDER BY id')).rows).toEqual([{ name: 'first' }, { name: 'second' }]);
      expect((await c.query("INSERT INTO accounts (name) VALUES ('third') RETURNING id")).rows).toEqual([{ id: 3 }]);
      expect((await c.query("SELECT nextval('invoice_no')::int AS n")).rows).toEqual([{ n: 1 }]);
      expect((await c.query("SELECT account_count('calm')::int AS n")).rows).toEqual([{ n: 3 }]);
      expect((await c.query('SELECT count(*)::int AS n FROM calm_accounts')).rows).toEqual([{ n: 3 }]);
      // Each of these needs ownership, which is what migrations running as the tenant role will do.
      await c.query('ALTER TABLE accounts ADD COLUMN email text');
      await c.query("ALTER TYPE mood ADD VALUE 'angry'");
      await c.query("ALTER DOMAIN label ADD CONSTRAINT short CHECK (length(VALUE) < 100)");
      await c.query('ALTER TYPE pair ADD ATTRIBUTE c int');
      await c.query('ALTER SEQUENCE accounts_id_seq RESTART WITH 100');
      await c.query('CREATE OR REPLACE VIEW calm_accounts AS SELECT id, name, email FROM accounts WHERE mood = \'calm\'');
      await c.query('ALTER FUNCTION account_count(mood) RENAME TO count_accounts');
      await c.query('CREATE TABLE added_later (id int)');
      await c.query('REFRESH MATERIALIZED VIEW mood_totals');
      await c.query("CALL note('imported')");
      await c.query('ALTER TABLE audit ALTER COLUMN id RESTART WITH 50');
      await c.query("CALL note('again')");
      expect((await c.query('SELECT max(id)::int AS id FROM audit')).rows).toEqual([{ id: 50 }]);
      await c.query('ALTER TABLE events ADD COLUMN who text');
      await c.query("INSERT INTO events VALUES ('2024-06-01', 'launch', 'me')");
      await c.query('ALTER AGGREGATE total(int) RENAME TO sum_up');
      await c.query('ALTER TYPE span RENAME TO int_span');
      expect((await c.query("INSERT INTO accounts (name) VALUES ('fourth') RETURNING id")).rows).toEqual([{ id: 100 }]);
      await c.query('RESET ALL');
      expect((await c.query('SELECT current_schema() AS s')).rows[0].s).toBe(a);
    } finally {
      await c.end();
    }
  });

  it("keeps the role out of the other imported tenant's schema and the control schema", async () => {
    const c = await connectAs(a, passwords[a]!);
    try {
      expect(await sqlstate(c.query(`SELECT * FROM ${q(b)}.accounts`))).toBe('42501');
      expect(await sqlstate(c.query(`SELECT ${q(b)}.account_count('calm')`))).toBe('42501');
      expect(await sqlstate(c.query(`CREATE TABLE ${q(b)}.leak (id int)`))).toBe('42501');
      expect(await sqlstate(c.query('SELECT * FROM pgtenant.tenants'))).toBe('42501');
    } finally {
      await c.end();
    }
  });

  it('does nothing on a rerun: registered schemas are left out (--json)', async () => {
    const r = await importCli('%egacy%', ['--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { imported: unknown[]; skipped: { schema: string; reason: string }[]; failed: unknown[] };
    expect(out.imported).toEqual([]);
    expect(out.failed).toEqual([]);
    expect(out.skipped.map((s) => s.schema).sort()).toEqual([upper, digit].sort());
    for (const s of out.skipped) expect(s.reason).toMatch(/invalid tenant id/);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM pgtenant.tenants');
    expect(rows[0].n).toBe(2);
  });
});

describe('role name clash', () => {
  it('skips a schema whose role name is taken and imports the rest (--json shape)', async () => {
    const taken = uniqueTenantId('clash');
    const free = uniqueTenantId('clash');
    await buildLegacy(taken);
    await buildLegacy(free);
    await pool.query(`CREATE ROLE ${q(taken)} NOLOGIN`);
    const r = await importCli('clash%', ['--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(Object.keys(out).sort()).toEqual(['failed', 'imported', 'skipped']);
    expect(out.imported).toEqual([{ id: free, schema: free, role: free, password: expect.stringMatching(/^[A-Za-z0-9_-]{32}$/) }]);
    expect(out.skipped).toEqual([{ schema: taken, reason: expect.stringMatching(new RegExp(`role named '${taken}' already exists`)) }]);
    expect(out.failed).toEqual([]);
    const { rows } = await pool.query(
      `SELECT (SELECT rolcanlogin FROM pg_roles WHERE rolname = $1) AS taken_login,
              (SELECT count(*)::int FROM pgtenant.tenants WHERE id = $1) AS taken_rows,
              (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1) AS taken_owner,
              current_user AS me`,
      [taken],
    );
    expect(rows[0]).toMatchObject({ taken_login: false, taken_rows: 0, taken_owner: rows[0].me });
    expect(await notOwnedBy(taken, rows[0].me)).toEqual([]);
    const c = await connectAs(free, out.imported[0].password);
    expect((await c.query('SELECT count(*)::int AS n FROM accounts')).rows).toEqual([{ n: 2 }]);
    await c.end();
  });
});

describe('a schema that cannot be imported now', () => {
  it('fails alone with its SQLSTATE (exit 1), rolls back completely, and imports on a rerun', async () => {
    const busy = uniqueTenantId('busy');
    const calm = uniqueTenantId('busy');
    await buildLegacy(busy);
    await buildLegacy(calm);
    const holder = await pool.connect();
    const url = new URL(db.url);
    url.searchParams.set('options', '-c lock_timeout=300');
    try {
      // An application transaction reading the table: re-owning it needs ACCESS EXCLUSIVE.
      await holder.query('BEGIN');
      await holder.query(`SELECT count(*) FROM ${q(busy)}.accounts`);
      const r = await importCli('busy%', [], url.toString());
      expect(r.code, r.stdout + r.stderr).toBe(1);
      expect(r.stdout).toMatch(new RegExp(`^failed +${busy}: 55P03 `, 'm'));
      passwordOf(r.stdout, calm);
      expect(r.stdout).toMatch(/^1 imported, 0 skipped, 1 failed$/m);
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
    const { rows } = await pool.query(
      `SELECT (SELECT count(*)::int FROM pg_roles WHERE rolname = $1) AS roles,
              (SELECT count(*)::int FROM pgtenant.tenants WHERE id = $1) AS tenants,
              (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1) = current_user AS owner_unchanged`,
      [busy],
    );
    expect(rows[0]).toEqual({ roles: 0, tenants: 0, owner_unchanged: true });
    const again = await importCli('busy%', ['--json']);
    expect(again.code, again.stderr).toBe(0);
    const out = JSON.parse(again.stdout);
    expect(out.imported.map((t: { id: string }) => t.id)).toEqual([busy]);
    expect(out.failed).toEqual([]);
    expect(await notOwnedBy(busy, busy)).toEqual([]);
  });
});

describe('schema isolation', () => {
  it('registers rows without roles and revokes PUBLIC from the schemas', async () => {
    const s1 = uniqueTenantId('flat');
    const s2 = uniqueTenantId('flat');
    await buildLegacy(s1);
    await buildLegacy(s2);
    const r = await importCli('flat%', ['--isolation', 'schema']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^imported ${s1} \\(schema isolation, shared login role\\)$`, 'm'));
    expect(r.stdout).not.toMatch(/password/);
    const { rows } = await pool.query(
      `SELECT t.id, t.role_name, t.isolation, has_schema_privilege('public', t.schema_name, 'USAGE') AS public_usage,
              EXISTS (SELECT 1 FROM pg_roles WHERE rolname = t.id) AS has_role
         FROM pgtenant.tenants t WHERE t.id = ANY($1) ORDER BY t.id`,
      [[s1, s2]],
    );
    expect(rows).toEqual([s1, s2].sort().map((id) => ({ id, role_name: null, isolation: 'schema', public_usage: false, has_role: false })));
  });
});

describe('command line', () => {
  it('says so when nothing matches (exit 0), and needs --schema-pattern (exit 2)', async () => {
    const none = await importCli('nothing_here_%');
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toMatch(/^no schema to import matches 'nothing_here_%'/);
    const json = await importCli('nothing_here_%', ['--json']);
    expect(JSON.parse(json.stdout)).toEqual({ imported: [], skipped: [], failed: [] });
    const missing = await runCli(['tenants', 'import'], { PGTENANT_UPSTREAM: db.url });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/schema-pattern/);
  });

  it('treats the pattern as data, never as SQL', async () => {
    const r = await importCli("x'; DROP TABLE pgtenant.tenants; --");
    expect(r.code, r.stderr).toBe(0);
    const { rows } = await pool.query("SELECT to_regclass('pgtenant.tenants') IS NOT NULL AS there");
    expect(rows[0].there).toBe(true);
  });
});
