// Schema isolation mode: one shared login role, the tenant from the user suffix or application_name, search_path set to it.
import type pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TenantService } from '../../src/tenants/service.js';
import { uniqueTenantId } from '../support/db.js';
import { connectPg, proxyFixture, rejection, type ProxyFixture, type TestProxy } from '../support/proxy.js';

let fx: ProxyFixture;

beforeAll(async () => {
  fx = await proxyFixture('schema');
});

afterAll(async () => {
  await fx?.close();
});

describe('schema isolation', () => {
  let schemaProxy: TestProxy;
  let service: TenantService;
  let t1: string;
  let t2: string;

  beforeAll(async () => {
    schemaProxy = await fx.startProxy();
    service = fx.tenants;
    t1 = uniqueTenantId('sch');
    t2 = uniqueTenantId('sch');
    await service.create(t1);
    await service.create(t2);
  });

  const su = () => fx.superuser;
  const viaSchemaProxy = (user: string, password: string, extra: Partial<pg.ClientConfig> = {}) =>
    connectPg({ ...schemaProxy.clientConfig(user, password), ...extra });

  it('user <login>.<tenant> lands in the tenant schema', async () => {
    for (const t of [t1, t2]) {
      const c = await viaSchemaProxy(`${su().user}.${t}`, su().password);
      expect((await c.query('SELECT current_schema() AS s, current_user AS u')).rows).toEqual([{ s: t, u: su().user }]);
      await c.end();
    }
  });

  it('application_name=<tenant> lands in the tenant schema', async () => {
    const c = await viaSchemaProxy(su().user, su().password, { application_name: t2 });
    expect((await c.query('SELECT current_schema() AS s')).rows).toEqual([{ s: t2 }]);
    await c.end();
    const sql = postgres(schemaProxy.url(su().user, su().password), {
      max: 1,
      ssl: false,
      connect_timeout: 5,
      connection: { application_name: t1 },
    });
    expect([...(await sql`SELECT current_schema() AS s`)]).toEqual([{ s: t1 }]);
    await sql.end({ timeout: 5 });
  });

  it('a client-chosen search_path in the startup packet is overridden, and RESET ALL comes back to the tenant', async () => {
    const c = await viaSchemaProxy(`${su().user}.${t1}`, su().password, { options: `-c search_path=${t2}` });
    try {
      expect((await c.query('SELECT current_schema() AS s')).rows).toEqual([{ s: t1 }]);
      await c.query(`SET search_path TO ${t2}`);
      await c.query('RESET ALL');
      expect((await c.query('SELECT current_schema() AS s')).rows).toEqual([{ s: t1 }]);
    } finally {
      await c.end();
    }
  });

  it('refuses a wrong password (28P01), an unknown tenant (28000) and a startup packet without a tenant (28000)', async () => {
    expect((await rejection(viaSchemaProxy(`${su().user}.${t1}`, 'wrong-password-000'))).code).toBe('28P01');
    const unknown = await rejection(viaSchemaProxy(`${su().user}.nosuch_tenant`, su().password));
    expect(unknown.code).toBe('28000');
    expect(unknown.message).toContain('nosuch_tenant');
    expect((await rejection(viaSchemaProxy(su().user, su().password))).code).toBe('28000');
  });

  it('a suspended schema tenant is refused with 57P03', async () => {
    const t = uniqueTenantId('schs');
    await service.create(t);
    await service.suspend(t);
    // Never looked up before, so nothing stale can be cached.
    const err = await rejection(viaSchemaProxy(`${su().user}.${t}`, su().password));
    expect(err.code).toBe('57P03');
  });
});
