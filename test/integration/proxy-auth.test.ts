// Authentication through the proxy: SCRAM and MD5 relayed to Postgres, uniform refusals, suspended and dropped tenants.
import { constants } from 'node:fs';
import { access, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { uniqueTenantId } from '../support/db.js';
import {
  connectPg,
  errorFields,
  parseMessages,
  proxyFixture,
  rawExchange,
  rejection,
  sessionEnd,
  sleep,
  startupMessage,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'right-password-123';
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

const connectAs = (user: string, password: string, extra: Partial<pg.ClientConfig> = {}) =>
  connectPg({ ...proxy.clientConfig(user, password), ...extra });

/** The refusal with the tenant's name blanked out, so two refusals can be compared for their shape. */
const shape = (err: { code?: string; severity?: string; message: string }, user: string) => ({
  code: err.code,
  severity: err.severity,
  message: err.message.replaceAll(user, '<user>'),
});

/** The authentication request codes (R messages) the proxy sends for a startup, until it waits for our answer. */
async function authRequests(user: string): Promise<number[]> {
  const reply = await rawExchange(proxy.port, [startupMessage({ user, database: fx.db.name })], {
    waitMs: 2000,
    until: (d) => parseMessages(d).messages.some((m) => m.type === 'R' || m.type === 'E'),
  });
  return parseMessages(reply.data).messages.filter((m) => m.type === 'R').map((m) => m.body.readInt32BE(0));
}

describe('passwords (SCRAM-SHA-256, the default)', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('auth');
  });

  it('stores a SCRAM verifier and lets pg and postgres.js in with the right password', async () => {
    const { rows } = await fx.admin.query('SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1', [tenant]);
    expect(rows[0].rolpassword).toMatch(/^SCRAM-SHA-256\$/);
    expect(await authRequests(tenant)).toEqual([10]);
    const c = await connectAs(tenant, PASSWORD);
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    await c.end();
    const sql = postgres(proxy.url(tenant, PASSWORD), { max: 1, ssl: false, connect_timeout: 5 });
    expect([...(await sql`SELECT current_user AS u`)]).toEqual([{ u: tenant }]);
    await sql.end({ timeout: 5 });
  });

  it('refuses a wrong password with 28P01', async () => {
    const err = await rejection(connectAs(tenant, 'wrong-password-000'));
    expect(err.code).toBe('28P01');
    expect(err.message).toBe(`password authentication failed for user "${tenant}"`);
  });

  it('refuses an unknown tenant exactly like a wrong password', async () => {
    const wrong = await rejection(connectAs(tenant, 'wrong-password-000'));
    for (const unknown of [uniqueTenantId('nosuch'), 'Not-A-Valid-Id', 'pg_signal_backend', 'x'.repeat(70)]) {
      const err = await rejection(connectAs(unknown, 'wrong-password-000'));
      expect(shape(err, unknown)).toEqual(shape(wrong, tenant));
      // The challenge looks the same too: SASL first, for known and unknown names alike.
      expect(await authRequests(unknown)).toEqual(await authRequests(tenant));
    }
  });

  it('roles that are not tenants cannot log in, even with their right password', async () => {
    // The management identity (here the superuser) never gets a client session in role isolation.
    const su = await rejection(connectAs(fx.superuser.user, fx.superuser.password));
    expect(su.code).toBe('28P01');
    const plain = uniqueTenantId('plainrole');
    await fx.admin.query(`CREATE ROLE "${plain}" LOGIN PASSWORD '${PASSWORD}'`);
    try {
      const err = await rejection(connectAs(plain, PASSWORD));
      expect(shape(err, plain)).toEqual(shape(await rejection(connectAs(tenant, 'wrong-password-000')), tenant));
    } finally {
      await fx.admin.query(`DROP ROLE "${plain}"`);
    }
  });

  it('keeps serving after many refusals', async () => {
    await Promise.all(Array.from({ length: 10 }, (_, i) => rejection(connectAs(i % 2 ? tenant : 'nobody_here', 'bad-password-1'))));
    const c = await connectAs(tenant, PASSWORD);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
  });
});

describe('suspended and dropped tenants', () => {
  it('suspend leaves open sessions running; a suspended tenant gets 57P03 with the right password, 28P01 with a wrong one; resume lets it in', async () => {
    const tenant = await newTenant('susp');
    const open = await connectAs(tenant, PASSWORD);
    await fx.tenants.suspend(tenant);
    await sleep(300); // long enough for the proxy to hear the NOTIFY
    expect((await open.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    await open.end();

    const refused = await rejection(connectAs(tenant, PASSWORD));
    expect(refused.code).toBe('57P03');
    expect(refused.message).toContain('suspended');
    expect((await rejection(connectAs(tenant, 'wrong-password-000'))).code).toBe('28P01');

    await fx.tenants.resume(tenant);
    const again = await connectAs(tenant, PASSWORD);
    expect((await again.query('SELECT current_schema() AS s')).rows).toEqual([{ s: tenant }]);
    await again.end();
  });

  it('suspend with disconnect ends open sessions with 57P01', async () => {
    const tenant = await newTenant('suspd');
    const open = await connectAs(tenant, PASSWORD);
    const ended = sessionEnd(open, 3000);
    await fx.tenants.suspend(tenant, { disconnect: true });
    const { error } = await ended;
    expect(error?.code).toBe('57P01');
    expect((await rejection(connectAs(tenant, PASSWORD))).code).toBe('57P03');
  });

  it('drop ends open sessions within a couple of seconds and the tenant is then unknown', async () => {
    const tenant = await newTenant('drop');
    const open = await connectAs(tenant, PASSWORD);
    const ended = sessionEnd(open, 3000);
    await fx.tenants.drop(tenant);
    const { error } = await ended;
    if (error) expect(error.code).toMatch(/^57P01$|^08006$/);
    // Proxies hear of the drop by NOTIFY, a moment after its commit: until then a login may still reach the server
    // and be refused there (28000, the role is gone); it never gets in, and soon the tenant is unknown.
    let code: string | undefined;
    for (const deadline = Date.now() + 2000; ; await sleep(50)) {
      code = (await rejection(connectAs(tenant, PASSWORD))).code;
      if (code === '28P01' || Date.now() > deadline) break;
      expect(code).toBe('28000');
    }
    expect(code).toBe('28P01');
  });

  /**
   * Connects with a password callback, which pg calls when the challenge arrives, and holds the answer back
   * until `meanwhile` (a suspend) has run and the proxies have had time to hear its NOTIFY.
   */
  async function connectAcross(t: string, password: string, meanwhile: () => Promise<unknown>) {
    return rejection(
      connectAs(t, password, {
        password: async () => {
          await meanwhile();
          await new Promise((r) => setTimeout(r, 500));
          return password;
        },
      }),
    );
  }

  it('a tenant suspended while a client is still authenticating: right password gets 57P03', async () => {
    const tenant = await newTenant('suspra');
    const err = await connectAcross(tenant, PASSWORD, () => fx.tenants.suspend(tenant));
    expect({ code: err.code, message: err.message }).toMatchObject({ code: '57P03' });
  });

  it('a tenant suspended while a client is still authenticating: wrong password gets the usual 28P01, nothing about the tenant', async () => {
    const tenant = await newTenant('susprw');
    const wrong = await rejection(connectAs(tenant, 'wrong-password-000'));
    const err = await connectAcross(tenant, 'wrong-password-000', () => fx.tenants.suspend(tenant));
    expect(shape(err, tenant)).toEqual(shape(wrong, tenant));
  });

  it('disconnectTenant ends exactly that tenant\'s sessions with 57P01', async () => {
    const [a, b] = [await newTenant('disc'), await newTenant('keep')];
    const ca = await connectAs(a, PASSWORD);
    const cb = await connectAs(b, PASSWORD);
    const ended = sessionEnd(ca, 3000);
    expect(proxy.server.disconnectTenant(a, 'test')).toBe(1);
    const { error } = await ended;
    expect(error?.code).toBe('57P01');
    expect((await cb.query('SELECT current_user AS u')).rows).toEqual([{ u: b }]);
    await cb.end();
  });
});

/**
 * The server asks for MD5 only when pg_hba says md5 and the stored password is MD5, and the harness's server
 * uses scram-sha-256. Only that throwaway server (data in a pgtenant-test-* temp folder) gets an md5 line
 * for one test role; a server given through PGTENANT_TEST_DATABASE_URL is left alone.
 */
async function harnessHbaFile(adminUrl: string): Promise<string | null> {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    const { rows } = await c.query<{ hba: string }>("SELECT pg_catalog.current_setting('hba_file') AS hba");
    const hba = rows[0]!.hba;
    if (!/\/pgtenant-test-[^/]+\//.test(hba)) return null;
    await access(hba, constants.R_OK | constants.W_OK);
    return hba;
  } catch {
    return null;
  } finally {
    await c.end();
  }
}

const hbaFile = await harnessHbaFile(inject('pgAdminUrl'));

/** The first authentication request code the server itself sends for a startup. */
async function directAuthRequest(user: string): Promise<number> {
  const u = new URL(fx.db.url);
  const reply = await new Promise<Buffer>((resolve, reject) => {
    const s = net.connect({ host: u.hostname, port: Number(u.port) }, () => s.write(startupMessage({ user, database: fx.db.name })));
    s.once('data', (d: Buffer) => {
      s.destroy();
      resolve(d);
    });
    s.once('error', reject);
  });
  return reply[0] === 0x52 ? reply.readInt32BE(5) : -1;
}

const md5Title = hbaFile
  ? 'passwords stored as MD5'
  : 'passwords stored as MD5 (skipped: the test server is not the harness\'s embedded one, so its pg_hba.conf stays as it is)';

describe.runIf(hbaFile)(md5Title, () => {
  let tenant: string;
  let original = '';

  beforeAll(async () => {
    const hba = hbaFile!;
    tenant = await newTenant('md5');
    const c = await fx.admin.connect();
    try {
      await c.query("SET password_encryption = 'md5'");
      await c.query(`ALTER ROLE "${tenant}" PASSWORD '${PASSWORD}'`);
    } finally {
      c.release();
    }
    original = await readFile(hba, 'utf8');
    await writeFile(hba, `host all ${tenant} 127.0.0.1/32 md5\nhost all ${tenant} ::1/128 md5\n${original}`);
    await fx.admin.query('SELECT pg_catalog.pg_reload_conf()');
    // The postmaster rereads pg_hba.conf asynchronously after the signal.
    for (let i = 0; i < 50 && (await directAuthRequest(tenant)) !== 5; i++) await new Promise((r) => setTimeout(r, 100));
  });

  afterAll(async () => {
    if (!original) return;
    await writeFile(hbaFile!, original);
    await fx.admin.query('SELECT pg_catalog.pg_reload_conf()');
  });

  it('relays the MD5 challenge: right password in, wrong password 28P01', async () => {
    expect(await directAuthRequest(tenant)).toBe(5);
    expect(await authRequests(tenant)).toEqual([5]);
    const c = await connectAs(tenant, PASSWORD);
    expect((await c.query('SELECT current_user AS u, current_schema() AS s')).rows).toEqual([{ u: tenant, s: tenant }]);
    await c.end();
    const sql = postgres(proxy.url(tenant, PASSWORD), { max: 1, ssl: false, connect_timeout: 5 });
    expect([...(await sql`SELECT current_user AS u`)]).toEqual([{ u: tenant }]);
    await sql.end({ timeout: 5 });
    expect((await rejection(connectAs(tenant, 'wrong-password-000'))).code).toBe('28P01');
  });
});

describe('ErrorResponse bytes', () => {
  it('a refusal is one FATAL ErrorResponse with S, V, C and M fields, then the connection closes', async () => {
    const reply = await rawExchange(proxy.port, [startupMessage({ user: 'x', database: fx.db.name, replication: 'true' })]);
    const { messages, rest } = parseMessages(reply.data);
    expect(rest.length).toBe(0);
    expect(messages.map((m) => m.type)).toEqual(['E']);
    const f = errorFields(messages[0]!.body);
    expect(f).toMatchObject({ S: 'FATAL', V: 'FATAL', C: '0A000' });
    expect(f.M).toMatch(/replication/);
    expect(reply.closed).toBe(true);
  });
});
