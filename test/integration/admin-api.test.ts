// The admin HTTP API end to end: tenant lifecycle, paging, live connections, disconnects, health and OpenAPI, schema mode.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminFixture, type AdminFixture } from '../support/admin.js';
import { uniqueTenantId } from '../support/db.js';
import { connectPg, rejection, sessionEnd, sleep } from '../support/proxy.js';

const PASSWORD = 'admin-api-password-1';
/** Long enough for the proxy's LISTEN connection to hear a NOTIFY, so a wrong reaction to it would show. */
const NOTIFY_SETTLE_MS = 300;

interface ClientCounts {
  login: number;
  waiting: number;
  idle: number;
  active: number;
  idle_in_transaction: number;
  idle_in_transaction_aborted: number;
}
interface TenantConnections {
  tenant: string | null;
  clients: ClientCounts;
  servers: { login: number; active: number; idle: number };
}

const clients = (over: Partial<ClientCounts> = {}): ClientCounts => ({
  login: 0,
  waiting: 0,
  idle: 0,
  active: 0,
  idle_in_transaction: 0,
  idle_in_transaction_aborted: 0,
  ...over,
});

describe('admin API in role isolation', () => {
  let fx: AdminFixture;
  const open: pg.Client[] = [];

  beforeAll(async () => {
    fx = await adminFixture();
  });

  afterAll(async () => {
    await Promise.allSettled(open.map((c) => c.end()));
    await fx?.close();
  });

  /** A pg client through the proxy, closed after the file if the test leaves it open. */
  async function connect(user: string, password: string): Promise<pg.Client> {
    const c = await connectPg({ connectionString: fx.proxyUrl(user, password), connectionTimeoutMillis: 5000 });
    open.push(c);
    return c;
  }

  async function createTenant(prefix: string): Promise<string> {
    const id = uniqueTenantId(prefix);
    const res = await fx.request('POST', '/v1/tenants', { id, password: PASSWORD });
    expect(res.status).toBe(201);
    return id;
  }

  async function connections(): Promise<{ clients: number; servers: number; tenants: TenantConnections[] }> {
    const res = await fx.request('GET', '/v1/connections');
    expect(res.status).toBe(200);
    return res.json;
  }

  const entryFor = (body: { tenants: TenantConnections[] }, id: string) => body.tenants.find((t) => t.tenant === id);

  it('creates, shows, suspends, disconnects, resumes and drops a tenant', async () => {
    const id = uniqueTenantId('life');
    const created = await fx.request('POST', '/v1/tenants', { id });
    expect(created.status).toBe(201);
    expect(created.headers.get('location')).toBe(`/v1/tenants/${id}`);
    expect(created.json).toMatchObject({ tenant: { id, schema: id, role: id, state: 'active' }, migrationsApplied: 0 });
    const password: string = created.json.password;
    expect(typeof password).toBe('string');
    expect(password.length).toBeGreaterThanOrEqual(16);

    const session = await connect(id, password);
    expect((await session.query('SELECT current_user AS u, current_schema() AS s')).rows).toEqual([{ u: id, s: id }]);

    const shown = await fx.request('GET', `/v1/tenants/${id}`);
    expect(shown.status).toBe(200);
    expect(shown.json).toMatchObject({ id, schema: id, role: id, state: 'active', schemaVersion: null, migrationsApplied: 0 });
    expect(shown.json.connections).toEqual({ clients: clients({ idle: 1 }), servers: { login: 0, active: 1, idle: 0 } });

    // Suspend alone: the open session carries on, new ones are refused.
    const suspended = await fx.request('PATCH', `/v1/tenants/${id}`, { state: 'suspended' });
    expect(suspended.status).toBe(200);
    expect(suspended.json).toMatchObject({ id, state: 'suspended' });
    await sleep(NOTIFY_SETTLE_MS);
    expect((await session.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    const refused = await rejection(connect(id, password));
    expect(refused.code).toBe('57P03');

    // Suspend with disconnect ends the open session too.
    const ended = sessionEnd(session, 3000);
    const again = await fx.request('PATCH', `/v1/tenants/${id}?disconnect=true`, { state: 'suspended' });
    expect(again.status).toBe(200);
    expect(again.json.state).toBe('suspended');
    expect((await ended).error?.code).toBe('57P01');

    const sized = await fx.request('PATCH', `/v1/tenants/${id}`, { poolSize: 4 });
    expect(sized.status).toBe(200);
    expect(sized.json).toMatchObject({ id, poolSize: 4, state: 'suspended' });
    expect((await fx.request('PATCH', `/v1/tenants/${id}`, { poolSize: null })).json.poolSize).toBeNull();
    const capped = await fx.request('PATCH', `/v1/tenants/${id}`, { maxClients: 3, poolSize: 2 });
    expect(capped.status).toBe(200);
    expect(capped.json).toMatchObject({ id, maxClients: 3, poolSize: 2 });
    expect((await fx.request('GET', `/v1/tenants/${id}`)).json).toMatchObject({ maxClients: 3, poolSize: 2 });
    expect((await fx.request('PATCH', `/v1/tenants/${id}`, { maxClients: null, poolSize: null })).json).toMatchObject({ maxClients: null, poolSize: null });
    const resumed = await fx.request('PATCH', `/v1/tenants/${id}`, { state: 'active' });
    expect(resumed.status).toBe(200);
    expect(resumed.json).toMatchObject({ id, state: 'active' });
    const back = await connect(id, password);
    expect((await back.query('SELECT current_user AS u')).rows).toEqual([{ u: id }]);

    // Without the confirmation nothing is dropped, and the session is left alone.
    const unconfirmed = await fx.request('DELETE', `/v1/tenants/${id}`);
    expect(unconfirmed.status).toBe(400);
    expect(unconfirmed.json.error.code).toBe('confirmation_required');
    const wrongConfirm = await fx.request('DELETE', `/v1/tenants/${id}?confirm=someone_else`);
    expect(wrongConfirm.status).toBe(400);
    expect(wrongConfirm.json.error.code).toBe('confirmation_required');
    expect((await fx.admin.query('SELECT 1 FROM pgtenant.tenants WHERE id = $1', [id])).rowCount).toBe(1);
    expect((await fx.admin.query('SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1', [id])).rowCount).toBe(1);
    expect((await back.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);

    const backEnded = sessionEnd(back, 3000);
    const dropped = await fx.request('DELETE', `/v1/tenants/${id}?confirm=${id}`);
    expect(dropped.status).toBe(200);
    expect(dropped.json).toEqual({ id, dropped: true });
    await backEnded;
    expect((await fx.admin.query('SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1', [id])).rowCount).toBe(0);
    expect((await fx.admin.query('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1', [id])).rowCount).toBe(0);
    expect((await fx.admin.query('SELECT 1 FROM pgtenant.tenants WHERE id = $1', [id])).rowCount).toBe(0);
    expect((await rejection(connect(id, password))).code).toBe('28P01');

    const gone = await fx.request('GET', `/v1/tenants/${id}`);
    expect(gone.status).toBe(404);
    expect(gone.json.error.code).toBe('tenant_not_found');
  });

  it('creates a tenant with a chosen password, returns no password, and that password logs in through the proxy', async () => {
    const id = uniqueTenantId('chosen');
    const res = await fx.request('POST', '/v1/tenants', { id, password: PASSWORD });
    expect(res.status).toBe(201);
    expect(res.json).toMatchObject({ tenant: { id, role: id, state: 'active' }, password: null });
    const c = await connect(id, PASSWORD);
    expect((await c.query('SELECT current_user AS u, current_schema() AS s')).rows).toEqual([{ u: id, s: id }]);
    await c.end();
    expect((await rejection(connect(id, 'not-the-password-1'))).code).toBe('28P01');
  });

  it('reports each tenant\'s live sessions under its own tenant, in their states, with totals that add up', async () => {
    const a = await createTenant('conna');
    const b = await createTenant('connb');
    const ca = await connect(a, PASSWORD);
    const cb = await connect(b, PASSWORD);

    const idle = await connections();
    expect(entryFor(idle, a)).toEqual({ tenant: a, clients: clients({ idle: 1 }), servers: { login: 0, active: 1, idle: 0 } });
    expect(entryFor(idle, b)).toEqual({ tenant: b, clients: clients({ idle: 1 }), servers: { login: 0, active: 1, idle: 0 } });
    const sum = (o: object): number => (Object.values(o) as number[]).reduce((x, y) => x + y, 0);
    expect(idle.clients).toBe(idle.tenants.reduce((n, t) => n + sum(t.clients), 0));
    expect(idle.servers).toBe(idle.tenants.reduce((n, t) => n + sum(t.servers), 0));
    expect(idle.clients).toBeGreaterThanOrEqual(2);

    await ca.query('BEGIN');
    const inTx = await connections();
    expect(entryFor(inTx, a)?.clients).toEqual(clients({ idle_in_transaction: 1 }));
    expect(entryFor(inTx, b)?.clients).toEqual(clients({ idle: 1 }));

    // Poll while the sleep runs: it shows as active only between Query and ReadyForQuery.
    let running = true;
    const slow = cb.query('SELECT pg_sleep(1)').finally(() => (running = false));
    let seen: ClientCounts | undefined;
    while (running) {
      const now = entryFor(await connections(), b)?.clients;
      if (now?.active === 1) {
        seen = now;
        break;
      }
      await sleep(50);
    }
    await slow;
    expect(seen).toEqual(clients({ active: 1 }));
    expect(entryFor(await connections(), b)?.clients).toEqual(clients({ idle: 1 }));

    await ca.query('ROLLBACK');
    await ca.end();
    await cb.end();
  });

  it('disconnects exactly one tenant\'s sessions, and 404s an unknown tenant', async () => {
    const a = await createTenant('disca');
    const b = await createTenant('discb');
    const ca = await connect(a, PASSWORD);
    const cb = await connect(b, PASSWORD);
    const ended = sessionEnd(ca, 3000);
    const res = await fx.request('POST', `/v1/tenants/${a}/disconnect`);
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ tenant: a, disconnected: 1 });
    expect((await ended).error?.code).toBe('57P01');
    await sleep(NOTIFY_SETTLE_MS);
    expect((await cb.query('SELECT current_user AS u')).rows).toEqual([{ u: b }]);
    await cb.end();

    const unknown = await fx.request('POST', `/v1/tenants/${uniqueTenantId('nobody')}/disconnect`);
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.code).toBe('tenant_not_found');
  });

  it('serves /healthz without a token, /readyz with one', async () => {
    const health = await fx.request('GET', '/healthz', undefined, { authorization: '' });
    expect(health.status).toBe(200);
    expect(health.json).toEqual({ status: 'ok' });
    const ready = await fx.request('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.json).toEqual({ status: 'ready' });
  });

  it('serves an OpenAPI 3 document, behind the token, listing every route and bearer security', async () => {
    const anonymous = await fx.request('GET', '/openapi.json', undefined, { authorization: '' });
    expect(anonymous.status).toBe(401);
    expect(anonymous.json.error.code).toBe('unauthorized');

    const res = await fx.request('GET', '/openapi.json');
    expect(res.status).toBe(200);
    const doc = res.json;
    expect(doc.openapi).toMatch(/^3\./);
    const paths = Object.keys(doc.paths);
    for (const p of [
      '/v1/tenants',
      '/v1/tenants/{id}',
      '/v1/tenants/{id}/disconnect',
      '/v1/migrations',
      '/v1/migrations/{job}',
      '/v1/migrations/status',
      '/v1/connections',
      '/healthz',
      '/readyz',
      '/metrics',
    ]) {
      expect(paths, p).toContain(p);
    }
    const schemes = Object.values(doc.components?.securitySchemes ?? {}) as { type: string; scheme?: string }[];
    expect(schemes).toContainEqual(expect.objectContaining({ type: 'http', scheme: 'bearer' }));
    const bearerName = Object.entries(doc.components.securitySchemes).find(([, s]) => (s as { scheme?: string }).scheme === 'bearer')![0];
    expect(doc.security).toContainEqual({ [bearerName]: [] });
  });
});

describe('admin API tenant listing', () => {
  let fx: AdminFixture;

  // A fixture of its own: the listing must equal exactly the tenants made here.
  beforeAll(async () => {
    fx = await adminFixture();
  });

  afterAll(async () => {
    await fx?.close();
  });

  it('pages through tenants in id order with limit and next, and filters by state', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const id = uniqueTenantId('list');
      const res = await fx.request('POST', '/v1/tenants', { id, password: PASSWORD });
      expect(res.status).toBe(201);
      ids.push(id);
    }
    const inOrder = [...ids].sort();

    const seen: string[] = [];
    const pageSizes: number[] = [];
    let after: string | null = null;
    for (let guard = 0; guard < 10; guard++) {
      const res = await fx.request('GET', `/v1/tenants?limit=2${after ? `&after=${after}` : ''}`);
      expect(res.status).toBe(200);
      const page = res.json.tenants as { id: string }[];
      pageSizes.push(page.length);
      seen.push(...page.map((t) => t.id));
      after = res.json.next;
      if (after === null) break;
      expect(after).toBe(page.at(-1)!.id);
    }
    expect(after).toBeNull();
    expect(pageSizes).toEqual([2, 2, 1]);
    expect(seen).toEqual(inOrder);

    const toSuspend = [inOrder[1]!, inOrder[3]!];
    for (const id of toSuspend) {
      const res = await fx.request('PATCH', `/v1/tenants/${id}`, { state: 'suspended' });
      expect(res.status).toBe(200);
    }
    const suspended = await fx.request('GET', '/v1/tenants?state=suspended');
    expect(suspended.status).toBe(200);
    expect(suspended.json.tenants.map((t: { id: string }) => t.id)).toEqual(toSuspend);
    expect(suspended.json.tenants.every((t: { state: string }) => t.state === 'suspended')).toBe(true);
    expect(suspended.json.next).toBeNull();
    const active = await fx.request('GET', '/v1/tenants?state=active');
    expect(active.json.tenants.map((t: { id: string }) => t.id)).toEqual(inOrder.filter((id) => !toSuspend.includes(id)));
  });
});

describe('admin API in schema isolation', () => {
  let fx: AdminFixture;

  beforeAll(async () => {
    fx = await adminFixture({ isolation: 'schema' });
  });

  afterAll(async () => {
    await fx?.close();
  });

  it('refuses a password (400 invalid_password) and creates a tenant without one (password null)', async () => {
    const id = uniqueTenantId('schm');
    const withPassword = await fx.request('POST', '/v1/tenants', { id, password: PASSWORD });
    expect(withPassword.status).toBe(400);
    expect(withPassword.json.error.code).toBe('invalid_password');
    expect((await fx.admin.query('SELECT 1 FROM pgtenant.tenants WHERE id = $1', [id])).rowCount).toBe(0);

    const created = await fx.request('POST', '/v1/tenants', { id });
    expect(created.status).toBe(201);
    expect(created.headers.get('location')).toBe(`/v1/tenants/${id}`);
    expect(created.json).toMatchObject({ tenant: { id, schema: id, role: null, state: 'active' }, password: null });
    expect((await fx.admin.query('SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1', [id])).rowCount).toBe(1);
  });
});
