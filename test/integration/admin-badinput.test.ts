// Admin API bad input over real HTTP: each refusal is a JSON error with a code and a fitting status, and leaves the database untouched.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminFixture, type AdminFixture, type HttpReply } from '../support/admin.js';
import { uniqueTenantId } from '../support/db.js';
import { connectPg } from '../support/proxy.js';

// Roles are cluster-wide and other files run in parallel: only roles under this prefix (or named by a request) are ours to watch.
const PREFIX = 'adbad';
const PASSWORD = 'existing-pass-123';
let fx: AdminFixture;
let existing: string;
let existingCreatedAt: string;

beforeAll(async () => {
  fx = await adminFixture();
  existing = uniqueTenantId(PREFIX);
  const created = await fx.request('POST', '/v1/tenants', { id: existing, password: PASSWORD });
  expect(created.status).toBe(201);
  existingCreatedAt = created.json.tenant.createdAt;
});

afterAll(async () => {
  await fx?.close();
});

interface Snapshot {
  tenants: unknown[];
  journal: unknown[];
  schemas: string[];
  roles: unknown[];
}

async function snapshot(extraRoles: readonly string[]): Promise<Snapshot> {
  const [tenants, journal, schemas, roles] = await Promise.all([
    fx.admin.query('SELECT * FROM pgtenant.tenants ORDER BY id'),
    fx.admin.query('SELECT * FROM pgtenant.migrations ORDER BY 1, 2'),
    fx.admin.query<{ nspname: string }>(
      `SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1`,
    ),
    // rolpassword shows a changed password too (a duplicate create must not reset it).
    fx.admin.query(
      `SELECT rolname, rolcanlogin, rolpassword, rolvaliduntil FROM pg_catalog.pg_authid
        WHERE rolname ILIKE $1 OR rolname = ANY($2) ORDER BY 1`,
      [`${PREFIX}%`, [...extraRoles]],
    ),
  ]);
  return { tenants: tenants.rows, journal: journal.rows, schemas: schemas.rows.map((r) => r.nspname), roles: roles.rows };
}

/** Sends a bad request and proves the database is exactly as before it. */
async function unchanged(send: () => Promise<HttpReply>, extraRoles: readonly string[] = []): Promise<HttpReply> {
  const before = await snapshot(extraRoles);
  const reply = await send();
  expect(await snapshot(extraRoles)).toEqual(before);
  return reply;
}

/** The one error shape: JSON, {"error":{"code","message"[,"field"]}} and nothing else. */
function expectError(reply: HttpReply, status: number, code: string, field?: string): { code: string; message: string; field?: string } {
  expect({ status: reply.status, body: reply.json }, reply.text).toMatchObject({ status, body: { error: { code } } });
  expect(reply.headers.get('content-type')).toMatch(/^application\/json\b/);
  expect(Object.keys(reply.json)).toEqual(['error']);
  const err = reply.json.error;
  expect(Object.keys(err).every((k) => ['code', 'message', 'field'].includes(k)), JSON.stringify(err)).toBe(true);
  expect(typeof err.message).toBe('string');
  expect(err.message.length).toBeGreaterThan(0);
  if ('field' in err) expect(typeof err.field).toBe('string');
  if (field !== undefined) expect(err.field).toBe(field);
  return err;
}

const post = (body: unknown, headers?: Record<string, string>) => fx.request('POST', '/v1/tenants', body, headers);

describe('tenant ids', () => {
  const invalid: [string, unknown][] = [
    ['uppercase', 'Adbad_x'],
    ['starting with a digit', '1adbad'],
    ['64 characters', 'adbad_' + 'x'.repeat(58)],
    ["containing '-'", 'adbad-x'],
    ['the empty string', ''],
    ['a number', 42],
    ['an object', { id: 'adbad_obj' }],
    // Type coercion must not turn a JSON array into the string it holds.
    ['an array holding a valid id', [uniqueTenantId(PREFIX)]],
  ];
  it.each(invalid)('refuses an id that is %s: 400 invalid_tenant_id on field id', async (_label, id) => {
    const reply = await unchanged(() => post({ id, password: 'long-enough-1' }), [id].flat().filter((x): x is string => typeof x === 'string'));
    expectError(reply, 400, 'invalid_tenant_id', 'id');
  });

  it.each(['public', 'pgtenant', 'pg_foo', 'postgres'])('refuses the reserved name %s: 400 invalid_tenant_id', async (id) => {
    const reply = await unchanged(() => post({ id, password: 'long-enough-1' }), [id]);
    expectError(reply, 400, 'invalid_tenant_id');
  });

  it('refuses a missing id with 400 naming the field', async () => {
    const reply = await unchanged(() => post({ password: 'long-enough-1' }));
    // Either code fits a missing id; what matters is the status and the field.
    const err = expectError(reply, 400, reply.json?.error?.code, 'id');
    expect(['invalid_request', 'invalid_tenant_id']).toContain(err.code);
  });
});

describe('passwords', () => {
  const bad: [string, unknown][] = [
    ['too short', 'short'],
    ['non-ASCII', 'pässwörd-lang'],
    // A JSON number or array is not a password, even where its string form would pass.
    ['a number', 12345678],
    ['an array', ['long-enough-1']],
    ['null', null],
  ];
  it.each(bad)('refuses a password that is %s: 400 invalid_password', async (_label, password) => {
    const id = uniqueTenantId(PREFIX);
    const reply = await unchanged(() => post({ id, password }), [id]);
    expectError(reply, 400, 'invalid_password');
    expect((await fx.request('GET', `/v1/tenants/${id}`)).status).toBe(404);
  });
});

describe('existing and unknown tenants', () => {
  it('answers a duplicate id with 409 tenant_exists and leaves the tenant as it was', async () => {
    const reply = await unchanged(() => post({ id: existing, password: 'another-pass-456' }));
    expectError(reply, 409, 'tenant_exists');
    const got = await fx.request('GET', `/v1/tenants/${existing}`);
    expect(got.status).toBe(200);
    expect(got.json.createdAt).toBe(existingCreatedAt);
    const c = await connectPg({ connectionString: fx.proxyUrl(existing, PASSWORD) });
    try {
      expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe(existing);
    } finally {
      await c.end();
    }
    await expect(connectPg({ connectionString: fx.proxyUrl(existing, 'another-pass-456') })).rejects.toMatchObject({ code: '28P01' });
  });

  const unknown = uniqueTenantId(PREFIX);
  const calls: [string, string, string, unknown][] = [
    ['GET', 'GET', `/v1/tenants/${unknown}`, undefined],
    ['PATCH', 'PATCH', `/v1/tenants/${unknown}`, { state: 'suspended' }],
    ['DELETE with confirm', 'DELETE', `/v1/tenants/${unknown}?confirm=${unknown}`, undefined],
    ['disconnect', 'POST', `/v1/tenants/${unknown}/disconnect`, undefined],
  ];
  it.each(calls)('answers %s of an unknown tenant with 404 tenant_not_found', async (_label, method, path, body) => {
    const reply = await unchanged(() => fx.request(method, path, body), [unknown]);
    expectError(reply, 404, 'tenant_not_found');
  });

  const badPaths: [string, string, unknown][] = [
    ['GET', '/v1/tenants/Bad-Id', undefined],
    ['PATCH', '/v1/tenants/Bad-Id', { state: 'suspended' }],
    ['DELETE', '/v1/tenants/Bad-Id?confirm=Bad-Id', undefined],
    ['POST', '/v1/tenants/Bad-Id/disconnect', undefined],
  ];
  it.each(badPaths)('answers %s %s (invalid id in the path) with 400', async (method, path, body) => {
    const reply = await unchanged(() => fx.request(method, path, body), ['Bad-Id']);
    expectError(reply, 400, 'invalid_tenant_id', 'id');
  });
});

describe('request bodies', () => {
  it.each([
    ['malformed JSON', '{"id":'],
    ['an empty body', ''],
  ])('answers %s with 400 invalid_json', async (_label, raw) => {
    const reply = await unchanged(() => post(raw, { 'content-type': 'application/json' }));
    expectError(reply, 400, 'invalid_json');
  });

  it.each(['text/plain', 'application/x-www-form-urlencoded'])('answers content type %s with 415 unsupported_media_type', async (type) => {
    const id = uniqueTenantId(PREFIX);
    const raw = type === 'text/plain' ? JSON.stringify({ id }) : `id=${id}`;
    const reply = await unchanged(() => post(raw, { 'content-type': type }), [id]);
    expectError(reply, 415, 'unsupported_media_type');
  });

  it('answers a body over 64 KiB with 413 body_too_large', async () => {
    const id = uniqueTenantId(PREFIX);
    const reply = await unchanged(() => post({ id, password: 'p'.repeat(100 * 1024) }), [id]);
    expectError(reply, 413, 'body_too_large');
  });

  it('rejects an unknown field with 400 invalid_request naming it', async () => {
    const id = uniqueTenantId(PREFIX);
    const reply = await unchanged(() => post({ id, password: 'long-enough-1', superuser: true }), [id]);
    const err = expectError(reply, 400, 'invalid_request');
    expect(`${err.field ?? ''} ${err.message}`).toContain('superuser');
  });

  it('rejects PATCH to the state "deleted" with 400 on field state', async () => {
    const reply = await unchanged(() => fx.request('PATCH', `/v1/tenants/${existing}`, { state: 'deleted' }));
    expectError(reply, 400, 'invalid_request', 'state');
  });

  it.each([
    [{ poolSize: 0 }, 'poolSize', 'invalid_pool_size'],
    [{ poolSize: 10_001 }, 'poolSize', 'invalid_pool_size'],
    [{ poolSize: '5' }, 'poolSize', 'invalid_pool_size'],
    [{ poolSize: 2.5 }, 'poolSize', 'invalid_pool_size'],
    [{ maxClients: -1 }, 'maxClients', 'invalid_max_clients'],
    [{ maxClients: 1_000_001 }, 'maxClients', 'invalid_max_clients'],
    [{ maxClients: '5' }, 'maxClients', 'invalid_max_clients'],
    [{ maxClients: 2.5 }, 'maxClients', 'invalid_max_clients'],
  ])('rejects PATCH %j with 400 on its field %s (%s)', async (body, field, code) => {
    const reply = await unchanged(() => fx.request('PATCH', `/v1/tenants/${existing}`, body));
    expectError(reply, 400, code, field);
  });

  it('rejects an empty PATCH with 400 invalid_request', async () => {
    const reply = await unchanged(() => fx.request('PATCH', `/v1/tenants/${existing}`, {}));
    expectError(reply, 400, 'invalid_request');
  });

  it('rejects a JSON array as the body with 400', async () => {
    const id = uniqueTenantId(PREFIX);
    const reply = await unchanged(() => post([{ id, password: 'long-enough-1' }]), [id]);
    expectError(reply, 400, 'invalid_request');
  });
});

describe('query strings', () => {
  it.each(['limit=0', 'limit=5000', 'limit=abc', 'limit=1.5'])('refuses GET /v1/tenants?%s with 400 on field limit', async (q) => {
    const reply = await unchanged(() => fx.request('GET', `/v1/tenants?${q}`));
    expectError(reply, 400, 'invalid_request', 'limit');
  });

  it('refuses an unknown query parameter with 400 naming it', async () => {
    const reply = await unchanged(() => fx.request('GET', '/v1/tenants?order=desc'));
    const err = expectError(reply, 400, 'invalid_request');
    expect(`${err.field ?? ''} ${err.message}`).toContain('order');
  });

  it('refuses an unknown query parameter on DELETE and keeps the tenant', async () => {
    const reply = await unchanged(() => fx.request('DELETE', `/v1/tenants/${existing}?confirm=${existing}&force=true`));
    expectError(reply, 400, 'invalid_request');
    expect((await fx.request('GET', `/v1/tenants/${existing}`)).status).toBe(200);
  });
});

describe('authentication', () => {
  // Functions of the token, which is only known once the fixture is up; '' sends no Authorization header.
  const schemes: [string, (token: string) => string][] = [
    ['no token', () => ''],
    ['a wrong token of the same length', (t) => 'Bearer ' + 'f'.repeat(t.length)],
    ['a token of a different length', () => 'Bearer abc'],
    ['the right token with the Basic scheme', (t) => `Basic ${Buffer.from(`admin:${t}`).toString('base64')}`],
    ['"Bearer" with nothing after', () => 'Bearer '],
    ['the right token plus a suffix', (t) => `Bearer ${t}x`],
  ];
  it.each(schemes)('answers %s with 401 unauthorized and WWW-Authenticate: Bearer', async (_label, header) => {
    const reply = await unchanged(() => fx.request('GET', '/v1/tenants', undefined, { authorization: header(fx.token) }));
    expectError(reply, 401, 'unauthorized');
    expect(reply.headers.get('www-authenticate')).toBe('Bearer');
  });

  it('refuses a valid create without a token and creates nothing', async () => {
    const id = uniqueTenantId(PREFIX);
    const reply = await unchanged(() => post({ id, password: 'long-enough-1' }, { authorization: '' }), [id]);
    expectError(reply, 401, 'unauthorized');
    expect(reply.headers.get('www-authenticate')).toBe('Bearer');
    expect((await fx.request('GET', `/v1/tenants/${id}`)).status).toBe(404);
  });

  it('gives the same 401 whether or not the route exists, so nothing is revealed', async () => {
    const replies = await Promise.all(
      ['/v1/nope', '/v1/tenants', `/v1/tenants/${existing}`, '/openapi.json', '/metrics'].map((p) =>
        fx.request('GET', p, undefined, { authorization: '' }),
      ),
    );
    for (const r of replies) {
      expectError(r, 401, 'unauthorized');
      expect(r.headers.get('www-authenticate')).toBe('Bearer');
    }
    expect(new Set(replies.map((r) => r.text)).size).toBe(1);
  });
});

describe('routes and migrations', () => {
  it('answers an unknown route with a token with 404 not_found', async () => {
    for (const [method, path] of [['GET', '/v1/nope'], ['DELETE', '/v1/tenants'], ['PUT', `/v1/tenants/${existing}`]] as const) {
      const reply = await unchanged(() => fx.request(method, path));
      expectError(reply, 404, 'not_found');
    }
  });

  it('refuses a migration job naming an unknown tenant with 404 tenant_not_found', async () => {
    const unknown = uniqueTenantId(PREFIX);
    const reply = await unchanged(() => fx.request('POST', '/v1/migrations', { tenants: [existing, unknown] }), [unknown]);
    expectError(reply, 404, 'tenant_not_found');
  });

  it.each([0, 65, 'many'])('refuses a migration job with concurrency %s with 400', async (concurrency) => {
    const reply = await unchanged(() => fx.request('POST', '/v1/migrations', { concurrency }));
    expectError(reply, 400, 'invalid_request', 'concurrency');
  });
});

describe('after all of that', () => {
  it('still serves: a valid create succeeds and its tenant can log in', async () => {
    const id = uniqueTenantId(PREFIX);
    const reply = await post({ id, password: 'long-enough-1' });
    expect(reply.status, reply.text).toBe(201);
    expect(reply.json.tenant).toMatchObject({ id, schema: id, role: id, state: 'active' });
    const c: pg.Client = await connectPg({ connectionString: fx.proxyUrl(id, 'long-enough-1') });
    await c.end();
  });
});
