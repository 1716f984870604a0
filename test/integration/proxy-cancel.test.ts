// Query cancellation through the proxy: the proxy's BackendKeyData reaches the right backend, and nothing else does.
import { spawn } from 'node:child_process';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uniqueTenantId } from '../support/db.js';
import {
  backendKey,
  connectPg,
  hasBinary,
  proxyFixture,
  rejection,
  sendCancel,
  sleep,
  titleNeeding,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'cancel-password-1';
let fx: ProxyFixture;
let proxy: TestProxy;
let tenant: string;
const clients: pg.Client[] = [];

beforeAll(async () => {
  fx = await proxyFixture('role');
  tenant = uniqueTenantId('cancel');
  await fx.tenants.create(tenant, { password: PASSWORD });
  proxy = await fx.startProxy();
});

afterAll(async () => {
  await Promise.allSettled(clients.map((c) => c.end()));
  await fx?.close();
});

async function client(): Promise<pg.Client> {
  const c = await connectPg(proxy.clientConfig(tenant, PASSWORD));
  clients.push(c);
  return c;
}

/** Runs a query and reports how long it took and how it ended. */
async function timed(p: Promise<unknown>): Promise<{ ms: number; code: string | null }> {
  const start = Date.now();
  try {
    await p;
    return { ms: Date.now() - start, code: null };
  } catch (err) {
    return { ms: Date.now() - start, code: (err as { code?: string }).code ?? 'no code' };
  }
}

/** Waits until the backend of `pid` is running the query, so the cancel cannot arrive before it. */
async function waitActive(pid: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const { rows } = await fx.admin.query("SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'", [pid]);
    if (rows[0]?.state === 'active') return;
    await sleep(20);
  }
  throw new Error(`backend ${pid} never started its query`);
}

const backendPid = async (c: pg.Client): Promise<number> => (await c.query('SELECT pg_catalog.pg_backend_pid() AS pid')).rows[0].pid;

describe('cancel with the right key', () => {
  it('the key the client sees is the proxy\'s, not the backend\'s', async () => {
    const c = await client();
    const key = backendKey(c);
    expect(key.processId).toBeGreaterThan(0);
    expect(key.processId).not.toBe(await backendPid(c));
  });

  it('pg: a CancelRequest on a second socket stops pg_sleep(30) within a second with 57014, and the session goes on', async () => {
    const c = await client();
    const pid = await backendPid(c);
    const query = timed(c.query('SELECT pg_catalog.pg_sleep(30)'));
    await waitActive(pid);
    const cancelledAt = Date.now();
    const { closed } = await sendCancel(proxy.port, backendKey(c).processId, backendKey(c).secretKey);
    expect(closed).toBe(true);
    const result = await query;
    expect(result.code).toBe('57014');
    expect(Date.now() - cancelledAt).toBeLessThan(1000);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it('postgres.js: query.cancel() stops pg_sleep(30) within a second with 57014', async () => {
    const sql = postgres(proxy.url(tenant, PASSWORD), { max: 1, ssl: false, connect_timeout: 5 });
    try {
      const [row] = await sql`SELECT pg_catalog.pg_backend_pid() AS pid`;
      const q = sql`SELECT pg_catalog.pg_sleep(30)`;
      const result = timed(q.execute());
      await waitActive(row!.pid as number);
      const cancelledAt = Date.now();
      await q.cancel();
      expect((await result).code).toBe('57014');
      expect(Date.now() - cancelledAt).toBeLessThan(1000);
      expect([...(await sql`SELECT 1 AS one`)]).toEqual([{ one: 1 }]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  describe.runIf(hasBinary('psql'))(titleNeeding('psql', 'psql'), () => {
    it('Ctrl-C (SIGINT) makes psql send a CancelRequest that stops pg_sleep(30)', async () => {
      const child = spawn('psql', ['-X', '-d', proxy.url(tenant, PASSWORD), '-c', 'SELECT pg_catalog.pg_sleep(30)'], {
        env: { ...process.env, PGCONNECT_TIMEOUT: '10' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
      try {
        // psql's backend is the tenant's only one running pg_sleep.
        let pid: number | undefined;
        for (let i = 0; i < 200 && pid === undefined; i++) {
          const { rows } = await fx.admin.query(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND state = 'active' AND query LIKE '%pg_sleep(30)%' AND application_name = 'psql'",
            [tenant],
          );
          pid = rows[0]?.pid;
          if (pid === undefined) await sleep(25);
        }
        expect(pid, 'psql never started its query').toBeDefined();
        const cancelledAt = Date.now();
        child.kill('SIGINT');
        const code = await exited;
        expect(Date.now() - cancelledAt).toBeLessThan(1500);
        expect(code).not.toBe(0);
        expect(stderr).toContain('canceling statement due to user request');
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    });
  });
});

describe('cancel with a wrong key', () => {
  it('a wrong secret for a live processId cancels nothing', async () => {
    const c = await client();
    const pid = await backendPid(c);
    const key = backendKey(c);
    const query = timed(c.query('SELECT pg_catalog.pg_sleep(2)'));
    await waitActive(pid);
    await sendCancel(proxy.port, key.processId, key.secretKey ^ 1);
    await sendCancel(proxy.port, key.processId, ~key.secretKey);
    const result = await query;
    expect(result.code).toBeNull();
    expect(result.ms).toBeGreaterThanOrEqual(1900);
  });

  it('the backend\'s real pid with the proxy\'s secret cancels nothing', async () => {
    const c = await client();
    const pid = await backendPid(c);
    const query = timed(c.query('SELECT pg_catalog.pg_sleep(2)'));
    await waitActive(pid);
    await sendCancel(proxy.port, pid, backendKey(c).secretKey);
    expect((await query).code).toBeNull();
  });

  it('one session\'s valid key cancels only that session, never another one running a query', async () => {
    const idle = await client();
    const busy = await client();
    const pid = await backendPid(busy);
    const query = timed(busy.query('SELECT pg_catalog.pg_sleep(2)'));
    await waitActive(pid);
    await sendCancel(proxy.port, backendKey(idle).processId, backendKey(idle).secretKey);
    expect((await query).code).toBeNull();
    // The idle session got nothing it could see either.
    expect((await idle.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it('a key of a session that has ended cancels nothing', async () => {
    const gone = await client();
    const key = backendKey(gone);
    await gone.end();
    const c = await client();
    const pid = await backendPid(c);
    const query = timed(c.query('SELECT pg_catalog.pg_sleep(1)'));
    await waitActive(pid);
    await sendCancel(proxy.port, key.processId, key.secretKey);
    expect((await query).code).toBeNull();
  });

  it('a cancel connection never turns into a session', async () => {
    const { data, closed } = await sendCancel(proxy.port, 12345, 67890);
    expect(data.length).toBe(0);
    expect(closed).toBe(true);
    const c = await client();
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect((await rejection(c.query('SELECT pg_catalog.pg_sleep(0.05), 1/0'))).code).toBe('22012');
  });
});
