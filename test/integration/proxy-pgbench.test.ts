// pgbench through the proxy as a tenant: initialisation (COPY, DDL, VACUUM) and select-only runs in simple and extended protocol.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uniqueTenantId } from '../support/db.js';
import { hasBinary, proxyFixture, run, titleNeeding, type ProxyFixture, type TestProxy } from '../support/proxy.js';

const PASSWORD = 'pgbench-password-1';
let fx: ProxyFixture;
let proxy: TestProxy;
let tenant: string;

/** pgbench connection flags and environment for the tenant, through the proxy. */
function pgbench(args: string[], timeoutMs: number) {
  const conn = ['-h', '127.0.0.1', '-p', String(proxy.port), '-U', tenant];
  return run('pgbench', [...conn, ...args, fx.db.name], { PGPASSWORD: PASSWORD, PGSSLMODE: 'disable' }, timeoutMs);
}

/** Exit 0, a tps line, and (pgbench 15+ reports it) no failed transaction. */
function expectCleanRun(r: { code: number; stdout: string; stderr: string }): void {
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/tps = \d+/);
  const failed = /number of failed transactions: (\d+)/.exec(r.stdout);
  if (failed) expect(failed[1]).toBe('0');
  expect(r.stdout).toMatch(/number of transactions actually processed: [1-9]/);
}

describe.runIf(hasBinary('pgbench'))(titleNeeding('pgbench through the proxy', 'pgbench'), () => {
  beforeAll(async () => {
    fx = await proxyFixture('role');
    tenant = uniqueTenantId('bench');
    await fx.tenants.create(tenant, { password: PASSWORD });
    proxy = await fx.startProxy();
  });

  afterAll(async () => {
    await fx?.close();
  });

  it('pgbench -i -s 1 creates and fills its tables in the tenant schema', async () => {
    const r = await pgbench(['-i', '-s', '1', '-q'], 120_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/done in/);
    const { rows } = await fx.admin.query(
      `SELECT n.nspname AS schema, pg_catalog.pg_get_userbyid(c.relowner) AS owner
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = 'pgbench_accounts'`,
    );
    expect(rows).toEqual([{ schema: tenant, owner: tenant }]);
    const count = await fx.admin.query(`SELECT count(*)::int AS n FROM "${tenant}".pgbench_accounts`);
    expect(count.rows[0].n).toBe(100_000);
  });

  it('pgbench -S -c 10 -j 2 -T 5 (simple protocol) runs without errors', async () => {
    const r = await pgbench(['-S', '-c', '10', '-j', '2', '-T', '5', '-n'], 60_000);
    expectCleanRun(r);
  });

  it('pgbench -S -M extended -c 4 -j 2 -T 3 runs without errors', async () => {
    const r = await pgbench(['-S', '-M', 'extended', '-c', '4', '-j', '2', '-T', '3', '-n'], 60_000);
    expectCleanRun(r);
  });

  it('pgbench -M prepared -c 4 -j 2 -T 3 (the read-write TPC-B-like script) runs without errors', async () => {
    const r = await pgbench(['-M', 'prepared', '-c', '4', '-j', '2', '-T', '3', '-n'], 60_000);
    expectCleanRun(r);
  });

  it('leaves no session behind once pgbench has exited, and every backend idle in its pool', async () => {
    for (let i = 0; i < 50 && proxy.server.sessions().size > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(proxy.server.sessions().size).toBe(0);
    const backends = async () =>
      (
        await fx.admin.query<{ state: string; n: number }>(
          'SELECT state, count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = $1 GROUP BY state',
          [tenant],
        )
      ).rows;
    const pooled = proxy.server.pool.counts().get(tenant);
    expect(pooled?.active ?? 0).toBe(0);
    expect(pooled?.idle ?? 0).toBeGreaterThan(0);
    // What the pool holds is exactly what the server has for the tenant: idle backends, nothing running.
    for (let i = 0; i < 50 && (await backends()).some((r) => r.state !== 'idle'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(await backends()).toEqual([{ state: 'idle', n: pooled!.idle }]);
  });
});
