// The relay after login: big results both ways, slow readers, pipelining, notices, notifications, COPY, and sessions ending from either side.
import { spawn } from 'node:child_process';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uniqueTenantId } from '../support/db.js';
import {
  connectPg,
  hasBinary,
  proxyFixture,
  run,
  sessionEnd,
  sleep,
  titleNeeding,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'relay-password-12';
let fx: ProxyFixture;
let proxy: TestProxy;
let tenant: string;

beforeAll(async () => {
  fx = await proxyFixture('role');
  tenant = uniqueTenantId('relay');
  await fx.tenants.create(tenant, { password: PASSWORD });
  proxy = await fx.startProxy();
});

afterAll(async () => {
  await fx?.close();
});

const client = () => connectPg(proxy.clientConfig(tenant, PASSWORD));
const js = (opts: postgres.Options<Record<string, postgres.PostgresType>> = {}) =>
  postgres(proxy.url(tenant, PASSWORD), { max: 1, ssl: false, connect_timeout: 5, onnotice: () => undefined, ...opts });

/** Polls until the server has no backend with that pid (a backend exits shortly after its socket closes). */
async function backendGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 40; i++) {
    const { rowCount } = await fx.admin.query('SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid]);
    if (rowCount === 0) return true;
    await sleep(50);
  }
  return false;
}

/** Polls until the pooled backend sits idle after the proxy's reset; returns its last statement. */
async function backendReset(pid: number): Promise<string | null> {
  let query: string | null = null;
  for (let i = 0; i < 40; i++) {
    const { rows } = await fx.admin.query('SELECT state, query FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid]);
    query = rows[0]?.query ?? null;
    if (rows[0]?.state === 'idle' && query === 'DISCARD ALL') return query;
    await sleep(50);
  }
  return query;
}

const pidOf = async (c: pg.Client): Promise<number> => (await c.query('SELECT pg_catalog.pg_backend_pid() AS pid')).rows[0].pid;

describe('data in bulk', () => {
  it('a 20 MB result arrives whole', async () => {
    const c = await client();
    try {
      const { rows } = await c.query("SELECT i, repeat(chr(65 + i % 26), 1000) AS s FROM generate_series(1, 20000) i");
      expect(rows.length).toBe(20000);
      expect(rows.every((r: { i: number; s: string }) => r.s.length === 1000 && r.s[0] === String.fromCharCode(65 + (r.i % 26)))).toBe(true);
    } finally {
      await c.end();
    }
  });

  it('a slow reader of a cursor gets every row (backpressure, not loss)', async () => {
    const sql = js();
    try {
      let seen = 0;
      let sum = 0;
      await sql`SELECT i, repeat('y', 5000) AS pad FROM generate_series(1, 3000) i`.cursor(100, async (rows) => {
        seen += rows.length;
        for (const r of rows) sum += r.i as number;
        await sleep(2);
      });
      expect(seen).toBe(3000);
      expect(sum).toBe((3000 * 3001) / 2);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it('a 10 MB parameter reaches the server intact', async () => {
    const c = await client();
    try {
      const big = 'z'.repeat(10 * 1024 * 1024);
      const { rows } = await c.query('SELECT length($1::text) AS n, md5($1::text) = md5(repeat(\'z\', 10485760)) AS same', [big]);
      expect(rows).toEqual([{ n: 10 * 1024 * 1024, same: true }]);
    } finally {
      await c.end();
    }
  });

  it('postgres.js pipelines 200 queries on one connection and each gets its own answer', async () => {
    const sql = js();
    try {
      const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => sql`SELECT ${i}::int * 2 AS v`));
      expect(answers.map((r) => r[0]!.v)).toEqual(Array.from({ length: 200 }, (_, i) => i * 2));
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
});

describe('asynchronous messages', () => {
  it('relays NOTICE, ParameterStatus and NOTIFY', async () => {
    const notices: string[] = [];
    const sql = js({ onnotice: (n) => void notices.push(n.message ?? '') });
    const listener = await client();
    try {
      await sql.unsafe("DO $$ BEGIN RAISE NOTICE 'hello from %', current_user; END $$");
      expect(notices).toEqual([`hello from ${tenant}`]);

      await sql`SET application_name = 'relay-test'`;
      expect(sql.parameters.application_name).toBe('relay-test');

      const got = new Promise<pg.Notification>((resolve) => listener.on('notification', resolve));
      await listener.query('LISTEN tenant_events');
      await sql`SELECT pg_catalog.pg_notify('tenant_events', 'payload-1')`;
      const n = await Promise.race([got, sleep(3000).then(() => null)]);
      expect(n).toMatchObject({ channel: 'tenant_events', payload: 'payload-1' });
    } finally {
      await sql.end({ timeout: 5 });
      await listener.end();
    }
  });

  it('an error inside a transaction, ROLLBACK, and the session carries on', async () => {
    const c = await client();
    try {
      await c.query('BEGIN');
      await expect(c.query('SELECT 1/0')).rejects.toMatchObject({ code: '22012' });
      await expect(c.query('SELECT 1')).rejects.toMatchObject({ code: '25P02' });
      await c.query('ROLLBACK');
      expect((await c.query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]);
    } finally {
      await c.end();
    }
  });
});

describe.runIf(hasBinary('psql'))(titleNeeding('COPY through psql', 'psql'), () => {
  it('COPY FROM STDIN and COPY TO STDOUT round-trip 50,000 rows', async () => {
    const lines = Array.from({ length: 50_000 }, (_, i) => `${i}\trow ${i}`).join('\n') + '\n';
    const url = proxy.url(tenant, PASSWORD);
    const create = await run('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', 'CREATE TABLE copied (i int, t text)']);
    expect(create.code, create.stderr).toBe(0);
    const code = await new Promise<number | null>((resolve) => {
      const child = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', '\\copy copied FROM STDIN'], { stdio: ['pipe', 'ignore', 'inherit'] });
      child.once('close', resolve);
      child.stdin.end(lines);
    });
    expect(code).toBe(0);
    const out = await run('psql', ['-X', '-q', '-d', url, '-c', '\\copy copied TO STDOUT']);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toBe(lines);
  });
});

describe('sessions ending', () => {
  it('a client that says Terminate hands its backend back to the pool, reset with DISCARD ALL, and the next client gets it', async () => {
    const c = await client();
    const pid = await pidOf(c);
    await c.query("SET statement_timeout = '7s'");
    await c.end();
    expect(await backendReset(pid)).toBe('DISCARD ALL');
    const next = await client();
    try {
      expect(await pidOf(next)).toBe(pid);
      expect((await next.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('0');
    } finally {
      await next.end();
    }
  });

  it('a client that vanishes inside a transaction has it rolled back before its backend is reused', async () => {
    const setup = await client();
    await setup.query('CREATE TABLE IF NOT EXISTS vanished (i int)');
    await setup.end();
    const c = await client();
    const pid = await pidOf(c);
    await c.query('BEGIN');
    await c.query('INSERT INTO vanished VALUES (1)');
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    expect(await backendReset(pid)).toBe('DISCARD ALL');
    const next = await client();
    try {
      expect(await pidOf(next)).toBe(pid);
      expect((await next.query('SELECT count(*)::int AS n FROM vanished')).rows[0].n).toBe(0);
    } finally {
      await next.end();
    }
  });

  it('a client that vanishes while its query runs leaves no backend behind', async () => {
    const c = await client();
    const pid = await pidOf(c);
    void c.query('SELECT pg_catalog.pg_sleep(0.3)').catch(() => undefined);
    await sleep(50);
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    expect(await backendGone(pid)).toBe(true);
  });

  it('a backend terminated by the server ends its client with the server\'s 57P01', async () => {
    const c = await client();
    const pid = await pidOf(c);
    const ended = sessionEnd(c, 3000);
    await fx.admin.query('SELECT pg_catalog.pg_terminate_backend($1)', [pid]);
    const { error } = await ended;
    expect(error?.code).toBe('57P01');
    for (let i = 0; i < 40 && proxy.server.sessions().size > 0; i++) await sleep(50);
    expect(proxy.server.sessions().size).toBe(0);
  });
});
