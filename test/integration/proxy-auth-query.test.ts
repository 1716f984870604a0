// Proxy-side authentication through the auth query: refusals that open no backend, expired/NOLOGIN/changed/MD5 secrets, relay mode, and an auth query nobody can redirect.
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { startProxy } from '../../src/proxy/server.js';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { scramVerifier } from '../../src/tenants/scram.js';
import { TenantService } from '../../src/tenants/service.js';
import { uniqueTenantId } from '../support/db.js';
import {
  connectPg,
  initializedDatabase,
  parseMessages,
  proxyFixture,
  rawExchange,
  rejection,
  sleep,
  startupMessage,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'auth-query-password-1';
const WRONG = 'wrong-password-0000';
let fx: ProxyFixture;
let proxy: TestProxy;

beforeAll(async () => {
  fx = await proxyFixture('role');
  proxy = await fx.startProxy();
});

afterAll(async () => {
  await fx?.close();
});

const newTenant = (prefix: string): Promise<string> => fx.newTenant(prefix, PASSWORD);

const connectAs = (user: string, password: string, via: TestProxy = proxy, extra: Partial<pg.ClientConfig> = {}) =>
  connectPg({ ...via.clientConfig(user, password), ...extra });

type Outcome = { code: string | null; message: string; hint?: string };

/** One login attempt: null code when it got in (and the session was ended again). */
async function attempt(user: string, password: string, via: TestProxy = proxy): Promise<Outcome> {
  try {
    const c = await connectAs(user, password, via);
    await c.end();
    return { code: null, message: 'logged in' };
  } catch (err) {
    const e = err as Error & { code?: string; hint?: string };
    return { code: e.code ?? 'none', message: e.message, hint: e.hint };
  }
}

/**
 * Retries a login until its outcome has `code`, for up to 2.5 s: less than the 5 s secret cache, so reaching
 * the new outcome in time shows the NOTIFY dropped the cached secret. Returns the last outcome.
 */
async function eventually(user: string, password: string, code: string | null, via: TestProxy = proxy): Promise<Outcome> {
  const deadline = Date.now() + 2500;
  for (;;) {
    const got = await attempt(user, password, via);
    if (got.code === code || Date.now() > deadline) return got;
    await sleep(50);
  }
}

/** Tells the proxies a tenant changed: every cached secret is dropped. */
const notifyTenant = (id: string) => fx.admin.query("SELECT pg_catalog.pg_notify('pgtenant_tenants', $1)", [id]);

const backendsOf = async (role: string): Promise<number> =>
  (await fx.admin.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = $1', [role])).rows[0]!.n;

const pidOf = async (c: pg.Client): Promise<number> => (await c.query('SELECT pg_catalog.pg_backend_pid() AS pid')).rows[0].pid;

async function backendGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 60; i++) {
    const { rowCount } = await fx.admin.query('SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid]);
    if (rowCount === 0) return true;
    await sleep(50);
  }
  return false;
}

/** The authentication request codes (R messages) the proxy sends for a startup, until it waits for an answer. */
async function authRequests(user: string, via: TestProxy = proxy): Promise<number[]> {
  const reply = await rawExchange(via.port, [startupMessage({ user, database: fx.db.name })], {
    waitMs: 2000,
    until: (d) => parseMessages(d).messages.some((m) => m.type === 'R' || m.type === 'E'),
  });
  return parseMessages(reply.data).messages.filter((m) => m.type === 'R').map((m) => m.body.readInt32BE(0));
}

describe('refusals come from the proxy', () => {
  it('a wrong password gets 28P01 without a backend ever opening for the role', async () => {
    const tenant = await newTenant('wrongpw');
    const before = proxy.server.pool.size;
    let during: { backends: number; pool: number } | null = null;
    // The password callback runs while the proxy waits for the answer: look at the server at that moment.
    const err = await rejection(
      connectAs(tenant, WRONG, proxy, {
        password: async () => {
          during = { backends: await backendsOf(tenant), pool: proxy.server.pool.size };
          return WRONG;
        },
      }),
    );
    expect(err.code).toBe('28P01');
    expect(err.message).toBe(`password authentication failed for user "${tenant}"`);
    expect(during).toEqual({ backends: 0, pool: before });
    expect(await backendsOf(tenant)).toBe(0);
    expect(proxy.server.pool.size).toBe(before);
    expect(proxy.server.pool.counts().get(tenant)).toBeUndefined();
  });

  it('an unknown tenant gets the same 28P01 and opens nothing either', async () => {
    const tenant = await newTenant('knownpw');
    const unknown = uniqueTenantId('nosuch');
    const before = proxy.server.pool.size;
    const wrong = await rejection(connectAs(tenant, WRONG));
    const missing = await rejection(connectAs(unknown, WRONG));
    expect({ code: missing.code, severity: missing.severity, message: missing.message.replaceAll(unknown, '<u>') }).toEqual({
      code: wrong.code,
      severity: wrong.severity,
      message: wrong.message.replaceAll(tenant, '<u>'),
    });
    expect(missing.code).toBe('28P01');
    expect(await authRequests(unknown)).toEqual(await authRequests(tenant));
    expect(proxy.server.pool.size).toBe(before);
    expect(proxy.server.pool.counts().get(unknown)).toBeUndefined();
  });
});

describe('what the auth query says about a role', () => {
  it('an expired password is refused with 28P01 like a wrong one; a later VALID UNTIL lets it in again', async () => {
    const tenant = await newTenant('expire');
    expect((await attempt(tenant, PASSWORD)).code).toBeNull();
    await fx.admin.query(`ALTER ROLE "${tenant}" VALID UNTIL '2000-01-01'`);
    await notifyTenant(tenant);
    const expired = await eventually(tenant, PASSWORD, '28P01');
    expect(expired).toMatchObject({ code: '28P01', message: `password authentication failed for user "${tenant}"` });

    await fx.admin.query(`ALTER ROLE "${tenant}" VALID UNTIL '2999-01-01'`);
    await notifyTenant(tenant);
    expect(await eventually(tenant, PASSWORD, null)).toMatchObject({ code: null });
  });

  it("VALID UNTIL 'infinity' lets the role in (also right after an expired date)", async () => {
    const tenant = await newTenant('infinity');
    await fx.admin.query(`ALTER ROLE "${tenant}" VALID UNTIL '2000-01-01'`);
    expect((await attempt(tenant, PASSWORD)).code).toBe('28P01');
    await fx.admin.query(`ALTER ROLE "${tenant}" VALID UNTIL 'infinity'`);
    await notifyTenant(tenant);
    expect(await eventually(tenant, PASSWORD, null)).toMatchObject({ code: null });
  });

  it('a NOLOGIN role pgtenant did not suspend: 28000 with the right password, 28P01 with a wrong one', async () => {
    const tenant = await newTenant('nologin');
    expect((await attempt(tenant, PASSWORD)).code).toBeNull();
    await fx.admin.query(`ALTER ROLE "${tenant}" NOLOGIN`);
    await notifyTenant(tenant);
    const refused = await eventually(tenant, PASSWORD, '28000');
    expect(refused).toMatchObject({ code: '28000', message: `role "${tenant}" is not permitted to log in` });
    expect((await attempt(tenant, WRONG)).code).toBe('28P01');
    const { rows } = await fx.admin.query('SELECT state FROM pgtenant.tenants WHERE id = $1', [tenant]);
    expect(rows).toEqual([{ state: 'active' }]);
  });

  it('a changed password: the old one is refused and the new one accepted', async () => {
    const tenant = await newTenant('chpw');
    const c = await connectAs(tenant, PASSWORD);
    await c.end();
    const NEW = 'new-password-after-change-9';
    await fx.admin.query(`ALTER ROLE "${tenant}" PASSWORD '${NEW}'`);
    await notifyTenant(tenant);
    expect(await eventually(tenant, PASSWORD, '28P01')).toMatchObject({ code: '28P01' });
    const fresh = await connectAs(tenant, NEW);
    try {
      expect((await fresh.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    } finally {
      await fresh.end();
    }
  });

  it('an MD5 secret gets an MD5 challenge; wrong password 28P01, right one passes the proxy and fails on the scram-only backend with a pg_hba hint', async () => {
    const tenant = await newTenant('md5');
    const c = await fx.admin.connect();
    try {
      await c.query("SET password_encryption = 'md5'");
      await c.query(`ALTER ROLE "${tenant}" PASSWORD '${PASSWORD}'`);
      const { rows } = await c.query('SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1', [tenant]);
      expect(rows[0].rolpassword).toMatch(/^md5[0-9a-f]{32}$/);
    } finally {
      c.release();
    }
    await notifyTenant(tenant);
    expect(await authRequests(tenant)).toEqual([5]);
    expect((await attempt(tenant, WRONG)).code).toBe('28P01');
    const before = proxy.server.pool.size;
    const right = await attempt(tenant, PASSWORD);
    expect(right.code).toBe('28000');
    expect(`${right.message} ${right.hint ?? ''}`).toContain('pg_hba');
    // The failed backend login must not leave a slot taken in the pool.
    for (let i = 0; i < 40 && proxy.server.pool.size !== before; i++) await sleep(50);
    expect(proxy.server.pool.size).toBe(before);
    expect(await backendsOf(tenant)).toBe(0);
  });
});

describe('the auth query cannot be redirected', () => {
  let tenant: string;
  const FORGED = 'forged-password-666';

  beforeAll(async () => {
    tenant = await newTenant('trap');
    await fx.admin.query('CREATE SCHEMA trap');
    await fx.admin.query('CREATE TABLE trap.pg_authid (rolname name, rolpassword text, rolvaliduntil timestamptz, rolcanlogin bool)');
    await fx.admin.query('INSERT INTO trap.pg_authid VALUES ($1, $2, NULL, true)', [tenant, scramVerifier(FORGED)]);
  });

  it('a database-wide search_path putting a fake pg_authid first changes nothing for a new proxy', async () => {
    // pg_catalog is named after trap: left out, it would be searched first anyway and the trap would never be armed.
    await fx.admin.query(`ALTER DATABASE "${fx.db.name}" SET search_path = trap, pg_catalog, public`);
    try {
      // The trap is armed: an unqualified read on a new session finds the forged secret.
      const probe = new pg.Client({ connectionString: fx.db.url });
      await probe.connect();
      try {
        const { rows } = await probe.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [tenant]);
        expect(rows).toHaveLength(1);
        expect(rows[0].rolpassword).toMatch(/^SCRAM-SHA-256\$/);
        const real = await probe.query('SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1', [tenant]);
        expect(rows[0].rolpassword).not.toBe(real.rows[0].rolpassword);
      } finally {
        await probe.end();
      }
      const trapped = await fx.startProxy();
      try {
        expect((await attempt(tenant, FORGED, trapped)).code).toBe('28P01');
        const c = await connectAs(tenant, PASSWORD, trapped);
        try {
          expect((await c.query('SELECT current_user AS u, current_schema() AS s')).rows).toEqual([{ u: tenant, s: tenant }]);
        } finally {
          await c.end();
        }
      } finally {
        await trapped.server.close(0);
      }
    } finally {
      await fx.admin.query(`ALTER DATABASE "${fx.db.name}" RESET search_path`);
    }
  });

  it('a client asking for search_path=trap (in options or as a startup parameter) changes nothing about authentication', async () => {
    const viaOptions = { options: '-c search_path=trap' };
    expect((await rejection(connectAs(tenant, FORGED, proxy, viaOptions))).code).toBe('28P01');
    const c = await connectAs(tenant, PASSWORD, proxy, viaOptions);
    try {
      expect((await c.query('SELECT current_schema() AS s')).rows).toEqual([{ s: tenant }]);
    } finally {
      await c.end();
    }
    const js = (password: string) =>
      postgres(proxy.url(tenant, password), { max: 1, ssl: false, connect_timeout: 5, connection: { search_path: 'trap' }, onnotice: () => undefined });
    const forged = js(FORGED);
    try {
      await expect(forged`SELECT 1`).rejects.toMatchObject({ code: '28P01' });
    } finally {
      await forged.end({ timeout: 5 });
    }
    const sql = js(PASSWORD);
    try {
      expect([...(await sql`SELECT current_user AS u, current_schema() AS s`)]).toEqual([{ u: tenant, s: tenant }]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it('a tenant session can neither call pgtenant.role_secret nor read pg_authid', async () => {
    const c = await connectAs(tenant, PASSWORD);
    try {
      await expect(c.query('SELECT * FROM pgtenant.role_secret($1)', [tenant])).rejects.toMatchObject({ code: '42501' });
      await expect(c.query('SELECT rolpassword FROM pg_catalog.pg_authid')).rejects.toMatchObject({ code: '42501' });
      // The session carries on after the refusals.
      expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await c.end();
    }
  });
});

describe('--auth relay', () => {
  it('still logs in, and each client\'s backend is closed when it ends', async () => {
    const tenant = await newTenant('relay');
    const relay = await fx.startProxy({ auth: 'relay' });
    try {
      expect((await attempt(tenant, WRONG, relay)).code).toBe('28P01');
      const c = await connectAs(tenant, PASSWORD, relay);
      const pid = await pidOf(c);
      expect((await c.query('SELECT current_user AS u, current_schema() AS s')).rows).toEqual([{ u: tenant, s: tenant }]);
      await c.end();
      expect(await backendGone(pid)).toBe(true);
      const next = await connectAs(tenant, PASSWORD, relay);
      try {
        expect(await pidOf(next)).not.toBe(pid);
      } finally {
        await next.end();
      }
    } finally {
      await relay.server.close(0);
    }
  });
});

describe('a missing auth function', () => {
  /** A proxy on the database whose warnings and errors are kept, to read what it told the operator. */
  function starter(url: string) {
    const lines: string[] = [];
    const log = createLogger('warn', { write: (line: string) => void lines.push(line) });
    const start = (auth: 'proxy' | 'relay') =>
      startProxy({
        config: resolveConfig({ flags: { upstream: url, listen: '127.0.0.1:0', adminListen: 'off', isolation: 'role', auth }, env: {} }),
        log,
      });
    return { lines, start };
  }

  let db: Awaited<ReturnType<typeof initializedDatabase>>;
  let tenant: string;

  beforeAll(async () => {
    db = await initializedDatabase();
    tenant = uniqueTenantId('nofn');
    await new TenantService(db.admin, { isolation: 'role', migrationsDir: null }).create(tenant, { password: PASSWORD });
    await db.admin.query('DROP FUNCTION pgtenant.role_secret(text)');
  });

  afterAll(async () => {
    await db?.admin.end();
    await db?.db.drop();
  });

  it('the proxy starts but says to run pgtenant init, and logins get 57P03 (relay mode does not need the function)', async () => {
    const { lines, start } = starter(db.db.url);
    const server = await start('proxy');
    try {
      expect(lines.join('\n')).toContain('pgtenant init');
      const err = await rejection(
        connectPg({ host: '127.0.0.1', port: server.address.port, user: tenant, password: PASSWORD, database: db.db.name, connectionTimeoutMillis: 5000 }),
      );
      expect(err.code).toBe('57P03');
    } finally {
      await server.close(0);
    }
    const relay = await start('relay');
    try {
      const c = await connectPg({ host: '127.0.0.1', port: relay.address.port, user: tenant, password: PASSWORD, database: db.db.name, connectionTimeoutMillis: 5000 });
      expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
      await c.end();
    } finally {
      await relay.close(0);
    }
  });

  it('running pgtenant init, as the message says, puts the function back and logins work again', async () => {
    const { start } = starter(db.db.url);
    const server = await start('proxy');
    try {
      const c = await db.admin.connect();
      try {
        await installControlSchema(c); // what `pgtenant init` runs
      } finally {
        c.release();
      }
      const { rows } = await db.admin.query("SELECT pg_catalog.to_regprocedure('pgtenant.role_secret(text)') IS NOT NULL AS present");
      expect(rows).toEqual([{ present: true }]);
      const client = await connectPg({ host: '127.0.0.1', port: server.address.port, user: tenant, password: PASSWORD, database: db.db.name, connectionTimeoutMillis: 5000 });
      expect((await client.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
      await client.end();
    } finally {
      await server.close(0);
    }
  });
});
