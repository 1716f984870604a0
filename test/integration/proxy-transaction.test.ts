// Transaction pool mode against the real server: fan-in under a global cap, session-state leaks, named statements across backends, pgbench, and raw-protocol framing.
import { spawn } from 'node:child_process';
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  connectPg,
  errorFields,
  hasBinary,
  proxyFixture,
  run,
  sleep,
  startupMessage,
  titleNeeding,
  type BackendMessage,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'txn-password-1234';
let fx: ProxyFixture;
/** Transaction mode, one backend per pool: consecutive clients of a tenant share it. */
let single: TestProxy;
/** Transaction mode, two backends per pool: a client's transactions move between backends. */
let pair: TestProxy;

beforeAll(async () => {
  fx = await proxyFixture('role');
  single = await fx.startProxy({ poolMode: 'transaction', poolSize: 1, poolWaitTimeout: 20_000 });
  pair = await fx.startProxy({ poolMode: 'transaction', poolSize: 2, poolWaitTimeout: 20_000 });
});

afterAll(async () => {
  await fx?.close();
});

/** A tenant with an `items` table of three rows tagged with its id, owned by the tenant. */
async function newTenant(prefix: string): Promise<string> {
  const id = await fx.newTenant(prefix, PASSWORD);
  await fx.admin.query(
    `CREATE TABLE "${id}".items (id serial PRIMARY KEY, tenant text NOT NULL, n int NOT NULL DEFAULT 0);
     INSERT INTO "${id}".items (tenant, n) SELECT '${id}', g FROM generate_series(1, 3) g;
     ALTER TABLE "${id}".items OWNER TO "${id}";`,
  );
  return id;
}

const connect = (proxy: TestProxy, tenant: string, extra: Partial<pg.ClientConfig> = {}) =>
  connectPg({ ...proxy.clientConfig(tenant, PASSWORD), ...extra });

const pidOf = async (c: pg.Client): Promise<number> => (await c.query('SELECT pg_catalog.pg_backend_pid() AS pid')).rows[0].pid;
const show = async (c: pg.Client, name: string): Promise<string> => Object.values((await c.query(`SHOW ${name}`)).rows[0])[0] as string;

/** Polls until `fn` holds; returns whether it did within `ms`. */
async function eventually(fn: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    if (await fn()) return true;
    if (Date.now() > until) return false;
    await sleep(20);
  }
}

describe('500 clients of 50 tenants through 20 backends', () => {
  const TENANTS = 50;
  const PER_TENANT = 10;
  let proxy: TestProxy;
  let tenants: string[];

  beforeAll(async () => {
    proxy = await fx.startProxy({ poolMode: 'transaction', poolSize: 2, maxBackends: 20, poolWaitTimeout: 60_000 });
    tenants = [];
    for (let i = 0; i < TENANTS; i += 10) {
      tenants.push(...(await Promise.all(Array.from({ length: Math.min(10, TENANTS - i) }, () => newTenant('fan')))));
    }
  }, 120_000);

  it('every client sees only its own rows, no query fails, and the backends never exceed the cap', async () => {
    let maxPool = 0;
    let maxServer = 0;
    let sampling = true;
    const poolSampler = setInterval(() => (maxPool = Math.max(maxPool, proxy.server.pool.size)), 2);
    const serverSampler = (async () => {
      while (sampling) {
        const { rows } = await fx.admin.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1)',
          [tenants],
        );
        maxServer = Math.max(maxServer, rows[0]!.n);
        await sleep(5);
      }
    })();
    const clients: Array<{ tenant: string; c: pg.Client }> = [];
    try {
      // Logins wait for a backend too (the greeting needs its parameters): open them in batches.
      const plan = tenants.flatMap((tenant) => Array.from({ length: PER_TENANT }, () => tenant));
      for (let i = 0; i < plan.length; i += 50) {
        const batch = await Promise.all(
          plan.slice(i, i + 50).map(async (tenant) => ({ tenant, c: await connect(proxy, tenant, { connectionTimeoutMillis: 60_000 }) })),
        );
        clients.push(...batch);
      }
      expect(clients.length).toBe(TENANTS * PER_TENANT);
      expect(proxy.server.sessions().size).toBeGreaterThanOrEqual(TENANTS * PER_TENANT);

      const failures: string[] = [];
      await Promise.all(
        clients.map(async ({ tenant, c }, i) => {
          try {
            const who = await c.query('SELECT current_user AS u, current_schema() AS s');
            expect(who.rows).toEqual([{ u: tenant, s: tenant }]);
            const before = await c.query<{ tenant: string }>('SELECT DISTINCT tenant FROM items');
            expect(before.rows).toEqual([{ tenant }]);
            await c.query('BEGIN');
            const inserted = await c.query('INSERT INTO items (tenant, n) VALUES ($1, $2) RETURNING tenant, current_user AS u', [tenant, 1000 + i]);
            expect(inserted.rows).toEqual([{ tenant, u: tenant }]);
            await c.query('COMMIT');
            const after = await c.query<{ tenant: string; mine: number }>(
              'SELECT tenant, count(*) FILTER (WHERE n = $1)::int AS mine FROM items GROUP BY tenant',
              [1000 + i],
            );
            expect(after.rows).toEqual([{ tenant, mine: 1 }]);
          } catch (err) {
            failures.push(`${tenant}: ${(err as Error).message}`);
          }
        }),
      );
      expect(failures).toEqual([]);
    } finally {
      clearInterval(poolSampler);
      sampling = false;
      await serverSampler;
      await Promise.all(clients.map(({ c }) => c.end().catch(() => undefined)));
    }
    // The inserts committed, each in its own tenant's table.
    for (const tenant of tenants) {
      const { rows } = await fx.admin.query(`SELECT tenant, count(*)::int AS n FROM "${tenant}".items GROUP BY tenant`);
      expect(rows).toEqual([{ tenant, n: 3 + PER_TENANT }]);
    }
    expect(maxPool).toBeGreaterThan(0);
    expect(maxPool).toBeLessThanOrEqual(20);
    expect(maxServer).toBeLessThanOrEqual(20);
  }, 90_000);
});

describe('session state does not leak between clients of one backend', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('leak');
  });

  it("a client's SET search_path and statement_timeout are gone for the next client", async () => {
    const a = await connect(single, tenant);
    const b = await connect(single, tenant);
    try {
      const pid = await pidOf(a);
      await a.query('SET search_path TO public');
      await a.query("SET statement_timeout = '1s'");
      // The same backend (the pool has one), reset in between.
      expect(await pidOf(b)).toBe(pid);
      expect((await b.query('SELECT current_schema() AS s')).rows).toEqual([{ s: tenant }]);
      expect(await show(b, 'statement_timeout')).toBe('0');
      expect((await b.query('SELECT count(*)::int AS n FROM items')).rows).toEqual([{ n: 3 }]);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  it('a setting the server reports (ParameterStatus) is reset too', async () => {
    const a = await connect(single, tenant);
    const b = await connect(single, tenant);
    try {
      await a.query("SELECT pg_catalog.set_config('application_name', 'from-a', false)");
      expect(await show(b, 'application_name')).toBe('');
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
  // CREATE TABLE's tag marks the backend for DISCARD ALL. (CREATE TEMP TABLE ... AS reports "SELECT n", which
  // cannot be told from a query: that form is a documented limit.)
  it("a client's temporary table does not shadow the next client's table of the same name", async () => {
    const a = await connect(single, tenant);
    const b = await connect(single, tenant);
    try {
      const pid = await pidOf(a);
      // One transaction: the creator itself loses the table at its next one.
      await a.query("BEGIN; CREATE TEMP TABLE items (tenant text); INSERT INTO items VALUES ('shadow'); COMMIT");
      expect(await pidOf(b)).toBe(pid);
      expect((await b.query('SELECT DISTINCT tenant FROM items')).rows).toEqual([{ tenant }]);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  it('a cursor WITH HOLD gets a warning and does not reach the next client', async () => {
    const a = await connect(single, tenant);
    const notices: Array<{ message: string; code?: string }> = [];
    a.on('notice', (n) => notices.push(n as never));
    const b = await connect(single, tenant);
    try {
      await a.query('DECLARE held CURSOR WITH HOLD FOR SELECT 1');
      expect(await eventually(() => notices.length > 0)).toBe(true);
      expect(notices[0]!.message).toMatch(/WITH HOLD/);
      expect((await b.query('SELECT name FROM pg_catalog.pg_cursors')).rows).toEqual([]);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
});

describe('named prepared statements across backends', () => {
  let tenants: string[];
  beforeAll(async () => {
    tenants = await Promise.all([newTenant('ps'), newTenant('ps'), newTenant('ps')]);
  });

  it('postgres.js (named statements) with max 10 over 3 tenants: 200 parameterised queries, all correct', async () => {
    const sqls = tenants.map((t) => postgres(pair.url(t, PASSWORD), { max: 10, ssl: false, connect_timeout: 20, onnotice: () => undefined }));
    try {
      const results = await Promise.all(
        Array.from({ length: 200 }, async (_, i) => {
          const k = i % 3;
          const sql = sqls[k]!;
          // Several texts, so each connection's statement names stand for different statements.
          switch (i % 4) {
            case 0:
              return { i, k, rows: [...(await sql`SELECT ${i}::int AS v, current_user AS u`)] };
            case 1:
              return { i, k, rows: [...(await sql`SELECT ${String(i)}::text || '-' || current_user AS v, current_user AS u`)] };
            case 2:
              return { i, k, rows: [...(await sql`SELECT (${i}::int * 2) AS v, current_user AS u FROM items WHERE n = ${1}`)] };
            default:
              return { i, k, rows: [...(await sql.begin((tx) => tx`SELECT ${i}::bigint + count(*) AS v, current_user AS u FROM items`))] };
          }
        }),
      );
      for (const { i, k, rows } of results) {
        const tenant = tenants[k]!;
        const v = [i, `${i}-${tenant}`, i * 2, String(i + 3)][i % 4];
        expect(rows, `query ${i}`).toEqual([{ v, u: tenant }]);
      }
    } finally {
      await Promise.all(sqls.map((s) => s.end({ timeout: 5 })));
    }
  });

  it('pg named queries (the same name for different texts) reused across transactions by clients sharing two backends', async () => {
    const tenant = tenants[0]!;
    const texts = [
      'SELECT $1::int * 2 AS r, current_user AS u',
      'SELECT $1::int + 1000 AS r, current_user AS u',
      "SELECT ($1::int)::text || 'x' AS r, current_user AS u",
      'SELECT $1::int - (SELECT count(*)::int FROM items) AS r, current_user AS u',
    ];
    const expected = (k: number, v: number) => [v * 2, v + 1000, `${v}x`, v - 3][k];
    const clients = await Promise.all(texts.map(() => connect(pair, tenant)));
    const pids = new Set<number>();
    try {
      await Promise.all(
        clients.map(async (c, k) => {
          for (let v = 0; v < 25; v++) {
            const inTx = v % 3 === 0;
            if (inTx) await c.query('BEGIN');
            const { rows } = await c.query({ name: 'q1', text: texts[k]!, values: [v] });
            expect(rows).toEqual([{ r: expected(k, v), u: tenant }]);
            if (inTx) {
              pids.add(await pidOf(c));
              await c.query('COMMIT');
            }
          }
        }),
      );
      // Both backends served the statements, so some were prepared again on a backend that lacked them.
      expect(pids.size).toBe(2);
      const c = clients[0]!;
      await c.query('BEGIN');
      await c.query({ name: 'q1', text: texts[0]!, values: [1] });
      const { rows } = await c.query<{ name: string }>('SELECT name FROM pg_catalog.pg_prepared_statements');
      await c.query('COMMIT');
      expect(rows.length).toBeGreaterThan(0);
      for (const { name } of rows) expect(name).toMatch(/^pgtenant_[0-9a-f]+$/);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });
});

describe.runIf(hasBinary('psql'))(titleNeeding('COPY through a transaction-mode proxy', 'psql'), () => {
  // The copy's data messages follow the Query that started it: the backend stays linked until its ReadyForQuery.
  it('COPY FROM STDIN and COPY TO STDOUT round-trip 20,000 rows, and a failed COPY leaves the backend usable', async () => {
    const tenant = await newTenant('copy');
    const url = single.url(tenant, PASSWORD);
    const psql = (args: string[], input?: string) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url, ...args]);
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.once('close', (code) => resolve({ code, stdout, stderr }));
        child.stdin.end(input ?? '');
      });
    const lines = Array.from({ length: 20_000 }, (_, i) => `${i}\trow ${i}`).join('\n') + '\n';
    expect((await psql(['-c', 'CREATE TABLE copied (i int, t text)'])).code).toBe(0);
    const into = await psql(['-c', '\\copy copied FROM STDIN'], lines);
    expect(into.code, into.stderr).toBe(0);
    const out = await psql(['-c', '\\copy copied TO STDOUT']);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toBe(lines);
    const bad = await psql(['-c', '\\copy copied FROM STDIN'], 'not-a-number\tx\n');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/invalid input syntax/);
    const count = await psql(['-A', '-t', '-c', 'SELECT count(*) FROM copied']);
    expect(count.stdout.trim()).toBe('20000');
  });
});

describe.runIf(hasBinary('pgbench'))(titleNeeding('pgbench through a transaction-mode proxy', 'pgbench'), () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('bench');
  });

  const pgbench = (args: string[], timeoutMs = 60_000) =>
    run(
      'pgbench',
      ['-h', '127.0.0.1', '-p', String(pair.port), '-U', tenant, ...args, fx.db.name],
      { PGPASSWORD: PASSWORD, PGSSLMODE: 'disable' },
      timeoutMs,
    );

  function expectCleanRun(r: { code: number; stdout: string; stderr: string }): void {
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/tps = \d+/);
    expect(r.stdout).toMatch(/number of failed transactions: 0 /);
    expect(r.stdout).toMatch(/number of transactions actually processed: [1-9]/);
  }

  it('pgbench -i -s 1 initialises through transaction mode', async () => {
    const r = await pgbench(['-i', '-s', '1', '-q'], 120_000);
    expect(r.code, r.stderr).toBe(0);
    const { rows } = await fx.admin.query(`SELECT count(*)::int AS n FROM "${tenant}".pgbench_accounts`);
    expect(rows[0].n).toBe(100_000);
  });

  it('pgbench -S -M prepared -c 8 -j 8 -T 3 over two backends', async () => {
    expectCleanRun(await pgbench(['-n', '-S', '-M', 'prepared', '-c', '8', '-j', '8', '-T', '3']));
  });

  it('pgbench -S -M extended -c 8 -j 8 -T 3 over two backends', async () => {
    expectCleanRun(await pgbench(['-n', '-S', '-M', 'extended', '-c', '8', '-j', '8', '-T', '3']));
  });
});

describe('a client that leaves mid-transaction', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('gone');
  });

  it('its transaction is rolled back at once and the pool keeps serving', async () => {
    const a = await connect(pair, tenant);
    await a.query('BEGIN');
    await a.query('UPDATE items SET n = n + 100 WHERE id = 1');
    (a as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
    const b = await connect(pair, tenant);
    try {
      await b.query('BEGIN');
      await b.query("SET LOCAL lock_timeout = '2s'");
      const { rows } = await b.query('UPDATE items SET n = n + 1 WHERE id = 1 RETURNING n');
      await b.query('COMMIT');
      // A's +100 never landed.
      expect(rows).toEqual([{ n: 2 }]);
      const again = await Promise.all(
        Array.from({ length: 6 }, async () => {
          const c = await connect(pair, tenant);
          try {
            return (await c.query('SELECT n FROM items WHERE id = 1')).rows[0].n;
          } finally {
            await c.end();
          }
        }),
      );
      expect(again).toEqual([2, 2, 2, 2, 2, 2]);
    } finally {
      await b.end();
    }
  });
});

describe('backends going away and cancels', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('kill');
  });

  it('a backend killed while idle in the pool is replaced without the client noticing', async () => {
    const c = await connect(single, tenant);
    try {
      const pid = await pidOf(c);
      await fx.admin.query('SELECT pg_catalog.pg_terminate_backend($1)', [pid]);
      const gone = async () => (await fx.admin.query('SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid])).rowCount === 0;
      expect(await eventually(gone)).toBe(true);
      const next = await pidOf(c);
      expect(next).not.toBe(pid);
      expect((await c.query('SELECT count(*)::int AS n FROM items')).rows).toEqual([{ n: 3 }]);
    } finally {
      await c.end();
    }
  });

  it('a cancel reaches the backend running the transaction, and the client goes on', async () => {
    const sql = postgres(pair.url(tenant, PASSWORD), { max: 1, ssl: false, connect_timeout: 10, onnotice: () => undefined });
    try {
      const q = sql`SELECT pg_catalog.pg_sleep(10)`;
      const started = Date.now();
      const outcome = q.then(
        () => null,
        (err: { code?: string }) => err.code,
      );
      // Wait until the sleep runs on a backend, so the cancel has one to reach.
      const running = async () =>
        ((await fx.admin.query("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND query LIKE '%pg_sleep(10)%' AND state = 'active'", [tenant])).rowCount ?? 0) > 0;
      expect(await eventually(running)).toBe(true);
      await q.cancel();
      expect(await outcome).toBe('57014');
      expect(Date.now() - started).toBeLessThan(9000);
      expect([...(await sql`SELECT 1 AS x`)]).toEqual([{ x: 1 }]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
});

describe('what transaction mode cannot carry', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('lsn');
  });

  it('LISTEN gets a warning naming LISTEN, and the next client of that backend is not listening', async () => {
    const a = await connect(single, tenant);
    const notices: Array<{ message: string; code?: string; severity?: string }> = [];
    a.on('notice', (n) => notices.push(n as never));
    const b = await connect(single, tenant);
    try {
      const pid = await pidOf(a);
      await a.query('LISTEN some_channel');
      expect(await eventually(() => notices.length > 0)).toBe(true);
      expect(notices[0]!.message).toMatch(/LISTEN/);
      expect(notices[0]!.code).toBe('0A000');
      expect(await pidOf(b)).toBe(pid);
      expect((await b.query('SELECT array_length(array_agg(c), 1) AS n FROM pg_catalog.pg_listening_channels() c')).rows).toEqual([{ n: null }]);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  it('SQL PREPARE gets a warning, and its statement does not reach the next client', async () => {
    const a = await connect(single, tenant);
    const notices: Array<{ message: string; code?: string }> = [];
    a.on('notice', (n) => notices.push(n as never));
    const b = await connect(single, tenant);
    try {
      await a.query('PREPARE mine AS SELECT 1');
      expect(await eventually(() => notices.length > 0)).toBe(true);
      expect(notices[0]!.message).toMatch(/PREPARE/);
      const { rows } = await b.query("SELECT count(*)::int AS n FROM pg_catalog.pg_prepared_statements WHERE name = 'mine'");
      expect(rows).toEqual([{ n: 0 }]);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
});

describe('a migration under a cached plan', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('plan');
  });

  it('"cached plan must not change result type" fails at most once, then the statement is prepared afresh', async () => {
    const c = await connect(single, tenant);
    try {
      const q = { name: 'everything', text: 'SELECT * FROM items ORDER BY id' };
      const first = await c.query(q);
      expect(first.fields.map((f) => f.name)).toEqual(['id', 'tenant', 'n']);
      await fx.admin.query(`ALTER TABLE "${tenant}".items ADD COLUMN extra int`);
      const failures: string[] = [];
      let result: pg.QueryResult | null = null;
      for (let i = 0; i < 3 && !result; i++) {
        try {
          result = await c.query(q);
        } catch (err) {
          failures.push(`${(err as { code?: string }).code}: ${(err as Error).message}`);
        }
      }
      expect(failures.length, failures.join('\n')).toBeLessThanOrEqual(1);
      for (const f of failures) expect(f).toMatch(/^0A000/);
      expect(result!.fields.map((f) => f.name)).toEqual(['id', 'tenant', 'n', 'extra']);
      expect(result!.rows).toHaveLength(3);
      // And it keeps working.
      expect((await c.query(q)).fields.map((f) => f.name)).toContain('extra');
    } finally {
      await c.end();
    }
  });
});

describe('a migration under cached plans on two backends', () => {
  it('the tenant sees the error once: the other backend prepares afresh before its next use', async () => {
    const tenant = await newTenant('plans');
    const [c1, c2] = [await connect(pair, tenant), await connect(pair, tenant)];
    const q = { name: 'all', text: 'SELECT * FROM items ORDER BY id' };
    try {
      // Both inside a transaction at once: each holds one of the pool's two backends, and prepares there.
      await Promise.all([c1.query('BEGIN'), c2.query('BEGIN')]);
      const pids = new Set([await pidOf(c1), await pidOf(c2)]);
      expect(pids.size).toBe(2);
      await Promise.all([c1.query(q), c2.query(q)]);
      await Promise.all([c1.query('COMMIT'), c2.query('COMMIT')]);
      await fx.admin.query(`ALTER TABLE "${tenant}".items ADD COLUMN extra int`);
      const failures: string[] = [];
      for (let round = 0; round < 3; round++) {
        await Promise.all([c1.query('BEGIN'), c2.query('BEGIN')]);
        for (const c of [c1, c2]) {
          try {
            expect((await c.query(q)).fields.map((f) => f.name)).toContain('extra');
            await c.query('COMMIT');
          } catch (err) {
            failures.push(`${(err as { code?: string }).code}: ${(err as Error).message}`);
            await c.query('ROLLBACK');
          }
        }
      }
      expect(failures.length, failures.join('\n')).toBe(1);
      expect(failures[0]).toMatch(/^0A000/);
    } finally {
      await Promise.all([c1.end(), c2.end()]);
    }
  });
});

describe('startup settings in every transaction', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('set');
  });

  it('application_name and options -c are applied for each transaction, per client, on a shared backend', async () => {
    const a = await connect(single, tenant, { application_name: 'a', options: '-c statement_timeout=4321' });
    const b = await connect(single, tenant, { application_name: 'b' });
    try {
      const pids = new Set<number>();
      for (let round = 0; round < 4; round++) {
        expect(await show(a, 'application_name')).toBe('a');
        expect(await show(a, 'statement_timeout')).toBe('4321ms');
        await a.query('BEGIN');
        expect(await show(a, 'application_name')).toBe('a');
        expect(await show(a, 'statement_timeout')).toBe('4321ms');
        pids.add(await pidOf(a));
        await a.query('COMMIT');
        expect(await show(b, 'application_name')).toBe('b');
        pids.add(await pidOf(b));
      }
      expect(pids.size).toBe(1);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  it("one client's statement_timeout (options -c) does not reach the next client of the backend", async () => {
    const a = await connect(single, tenant, { application_name: 'a', options: '-c statement_timeout=4321' });
    const b = await connect(single, tenant, { application_name: 'b' });
    try {
      expect(await show(a, 'statement_timeout')).toBe('4321ms');
      expect(await show(b, 'statement_timeout')).toBe('0');
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  it("one client's TimeZone, DateStyle and work_mem do not reach the next client of the backend", async () => {
    const defaults = (await fx.admin.query("SELECT current_setting('TimeZone') AS tz, current_setting('DateStyle') AS ds, current_setting('work_mem') AS wm")).rows[0];
    const a = await connect(single, tenant, { options: '-c TimeZone=Asia/Tokyo -c DateStyle=SQL,DMY -c work_mem=12MB' });
    const b = await connect(single, tenant);
    try {
      expect(await show(a, 'TimeZone')).toBe('Asia/Tokyo');
      expect(await pidOf(b)).toBe(await pidOf(a));
      expect({ tz: await show(b, 'TimeZone'), ds: await show(b, 'DateStyle'), wm: await show(b, 'work_mem') }).toEqual(defaults);
      expect((await b.query("SELECT '2024-01-02'::date::text AS d")).rows).toEqual([{ d: '2024-01-02' }]);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
});

// ---- raw protocol ----

const int16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
};
const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const cstr = (s: string) => Buffer.from(`${s}\0`, 'utf8');
const frame = (type: string, ...parts: Buffer[]) => {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from(type, 'latin1'), int32(4 + body.length), body]);
};
const Parse = (name: string, text: string, types: number[] = []) => frame('P', cstr(name), cstr(text), int16(types.length), ...types.map(int32));
const Bind = (stmt: string, params: Array<string | null>, portal = '') =>
  frame(
    'B',
    cstr(portal),
    cstr(stmt),
    int16(0),
    int16(params.length),
    ...params.map((p) => (p === null ? int32(-1) : Buffer.concat([int32(Buffer.byteLength(p)), Buffer.from(p)]))),
    int16(0),
  );
const Describe = (kind: 'S' | 'P', name: string) => frame('D', Buffer.from(kind), cstr(name));
const Close = (kind: 'S' | 'P', name: string) => frame('C', Buffer.from(kind), cstr(name));
const Execute = (portal = '') => frame('E', cstr(portal), int32(0));
const Sync = () => frame('S');
const Flush = () => frame('H');
const Query = (text: string) => frame('Q', cstr(text));
const Terminate = () => frame('X');

/** A socket logged in through the proxy by SCRAM-SHA-256 (RFC 5802, computed here), reading typed messages. */
class RawClient {
  private buffered = Buffer.alloc(0);
  private closedFlag = false;
  private wake: (() => void) | null = null;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, d]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closedFlag = true;
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  static async login(proxy: TestProxy, user: string, password: string): Promise<RawClient> {
    const socket = net.connect({ host: '127.0.0.1', port: proxy.port });
    await once(socket, 'connect');
    const c = new RawClient(socket);
    socket.write(startupMessage({ user, database: fx.db.name }));
    const sasl = await c.next();
    expect(sasl.type).toBe('R');
    expect(sasl.body.readInt32BE(0)).toBe(10);
    const bare = `n=,r=${randomBytes(18).toString('base64')}`;
    const first = Buffer.from(`n,,${bare}`);
    socket.write(frame('p', cstr('SCRAM-SHA-256'), int32(first.length), first));
    const cont = await c.next();
    expect(cont.body.readInt32BE(0)).toBe(11);
    const serverFirst = cont.body.subarray(4).toString('utf8');
    const attrs = Object.fromEntries(serverFirst.split(',').map((p) => [p[0], p.slice(2)]));
    const salted = pbkdf2Sync(password, Buffer.from(attrs.s!, 'base64'), Number(attrs.i), 32, 'sha256');
    const clientKey = createHmac('sha256', salted).update('Client Key').digest();
    const withoutProof = `c=biws,r=${attrs.r}`;
    const signature = createHmac('sha256', createHash('sha256').update(clientKey).digest())
      .update(`${bare},${serverFirst},${withoutProof}`)
      .digest();
    const proof = Buffer.from(clientKey.map((x, i) => x ^ signature[i]!));
    socket.write(frame('p', Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));
    const final = await c.next();
    expect(final.type, final.type === 'E' ? JSON.stringify(errorFields(final.body)) : '').toBe('R');
    expect(final.body.readInt32BE(0)).toBe(12);
    await c.untilReady();
    return c;
  }

  /** Writes bytes as they come, or cut at the given offsets with a pause between pieces. */
  async send(bytes: Buffer, cuts: number[] = []): Promise<void> {
    let at = 0;
    for (const cut of [...cuts, bytes.length]) {
      if (cut <= at) continue;
      this.socket.write(bytes.subarray(at, cut));
      at = cut;
      if (cut < bytes.length) await sleep(2);
    }
  }

  async next(ms = 10_000): Promise<BackendMessage> {
    const until = Date.now() + ms;
    for (;;) {
      // Only the first message is cut off: parsing the whole buffer each time would be quadratic on big results.
      if (this.buffered.length >= 5) {
        const length = this.buffered.readInt32BE(1);
        if (this.buffered.length >= 1 + length) {
          const m = { type: String.fromCharCode(this.buffered[0]!), body: this.buffered.subarray(5, 1 + length) };
          this.buffered = this.buffered.subarray(1 + length);
          return m;
        }
      }
      if (this.closedFlag) throw new Error('the proxy closed the connection');
      const left = until - Date.now();
      if (left <= 0) throw new Error(`no message within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          this.wake = null;
          resolve();
        };
      });
    }
  }

  /** Messages up to and including the `count`th ReadyForQuery; notices are kept in the list. */
  async untilReady(count = 1): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    let seen = 0;
    while (seen < count) {
      const m = await this.next();
      out.push(m);
      if (m.type === 'Z') seen++;
    }
    return out;
  }

  close(): void {
    this.socket.destroy();
  }
}

const types = (ms: BackendMessage[]) => ms.map((m) => m.type).join('');
/** The text columns of DataRow messages. */
const dataRows = (ms: BackendMessage[]) =>
  ms
    .filter((m) => m.type === 'D')
    .map((m) => {
      const cols: Array<string | null> = [];
      let i = 2;
      for (let k = 0; k < m.body.readInt16BE(0); k++) {
        const len = m.body.readInt32BE(i);
        i += 4;
        cols.push(len < 0 ? null : m.body.toString('utf8', i, i + len));
        if (len > 0) i += len;
      }
      return cols;
    });
const errorsOf = (ms: BackendMessage[]) => ms.filter((m) => m.type === 'E').map((m) => errorFields(m.body));

describe('large messages', () => {
  it('a named statement bound with a 4 MB parameter streams through, and so does an unnamed one', async () => {
    const tenant = await newTenant('big');
    const c = await connect(pair, tenant);
    try {
      const big = 'x'.repeat(4 * 1024 * 1024);
      const named = await c.query({ name: 'len', text: 'SELECT length($1::text) AS n', values: [big] });
      expect(named.rows).toEqual([{ n: big.length }]);
      const again = await c.query({ name: 'len', text: 'SELECT length($1::text) AS n', values: [big + 'y'] });
      expect(again.rows).toEqual([{ n: big.length + 1 }]);
      const unnamed = await c.query('SELECT length($1::text) AS n', [big]);
      expect(unnamed.rows).toEqual([{ n: big.length }]);
    } finally {
      await c.end();
    }
  });
});

describe('the extended protocol on raw sockets', () => {
  let tenant: string;
  beforeAll(async () => {
    tenant = await newTenant('raw');
  });

  it('a named Parse/Bind/Describe/Execute pipeline cut at every byte offset gets exactly its own answers', async () => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    try {
      for (let cut = 1; cut < 200; cut++) {
        const v = String(cut);
        const bytes = Buffer.concat([Parse('s1', 'SELECT $1::int + 1 AS r', [23]), Bind('s1', [v]), Describe('S', 's1'), Execute(), Sync()]);
        if (cut >= bytes.length) break;
        await c.send(bytes, [cut]);
        const reply = await c.untilReady();
        expect(types(reply), `cut at ${cut}`).toBe('12tTDCZ');
        expect(dataRows(reply)).toEqual([[String(cut + 1)]]);
      }
    } finally {
      c.close();
    }
  });

  it('a pipeline trickled one byte at a time, with several syncs, gets every answer in order', async () => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    try {
      const bytes = Buffer.concat([
        Parse('a', 'SELECT $1::text AS t'),
        Sync(),
        Bind('a', ['one']),
        Execute(),
        Sync(),
        Parse('', 'SELECT 42'),
        Bind('', []),
        Execute(),
        Bind('a', ['two']),
        Execute(),
        Sync(),
      ]);
      await c.send(bytes, Array.from({ length: bytes.length }, (_, i) => i));
      const reply = await c.untilReady(3);
      expect(types(reply)).toBe('1Z2DCZ12DC2DCZ');
      expect(dataRows(reply)).toEqual([['one'], ['42'], ['two']]);
    } finally {
      c.close();
    }
  });

  it('a statement used on a backend that lacks it is prepared there with no extra answers for the client', async () => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    const holder = await connect(pair, tenant);
    try {
      await c.send(Buffer.concat([Parse('s', 'SELECT $1::int * 10 AS r, pg_catalog.pg_backend_pid() AS pid'), Bind('s', ['1']), Execute(), Sync()]));
      const first = await c.untilReady();
      expect(types(first)).toBe('12DCZ');
      const firstPid = dataRows(first)[0]![1];
      // The most recently used backend goes to the holder, so the raw client's next transaction gets the other one.
      await holder.query('BEGIN');
      const held = String(await pidOf(holder));
      expect(held).toBe(firstPid);
      await c.send(Buffer.concat([Bind('s', ['2']), Describe('P', ''), Execute(), Sync()]));
      const second = await c.untilReady();
      expect(types(second)).toBe('2TDCZ');
      expect(dataRows(second)[0]![0]).toBe('20');
      expect(dataRows(second)[0]![1]).not.toBe(firstPid);
      // Describe of the statement on a backend that lacks it: ParameterDescription and RowDescription only.
      await holder.query('COMMIT');
      await holder.query('BEGIN');
      await c.send(Buffer.concat([Describe('S', 's'), Sync()]));
      expect(types(await c.untilReady())).toBe('tTZ');
      await holder.query('COMMIT');
    } finally {
      c.close();
      await holder.end();
    }
  });

  it('errors in a batch with the proxy\'s own Close and Parse in it leave the answers in step', async () => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    const holder = await connect(pair, tenant);
    try {
      const pidQuery = Query('SELECT pg_catalog.pg_backend_pid()');
      await c.send(Buffer.concat([Parse('e', 'SELECT $1::int AS r'), Sync(), pidQuery]));
      const prepared = await c.untilReady(2);
      expect(types(prepared)).toBe('1ZTDCZ');
      await holder.query('BEGIN');
      expect(String(await pidOf(holder))).toBe(dataRows(prepared)[0]![0]);
      // Wrong parameter count for the Bind after the injected Close and Parse: the error is the client's only answer.
      await c.send(Buffer.concat([Bind('e', []), Execute(), Bind('e', ['5']), Execute(), Sync(), Bind('e', ['6']), Execute(), Sync(), pidQuery]));
      const reply = await c.untilReady(3);
      expect(types(reply)).toBe('EZ2DCZTDCZ');
      expect(errorsOf(reply)[0]!.C).toBe('08P01');
      expect(dataRows(reply)[0]).toEqual(['6']);
      expect(dataRows(reply)[1]).not.toEqual(dataRows(prepared)[0]);
      await holder.query('COMMIT');
      // A statement whose table went away: the injected Parse fails, and the client hears one error for it.
      await fx.admin.query(`CREATE TABLE "${tenant}".gone (x int); ALTER TABLE "${tenant}".gone OWNER TO "${tenant}"; INSERT INTO "${tenant}".gone VALUES (7)`);
      await c.send(Buffer.concat([Parse('g', 'SELECT x FROM gone'), Bind('g', []), Execute(), Sync(), pidQuery]));
      const made = await c.untilReady(2);
      expect(dataRows(made)[0]).toEqual(['7']);
      await fx.admin.query(`DROP TABLE "${tenant}".gone`);
      await holder.query('BEGIN');
      expect(String(await pidOf(holder))).toBe(dataRows(made)[1]![0]);
      await c.send(Buffer.concat([Bind('g', []), Execute(), Sync(), pidQuery]));
      const after = await c.untilReady(2);
      expect(types(after)).toBe('EZTDCZ');
      expect(errorsOf(after)[0]!.C).toBe('42P01');
      expect(dataRows(after)[0]).not.toEqual(dataRows(made)[1]);
      await holder.query('COMMIT');
    } finally {
      c.close();
      await holder.end();
    }
  });

  it('Close of a statement, Flush and portals behave as on a plain server', async () => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    try {
      // Flush: the ParseComplete comes before any Sync, and the backend stays linked while owed.
      await c.send(Buffer.concat([Parse('f', 'SELECT generate_series(1, $1::int) AS g'), Flush()]));
      expect((await c.next()).type).toBe('1');
      await c.send(Buffer.concat([Bind('f', ['5'], 'portal1'), frame('E', cstr('portal1'), int32(2)), Flush()]));
      const partial: BackendMessage[] = [];
      while (partial.length < 4) partial.push(await c.next());
      expect(types(partial)).toBe('2DDs');
      await c.send(Buffer.concat([frame('E', cstr('portal1'), int32(0)), Close('P', 'portal1'), Sync()]));
      const rest = await c.untilReady();
      expect(types(rest)).toBe('DDDC3Z');
      // Closing the statement: the name is gone for this client, as on a plain server.
      await c.send(Buffer.concat([Close('S', 'f'), Bind('f', ['1']), Execute(), Sync()]));
      const closed = await c.untilReady();
      expect(types(closed)).toBe('3EZ');
      expect(errorsOf(closed)[0]!.C).toBe('26000');
    } finally {
      c.close();
    }
  });

  it('Terminate inside a chunk: nothing after it runs, and the connection is closed as PostgreSQL closes it', async () => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    try {
      await c.send(Buffer.concat([Query('SELECT 1'), Terminate(), Query("SELECT pg_sleep(5) AS after_terminate")]));
      expect(types(await c.untilReady())).toBe('TDCZ');
      await sleep(200);
      const { rows } = await fx.admin.query("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE query LIKE '%after_terminate%' AND usename = $1", [tenant]);
      expect(rows).toEqual([]);
      expect(await eventually(() => c.closed, 2000)).toBe(true);
    } finally {
      c.close();
    }
  });

  it('large results with named statements arrive whole, whatever the chunking', async () => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    try {
      const text = "SELECT i, repeat('z', i % 97) AS pad FROM generate_series(1, $1::int) i";
      const bytes = Buffer.concat(Array.from({ length: 5 }, (_, k) => [Parse(`big${k}`, text), Bind(`big${k}`, ['10000']), Execute(), Sync()]).flat());
      await c.send(bytes, [3, 17, 40]);
      const reply = await c.untilReady(5);
      expect(types(reply).replace(/D+/g, 'D')).toBe('12DCZ'.repeat(5));
      const rows = dataRows(reply);
      expect(rows.length).toBe(50_000);
      expect(rows.every(([i, pad]) => pad!.length === Number(i) % 97)).toBe(true);
    } finally {
      c.close();
    }
  });

  /** The start of a message whose length field promises `length` bytes (type byte excluded), without the rest. */
  const promised = (type: string, length: number, body: Buffer) => Buffer.concat([Buffer.from(type), int32(length), body]);
  const malformed: Array<{ name: string; linked: boolean; bytes: () => Buffer; code?: string }> = [
    { name: 'a Parse whose name has no terminator, as the first message of a transaction', linked: false, bytes: () => frame('P', Buffer.from('abcd')) },
    { name: 'a Bind without its statement name, inside a transaction', linked: true, bytes: () => frame('B', cstr('')) },
    { name: 'a Describe with no body, inside a transaction', linked: true, bytes: () => frame('D') },
    // Only the names are gathered from a message that spans chunks, up to 64 KiB: one that never ends its name is cut off there.
    { name: 'a Bind promising 1 MB whose portal name runs past 64 KiB', linked: true, bytes: () => promised('B', 1_000_000, Buffer.alloc(70_000, 0x61)) },
    // A named Parse is kept whole for other backends: one promising 100 MB is refused, not buffered.
    { name: 'a named Parse promising 100 MB', linked: false, bytes: () => promised('P', 100_000_000, Buffer.concat([cstr('huge'), Buffer.from('SELECT ')])), code: '54000' },
  ];

  it.each(malformed)('$name: an error for that client, and the proxy keeps serving', async ({ linked, bytes, code = '08P01' }) => {
    const c = await RawClient.login(pair, tenant, PASSWORD);
    const replies: BackendMessage[] = [];
    try {
      if (linked) {
        await c.send(Query('BEGIN'));
        await c.untilReady();
      }
      await c.send(bytes());
      for (;;) {
        try {
          replies.push(await c.next(1500));
        } catch {
          break;
        }
      }
      // As PostgreSQL does: a FATAL 08P01 (or at least a close), never silence on an open connection.
      expect(c.closed).toBe(true);
      for (const e of errorsOf(replies)) expect(e.C).toBe(code);
    } finally {
      c.close();
    }
    const d = await connect(pair, tenant);
    try {
      expect((await d.query('SELECT 1 AS x')).rows).toEqual([{ x: 1 }]);
    } finally {
      await d.end();
    }
  });
});


