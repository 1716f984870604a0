// toAdminError/errorBody: every failure the admin API can meet becomes the documented status, code and field.
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdminContext } from '../../src/admin/context.js';
import { AdminError, badRequest, conflict, errorBody, notFound, toAdminError, unauthorized, unavailable } from '../../src/admin/errors.js';
import { Metrics } from '../../src/admin/metrics.js';
import { buildAdminApp } from '../../src/admin/server.js';
import { silentLogger } from '../../src/logger.js';
import { TenantError, type TenantErrorCode } from '../../src/tenants/errors.js';

const map = (err: unknown) => {
  const { error, internal } = toAdminError(err);
  return { status: error.status, code: error.code, message: error.message, field: error.field, internal, body: errorBody(error) };
};

describe('AdminError', () => {
  it('passes through unchanged, and its helpers carry their statuses', () => {
    const cases: [AdminError, number, string][] = [
      [notFound('no route'), 404, 'not_found'],
      [unauthorized(), 401, 'unauthorized'],
      [conflict('migration_running', 'busy'), 409, 'migration_running'],
      [badRequest('confirmation_required', 'say so', 'confirm'), 400, 'confirmation_required'],
      [unavailable('shutting_down', 'bye'), 503, 'shutting_down'],
    ];
    for (const [err, status, code] of cases) {
      const { error, internal } = toAdminError(err);
      expect(error).toBe(err);
      expect(internal).toBe(false);
      expect([error.status, error.code]).toEqual([status, code]);
    }
  });

  it('serialises to {"error":{code,message[,field]}} and leaves field out when there is none', () => {
    expect(errorBody(badRequest('invalid_request', 'limit must be >= 1', 'limit'))).toEqual({
      error: { code: 'invalid_request', message: 'limit must be >= 1', field: 'limit' },
    });
    const body = errorBody(notFound('no route GET /x'));
    expect(body).toEqual({ error: { code: 'not_found', message: 'no route GET /x' } });
    expect('field' in body.error).toBe(false);
    expect(JSON.parse(JSON.stringify(body))).toEqual(body);
  });
});

describe('TenantError', () => {
  const STATUS: Record<TenantErrorCode, number> = {
    invalid_tenant_id: 400,
    invalid_password: 400,
    invalid_pool_size: 400,
    invalid_max_clients: 400,
    tenant_exists: 409,
    tenant_not_found: 404,
    not_initialized: 503,
    insufficient_privilege: 500,
    migration_failed: 500,
    checksum_mismatch: 409,
    invalid_migration: 409,
  };

  // The service's own checks name the same field a schema failure would.
  const FIELD: Partial<Record<TenantErrorCode, string>> = { invalid_tenant_id: 'id', invalid_password: 'password', invalid_pool_size: 'poolSize', invalid_max_clients: 'maxClients' };

  it.each(Object.entries(STATUS) as [TenantErrorCode, number][])('%s -> %i with the same code and message', (code, status) => {
    const r = map(new TenantError(code, `tenant says ${code}`));
    expect(r).toMatchObject({ status, code, message: `tenant says ${code}` });
    // A 500 is a fault in the deployment or the code, worth a log line; the others are the caller's doing.
    expect(r.internal).toBe(status === 500);
    expect(r.body).toEqual({ error: { code, message: `tenant says ${code}`, ...(FIELD[code] ? { field: FIELD[code] } : {}) } });
  });
});

describe('fastify request errors, as objects', () => {
  const fst = (code: string, statusCode: number, message: string) => Object.assign(new Error(message), { code, statusCode });

  it.each([
    ['FST_ERR_CTP_INVALID_JSON_BODY', 400, 400, 'invalid_json'],
    ['FST_ERR_CTP_EMPTY_JSON_BODY', 400, 400, 'invalid_json'],
    ['FST_ERR_CTP_INVALID_MEDIA_TYPE', 415, 415, 'unsupported_media_type'],
    ['FST_ERR_CTP_INVALID_CONTENT_LENGTH', 400, 400, 'invalid_request'],
    ['FST_ERR_CTP_BODY_TOO_LARGE', 413, 413, 'body_too_large'],
  ])('%s -> %i %s', (code, statusCode, status, expected) => {
    expect(map(fst(code, statusCode, 'fastify says no'))).toMatchObject({ status, code: expected, message: 'fastify says no', internal: false });
  });

  it('maps another 4xx fastify error to invalid_request with its status', () => {
    expect(map(fst('FST_ERR_CTP_INVALID_TYPE', 400, 'bad content type'))).toMatchObject({ status: 400, code: 'invalid_request', internal: false });
  });

  const validation = (instancePath: string, params: Record<string, unknown>, validationContext = 'body') =>
    Object.assign(new Error(`${validationContext}${instancePath} is wrong`), {
      statusCode: 400,
      code: 'FST_ERR_VALIDATION',
      validationContext,
      validation: [{ instancePath, schemaPath: '#/x', keyword: 'x', params, message: 'is wrong' }],
    });

  it('gives the id field the tenant id code and the password field the password code', () => {
    expect(map(validation('/id', { pattern: '^[a-z_][a-z0-9_]{0,62}$' }))).toMatchObject({ status: 400, code: 'invalid_tenant_id', field: 'id' });
    expect(map(validation('/id', { type: 'string' }, 'params'))).toMatchObject({ status: 400, code: 'invalid_tenant_id', field: 'id' });
    expect(map(validation('/password', { limit: 8 }))).toMatchObject({ status: 400, code: 'invalid_password', field: 'password' });
  });

  it('names a missing property as the field', () => {
    expect(map(validation('', { missingProperty: 'id' }))).toMatchObject({ status: 400, code: 'invalid_tenant_id', field: 'id' });
    expect(map(validation('', { missingProperty: 'state' }))).toMatchObject({ status: 400, code: 'invalid_request', field: 'state' });
    // ajv reports a missing property on its parent object.
    expect(map(validation('/options', { missingProperty: 'mode' }))).toMatchObject({ code: 'invalid_request', field: 'options.mode' });
  });

  it('names an unknown property as the field, and in the message', () => {
    const r = map(Object.assign(validation('', { additionalProperty: 'colour' }), { message: 'body must NOT have additional properties' }));
    expect(r).toMatchObject({ status: 400, code: 'invalid_request', field: 'colour', internal: false });
    expect(r.message).toContain('colour');
  });

  it('names nested fields with dots and keeps the code of their top-level field', () => {
    expect(map(validation('/tenants/2', { type: 'string' }))).toMatchObject({ code: 'invalid_request', field: 'tenants.2' });
    expect(map(validation('/id/0', { type: 'string' }))).toMatchObject({ code: 'invalid_tenant_id', field: 'id.0' });
  });

  it('falls back to the validation context when no field is known', () => {
    const r = map(validation('', { type: 'object' }));
    expect(r).toMatchObject({ status: 400, code: 'invalid_request', field: 'body', internal: false });
    expect(r.body.error.field).toBe('body');
  });

  it('keeps fastify\'s message for validation errors', () => {
    expect(map(validation('/limit', { limit: 1 }, 'querystring'))).toMatchObject({ code: 'invalid_request', field: 'limit', message: 'querystring/limit is wrong' });
  });
});

describe('fastify request errors, as the admin app raises them', () => {
  // The real admin app (buildAdminApp, its parsers, body limit and validators) through inject, no socket. These
  // requests all fail before a handler runs, so the context needs only what the hooks touch: the metrics.
  const TOKEN = 'unit-test-token';
  let app: FastifyInstance;

  beforeAll(async () => {
    const context = { metrics: new Metrics({ tenantLimit: 10 }) } as unknown as AdminContext;
    app = await buildAdminApp({ token: TOKEN, context, log: silentLogger });
    await app.ready();
  });
  afterAll(async () => {
    await app.close();
  });

  const send = async (method: 'GET' | 'POST', url: string, payload?: string, contentType = 'application/json') => {
    const headers: Record<string, string> = { authorization: `Bearer ${TOKEN}`, ...(payload === undefined ? {} : { 'content-type': contentType }) };
    const res = await app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload }) });
    return { status: res.statusCode, json: res.json() as { error: { code: string; message: string; field?: string } } };
  };

  it('answers a valid request (the app is the real one, wired)', async () => {
    const res = await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.statusCode).toBe(200);
    expect(res.body).toContain('# TYPE pgtenant_admin_requests_total counter');
  });

  it.each([
    ['malformed JSON', '{"id":', 'application/json', 400, 'invalid_json'],
    ['an empty JSON body', '', 'application/json', 400, 'invalid_json'],
    ['a text/plain body', 'id=acme', 'text/plain', 415, 'unsupported_media_type'],
    ['a body over 64 KiB', JSON.stringify({ id: 'acme', password: 'x'.repeat(70 * 1024) }), 'application/json', 413, 'body_too_large'],
  ])('%s -> %i %s', async (_label, payload, contentType, status, code) => {
    const r = await send('POST', '/v1/tenants', payload, contentType);
    expect(r.status).toBe(status);
    expect(Object.keys(r.json)).toEqual(['error']);
    expect(r.json.error.code).toBe(code);
  });

  it.each([
    ['a malformed id', { id: 'Bad-Id' }, 'invalid_tenant_id', 'id'],
    ['an id of the wrong type', { id: 7 }, 'invalid_tenant_id', 'id'],
    ['a missing id', {}, 'invalid_tenant_id', 'id'],
    ['a short password', { id: 'acme', password: 'short' }, 'invalid_password', 'password'],
    ['a password that is a number', { id: 'acme', password: 12345678 }, 'invalid_password', 'password'],
    ['an unknown field', { id: 'acme', colour: 'blue' }, 'invalid_request', 'colour'],
    ['a body that is not an object', [], 'invalid_request', 'body'],
  ])('%s -> 400 %s on field %s', async (_label, body, code, field) => {
    const r = await send('POST', '/v1/tenants', JSON.stringify(body));
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ code, field });
    expect(r.json.error.message).toMatch(/\S/);
  });

  it('names the query parameter or path parameter at fault', async () => {
    expect((await send('GET', '/v1/tenants?limit=0')).json.error).toMatchObject({ code: 'invalid_request', field: 'limit' });
    expect((await send('GET', '/v1/tenants?state=gone')).json.error).toMatchObject({ code: 'invalid_request', field: 'state' });
    expect((await send('GET', '/v1/tenants?sort=id')).json.error).toMatchObject({ code: 'invalid_request', field: 'sort' });
    expect((await send('GET', '/v1/tenants/Bad-Id')).json.error).toMatchObject({ code: 'invalid_tenant_id', field: 'id' });
  });
});

describe('upstream connection errors', () => {
  const coded = (code: string, message = 'connect failed') => Object.assign(new Error(message), { code });

  it.each([
    ['ECONNREFUSED', coded('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.9:5432')],
    ['ECONNRESET', coded('ECONNRESET')],
    ['ETIMEDOUT', coded('ETIMEDOUT')],
    ['ENOTFOUND', coded('ENOTFOUND', 'getaddrinfo ENOTFOUND db.internal')],
    ['EHOSTUNREACH', coded('EHOSTUNREACH')],
    ['an AggregateError of ECONNREFUSED (IPv4 and IPv6 both refused)', Object.assign(new AggregateError([coded('ECONNREFUSED'), coded('ECONNREFUSED')], ''), { code: 'ECONNREFUSED' })],
    ['an AggregateError-like object without a code of its own', { errors: [{ code: 'ECONNREFUSED' }] }],
    ['SQLSTATE 57P01 admin_shutdown', coded('57P01', 'terminating connection due to administrator command')],
    ['SQLSTATE 57P02 crash_shutdown', coded('57P02')],
    ['SQLSTATE 57P03 cannot_connect_now', coded('57P03', 'the database system is starting up')],
    ['SQLSTATE 08006 connection_failure', coded('08006')],
    ['SQLSTATE 08001 unable to connect', coded('08001')],
    ['pg pool connect timeout', new Error('timeout exceeded when trying to connect')],
    ['pg connection lost', new Error('Connection terminated unexpectedly')],
  ])('%s -> 503 upstream_unavailable', (_label, err) => {
    const r = map(err);
    expect(r).toMatchObject({ status: 503, code: 'upstream_unavailable', internal: false });
    // Addresses of the database are not the caller's business.
    expect(r.message).not.toMatch(/10\.0\.0\.9|db\.internal/);
  });

  it('does not treat other SQLSTATEs as the upstream being down', () => {
    for (const code of ['42P01', '23505', '40001', '57014', '57P04x', 'X08006']) {
      expect(map(coded(code)).code, code).not.toBe('upstream_unavailable');
    }
  });
});

describe('anything else', () => {
  const SECRET = 'password=hunter2 at db.internal:5432';

  it.each([
    ['an Error', new Error(`boom: ${SECRET}`)],
    ['a TypeError', new TypeError(`cannot read properties of undefined (${SECRET})`)],
    ['a PostgreSQL error with another SQLSTATE', Object.assign(new Error(`relation "x" does not exist ${SECRET}`), { code: '42P01' })],
    ['an error with a 5xx statusCode', Object.assign(new Error(SECRET), { statusCode: 502 })],
    ['an unknown error code', Object.assign(new Error(SECRET), { code: 'ERR_SOMETHING' })],
    ['a thrown string', SECRET],
    ['a plain object', { message: SECRET }],
  ])('%s -> 500 internal_error, logged, without its text', (_label, err) => {
    const r = map(err);
    expect(r).toMatchObject({ status: 500, code: 'internal_error', internal: true });
    expect(JSON.stringify(r.body)).not.toMatch(/hunter2|db\.internal|boom|relation|undefined/);
    expect(r.body.error.message).toMatch(/internal/);
  });

  // `throw null` / `throw undefined` (or a promise rejected with nothing) reaches fastify's error handler as is;
  // if toAdminError throws on it, fastify answers with its own 500 body, outside the API's error shape and unlogged.
  it.each([
    ['null', null],
    ['undefined', undefined],
  ])('a thrown %s -> 500 internal_error', (_label, err) => {
    expect(map(err)).toMatchObject({ status: 500, code: 'internal_error', internal: true });
  });
});
