// A proxy whose tenant registry cannot be read refuses logins with a clear 57P03, and recovers once it can.
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config.js';
import { silentLogger } from '../../src/logger.js';
import { startProxy, type ProxyServer } from '../../src/proxy/server.js';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { TenantService } from '../../src/tenants/service.js';
import { freshDatabase, uniqueTenantId } from '../support/db.js';
import { connectPg, rejection } from '../support/proxy.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let admin: pg.Pool;
let proxy: ProxyServer;

beforeAll(async () => {
  db = await freshDatabase();
  admin = new pg.Pool({ connectionString: db.url, max: 2 });
  const config = resolveConfig({ flags: { upstream: db.url, listen: '127.0.0.1:0' }, env: {} });
  proxy = await startProxy({ config, log: silentLogger });
});

afterAll(async () => {
  await proxy?.close(0);
  await admin?.end();
  await db?.drop();
});

it('refuses with 57P03 while the control schema is missing, then serves once it is installed', async () => {
  const tenant = uniqueTenantId('reg');
  const client = (password: string) => ({ host: '127.0.0.1', port: proxy.address.port, user: tenant, password, database: db.name });
  const err = await rejection(connectPg(client('whatever-password')));
  expect(err.code).toBe('57P03');
  expect(err.message).toMatch(/tenant registry/);

  const c = await admin.connect();
  try {
    await installControlSchema(c);
  } finally {
    c.release();
  }
  await new TenantService(admin, { isolation: 'role' }).create(tenant, { password: 'registry-password-1' });
  const ok = await connectPg(client('registry-password-1'));
  expect((await ok.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
  await ok.end();
});
