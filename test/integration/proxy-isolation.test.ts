// Role isolation through the proxy with real clients: tenants acme and globex each land in, and only reach, their own schema.
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withDatabase } from '../support/db.js';
import { connectPg, hasBinary, proxyFixture, rejection, run, titleNeeding, type ProxyFixture, type TestProxy } from '../support/proxy.js';

// The only file that uses these literal ids (roles are cluster-wide); every other file uses uniqueTenantId.
const TENANTS = ['acme', 'globex'] as const;
type Tenant = (typeof TENANTS)[number];
const PASSWORDS: Record<Tenant, string> = { acme: 'acme-secret-pw-1', globex: 'globex-secret-pw-2' };
const SECRET = 'GLOBEX-SECRET';

let fx: ProxyFixture;
let proxy: TestProxy;

/** A crashed earlier run against a persistent server may have left the roles behind, owning objects somewhere. */
async function dropLeftoverRole(adminUrl: string, role: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1', [role]);
    if (exists.rowCount === 0) return;
    const { rows } = await admin.query<{ datname: string }>(
      `SELECT DISTINCT d.datname FROM pg_catalog.pg_shdepend s
         JOIN pg_catalog.pg_database d ON d.oid = s.dbid
         JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid
        WHERE r.rolname = $1 AND s.refclassid = 'pg_catalog.pg_authid'::regclass AND d.datallowconn`,
      [role],
    );
    for (const { datname } of rows) {
      const c = new pg.Client({ connectionString: withDatabase(adminUrl, datname) });
      await c.connect();
      await c.query(`DROP OWNED BY "${role}" CASCADE`).finally(() => c.end());
    }
    await admin.query(`DROP ROLE "${role}"`);
  } finally {
    await admin.end();
  }
}

beforeAll(async () => {
  fx = await proxyFixture('role');
  for (const t of TENANTS) await dropLeftoverRole(fx.db.adminUrl, t);
  for (const t of TENANTS) await fx.tenants.create(t, { password: PASSWORDS[t] });
  proxy = await fx.startProxy();
});

afterAll(async () => {
  if (!fx) return;
  await Promise.allSettled(fx.proxies.map((p) => p.server.close(0)));
  for (const t of TENANTS) await fx.tenants.drop(t).catch(() => undefined);
  await fx.close();
});

const pgConfig = (t: Tenant, extra: Partial<pg.ClientConfig> = {}): pg.ClientConfig => ({
  ...proxy.clientConfig(t, PASSWORDS[t]),
  ...extra,
});

const postgresJs = (t: Tenant, extra: postgres.Options<Record<string, never>> = {}) =>
  postgres({
    host: '127.0.0.1',
    port: proxy.port,
    database: fx.db.name,
    username: t,
    password: PASSWORDS[t],
    max: 1,
    ssl: false,
    connect_timeout: 5,
    onnotice: () => undefined,
    ...extra,
  });

async function psql(t: Tenant, sql: string, vars: string[] = []) {
  return run('psql', ['-X', '-A', '-t', '-q', ...vars, '-d', proxy.url(t, PASSWORDS[t]), '-c', sql]);
}

/** Each client recreates its tenant's notes table, writes a row, and must read back only that tenant's rows. */
const NOTES_DDL = 'DROP TABLE IF EXISTS notes; CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY, tenant text NOT NULL, body text NOT NULL)';

describe('pg (node-postgres) as acme and globex', () => {
  it('lands in the tenant schema as the tenant role and sees only its own notes', async () => {
    for (const t of TENANTS) {
      const c = await connectPg(pgConfig(t));
      try {
        const who = await c.query('SELECT current_user AS usr, current_schema() AS sch, current_database() AS db');
        expect(who.rows[0]).toEqual({ usr: t, sch: t, db: fx.db.name });
        await c.query(NOTES_DDL);
        await c.query('INSERT INTO notes (tenant, body) VALUES ($1, $2)', [t, `${t} via pg`]);
      } finally {
        await c.end();
      }
    }
    for (const t of TENANTS) {
      const c = await connectPg(pgConfig(t));
      const { rows } = await c.query('SELECT tenant, body FROM notes');
      await c.end();
      expect(rows).toEqual([{ tenant: t, body: `${t} via pg` }]);
    }
  });
});

describe('postgres (postgres.js, named prepared statements) as acme and globex', () => {
  it('lands in the tenant schema as the tenant role and sees only its own notes', async () => {
    for (const t of TENANTS) {
      const sql = postgresJs(t);
      try {
        const [who] = await sql`SELECT current_user AS usr, current_schema() AS sch`;
        expect(who).toEqual({ usr: t, sch: t });
        await sql.unsafe(NOTES_DDL);
        await sql`INSERT INTO notes (tenant, body) VALUES (${t}, ${`${t} via postgres.js`})`;
        // Run the same prepared statement twice: the second execution reuses the named statement.
        for (let i = 0; i < 2; i++) {
          const rows = await sql`SELECT tenant, body FROM notes WHERE tenant = ${t}`;
          expect([...rows]).toEqual([{ tenant: t, body: `${t} via postgres.js` }]);
        }
        const all = await sql`SELECT tenant FROM notes`;
        expect(all.map((r) => r.tenant)).toEqual([t]);
      } finally {
        await sql.end({ timeout: 5 });
      }
    }
  });
});

describe.runIf(hasBinary('psql'))(titleNeeding('psql as acme and globex', 'psql'), () => {
  it('lands in the tenant schema as the tenant role and sees only its own notes', async () => {
    for (const t of TENANTS) {
      const who = await psql(t, 'SELECT current_user || \',\' || current_schema()');
      expect(who.stderr).toBe('');
      expect(who.stdout.trim()).toBe(`${t},${t}`);
      const setup = await psql(t, `${NOTES_DDL}; INSERT INTO notes (tenant, body) VALUES ('${t}', '${t} via psql')`, ['-v', 'ON_ERROR_STOP=1']);
      expect(setup.code, setup.stderr).toBe(0);
    }
    for (const t of TENANTS) {
      const read = await psql(t, 'SELECT tenant || \':\' || body FROM notes');
      expect(read.code, read.stderr).toBe(0);
      expect(read.stdout.trim().split('\n')).toEqual([`${t}:${t} via psql`]);
    }
  });
});

describe('many sessions at once', () => {
  it('30 concurrent pg sessions, alternating acme and globex, each see only their own tenant', async () => {
    const results = await Promise.all(
      Array.from({ length: 30 }, async (_, i) => {
        const t = TENANTS[i % 2]!;
        const c = await connectPg(pgConfig(t));
        try {
          const { rows } = await c.query('SELECT current_user AS usr, current_schema() AS sch, (SELECT array_agg(DISTINCT tenant) FROM notes) AS seen');
          return { t, ...rows[0] };
        } finally {
          await c.end();
        }
      }),
    );
    for (const r of results) expect(r).toEqual({ t: r.t, usr: r.t, sch: r.t, seen: [r.t] });
  });
});

/** One way to run SQL as a session: rows as JSON text, or the SQLSTATE it failed with. */
interface Session {
  query(sql: string): Promise<{ rows: Record<string, unknown>[] } | { code: string }>;
  end(): Promise<void>;
}

async function pgSession(extra: Partial<pg.ClientConfig> = {}): Promise<Session> {
  const c = await connectPg(pgConfig('acme', extra));
  return {
    query: (sql) => c.query(sql).then((r) => ({ rows: r.rows }), (e: { code: string }) => ({ code: e.code })),
    end: () => c.end(),
  };
}

function postgresJsSession(): Session {
  const sql = postgresJs('acme');
  return {
    query: (text) => sql.unsafe(text).then((rows) => ({ rows: [...rows] }), (e: { code: string }) => ({ code: e.code })),
    end: () => sql.end({ timeout: 5 }),
  };
}

const rowsOf = async (s: Session, sql: string): Promise<Record<string, unknown>[]> => {
  const r = await s.query(sql);
  if ('code' in r) throw new Error(`${sql} failed with ${r.code}`);
  return r.rows;
};

/** The statement fails with one of the codes, or returns rows none of which is globex's. */
async function expectNoGlobexRows(s: Session, sql: string, allowed: string[]): Promise<void> {
  const r = await s.query(sql);
  if ('code' in r) expect(allowed, `${sql} failed with ${r.code}`).toContain(r.code);
  else expect(JSON.stringify(r.rows)).not.toContain(SECRET);
}

describe('acme cannot reach globex', () => {
  beforeAll(async () => {
    // Fresh marker rows in both schemas, written by each tenant itself.
    for (const t of TENANTS) {
      const c = await connectPg(pgConfig(t));
      await c.query(NOTES_DDL);
      await c.query('INSERT INTO notes (tenant, body) VALUES ($1, $2)', [t, t === 'globex' ? SECRET : 'acme note']);
      await c.end();
    }
  });

  const clients: Array<[string, () => Promise<Session> | Session]> = [
    ['pg', () => pgSession()],
    ['postgres.js', () => postgresJsSession()],
  ];

  describe.each(clients)('through %s', (_name, open) => {
    it('SET search_path TO globex, set_config and schema-qualified names never return globex rows', async () => {
      const s = await open();
      try {
        await expectNoGlobexRows(s, 'SELECT * FROM globex.notes', ['42501']);
        expect(await s.query('SELECT * FROM globex.notes')).toEqual({ code: '42501' });

        expect(await s.query('SET search_path TO globex')).not.toHaveProperty('code');
        await expectNoGlobexRows(s, 'SELECT * FROM notes', ['42P01']);

        await rowsOf(s, "SELECT set_config('search_path', 'globex', false)");
        await expectNoGlobexRows(s, 'SELECT * FROM notes', ['42P01']);
        await rowsOf(s, "SELECT set_config('search_path', 'globex, acme', false)");
        await expectNoGlobexRows(s, 'SELECT * FROM notes', []);
      } finally {
        await s.end();
      }
    });

    it('RESET ALL and DISCARD ALL come back to acme', async () => {
      const s = await open();
      try {
        for (const reset of ['RESET ALL', 'RESET search_path', 'DISCARD ALL']) {
          await s.query('SET search_path TO globex');
          expect(await s.query(reset)).not.toHaveProperty('code');
          expect(await rowsOf(s, 'SELECT current_schema() AS sch, current_user AS usr')).toEqual([{ sch: 'acme', usr: 'acme' }]);
          expect(await rowsOf(s, 'SELECT tenant, body FROM notes')).toEqual([{ tenant: 'acme', body: 'acme note' }]);
        }
      } finally {
        await s.end();
      }
    });

    it('SET ROLE and SET SESSION AUTHORIZATION to globex are refused', async () => {
      const s = await open();
      try {
        expect(await s.query('SET ROLE globex')).toEqual({ code: '42501' });
        expect(await s.query('SET SESSION AUTHORIZATION globex')).toEqual({ code: '42501' });
        await expectNoGlobexRows(s, 'SELECT * FROM globex.notes', ['42501']);
        expect(await rowsOf(s, 'SELECT current_user AS usr, session_user AS ses')).toEqual([{ usr: 'acme', ses: 'acme' }]);
      } finally {
        await s.end();
      }
    });
  });

  describe.runIf(hasBinary('psql'))(titleNeeding('through psql', 'psql'), () => {
    it('a script of escape attempts never prints globex rows and RESET ALL restores acme', async () => {
      const script = [
        'SET search_path TO globex;',
        'SELECT * FROM notes;',
        "SELECT set_config('search_path','globex',false);",
        'SELECT * FROM notes;',
        'SELECT * FROM globex.notes;',
        'SET ROLE globex;',
        'RESET ALL;',
        "SELECT 'after-reset:' || current_schema();",
        'DISCARD ALL;',
        "SELECT 'after-discard:' || current_schema();",
      ].join('\n');
      const r = await run('psql', ['-X', '-A', '-t', '-q', '-d', proxy.url('acme', PASSWORDS.acme), '-c', script]);
      expect(r.stdout).not.toContain(SECRET);
      expect(r.stderr).not.toContain(SECRET);
      // -c runs the whole string as one multi-statement query that stops at the first error, so run them one by one too.
      const steps = script.split('\n').flatMap((line) => ['-c', line]);
      const each = await run('psql', ['-X', '-A', '-t', '-q', '-d', proxy.url('acme', PASSWORDS.acme), ...steps]);
      expect(each.stdout + each.stderr).not.toContain(SECRET);
      expect(each.stdout).toContain('after-reset:acme');
      expect(each.stdout).toContain('after-discard:acme');
      expect(each.stderr).toContain('permission denied for schema globex');
    });
  });
});

describe('startup-packet attempts to choose the schema or role', () => {
  const optionAttempts = [
    '-c search_path=globex',
    '-csearch_path=globex',
    '--search_path=globex',
    '-c SEARCH_PATH=globex',
    '--search-path=globex',
    '-c role=globex',
    '-c session_authorization=globex',
    '-c search_path=globex -c role=globex',
  ];

  it.each(optionAttempts)('pg with options=%s still lands in acme', async (options) => {
    const c = await connectPg(pgConfig('acme', { options }));
    try {
      const { rows } = await c.query('SELECT current_user AS usr, current_schema() AS sch, tenant, body FROM notes');
      expect(rows).toEqual([{ usr: 'acme', sch: 'acme', tenant: 'acme', body: 'acme note' }]);
    } finally {
      await c.end();
    }
  });

  it('other startup options still reach the server', async () => {
    const c = await connectPg(pgConfig('acme', { options: '-c statement_timeout=4321 -c search_path=globex' }));
    try {
      expect((await c.query('SHOW statement_timeout')).rows[0]).toEqual({ statement_timeout: '4321ms' });
      expect((await c.query('SELECT current_schema() AS sch')).rows[0]).toEqual({ sch: 'acme' });
    } finally {
      await c.end();
    }
  });

  const parameterAttempts: Array<Record<string, string>> = [
    { search_path: 'globex' },
    { SEARCH_PATH: 'globex' },
    { role: 'globex' },
    { session_authorization: 'globex' },
    { search_path: 'globex', options: '-c search_path=globex' },
  ];

  it.each(parameterAttempts)('postgres.js with startup parameters %o still lands in acme', async (connection) => {
    const sql = postgresJs('acme', { connection });
    try {
      const rows = await sql`SELECT current_user AS usr, current_schema() AS sch, tenant, body FROM notes`;
      expect([...rows]).toEqual([{ usr: 'acme', sch: 'acme', tenant: 'acme', body: 'acme note' }]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it('a client that logs in as globex with acme\'s password is refused', async () => {
    const err = await rejection(connectPg({ ...pgConfig('globex'), password: PASSWORDS.acme }));
    expect(err.code).toBe('28P01');
  });
});
