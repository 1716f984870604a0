// Graceful shutdown: close(graceMs) stops accepting at once, lets open sessions work until the grace ends, then ends them with 57P01.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uniqueTenantId } from '../support/db.js';
import { connectPg, proxyFixture, sessionEnd, sleep, tcpConnect, type ProxyFixture } from '../support/proxy.js';

const PASSWORD = 'shutdown-password-1';
let fx: ProxyFixture;
let tenant: string;

beforeAll(async () => {
  fx = await proxyFixture('role');
  tenant = uniqueTenantId('shut');
  await fx.tenants.create(tenant, { password: PASSWORD });
});

afterAll(async () => {
  await fx?.close();
});

/** The tenant's backends on the server, polled for a moment since a backend exits shortly after its socket closes. */
async function tenantBackendsAfterSettling(): Promise<number> {
  const count = async () =>
    (await fx.admin.query('SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = $1', [tenant])).rows[0].n as number;
  for (let i = 0; i < 40 && (await count()) > 0; i++) await sleep(50);
  return count();
}

describe('close(graceMs)', () => {
  it('refuses new connections at once; an idle session keeps working during the grace period, then gets 57P01', async () => {
    const proxy = await fx.startProxy();
    const c = await connectPg(proxy.clientConfig(tenant, PASSWORD));
    const ended = sessionEnd(c, 6000);
    const graceMs = 1500;
    const start = Date.now();
    const closed = proxy.server.close(graceMs);
    await sleep(50);
    expect(await tcpConnect(proxy.port)).toBe('ECONNREFUSED');
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    const { error } = await ended;
    const endedAfter = Date.now() - start;
    expect(error?.code).toBe('57P01');
    expect(endedAfter).toBeGreaterThanOrEqual(graceMs - 100);
    expect(endedAfter).toBeLessThan(graceMs + 2000);
    await closed;
    expect(proxy.server.sessions().size).toBe(0);
    expect(await tenantBackendsAfterSettling()).toBe(0);
  });

  it('returns early once every session has left during the grace period', async () => {
    const proxy = await fx.startProxy();
    const c = await connectPg(proxy.clientConfig(tenant, PASSWORD));
    const start = Date.now();
    const closed = proxy.server.close(10_000);
    await sleep(200);
    await c.end();
    await closed;
    expect(Date.now() - start).toBeLessThan(3000);
  });

  it('lets a running query finish within the grace period', async () => {
    const proxy = await fx.startProxy();
    const c = await connectPg(proxy.clientConfig(tenant, PASSWORD));
    const query = c.query('SELECT pg_catalog.pg_sleep(0.5) AS slept, 7 AS n');
    await sleep(50);
    const closed = proxy.server.close(3000);
    expect((await query).rows).toEqual([{ slept: '', n: 7 }]);
    await c.end();
    await closed;
  });

  it('with a grace of 0 ends idle sessions right away with 57P01', async () => {
    const proxy = await fx.startProxy();
    const c = await connectPg(proxy.clientConfig(tenant, PASSWORD));
    const ended = sessionEnd(c, 3000);
    const start = Date.now();
    await proxy.server.close(0);
    const { error } = await ended;
    expect(error?.code).toBe('57P01');
    expect(Date.now() - start).toBeLessThan(2000);
  });

  it('a query still running when the grace ends is cancelled on the server, not left to run', async () => {
    const proxy = await fx.startProxy();
    const c = await connectPg(proxy.clientConfig(tenant, PASSWORD));
    c.on('error', () => {});
    const query = c.query('SELECT pg_catalog.pg_sleep(30)').catch((err: { code?: string }) => err);
    await sleep(200);
    await proxy.server.close(0);
    await query;
    expect(await tenantBackendsAfterSettling()).toBe(0);
  });
});
