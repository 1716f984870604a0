// Session-mode backend pooling against a real server: reuse and reset, startup settings, pool and global caps with fairness, idle/lifetime reaping, dead backends, minIdle, mid-transaction disconnects.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectPg, proxyFixture, rejection, sleep, type ProxyFixture, type TestProxy } from '../support/proxy.js';

const PASSWORD = 'pool-password-123';
let fx: ProxyFixture;

beforeAll(async () => {
  fx = await proxyFixture('role');
});

afterAll(async () => {
  await fx?.close();
});

const newTenant = (prefix: string): Promise<string> => fx.newTenant(prefix, PASSWORD);

/** Runs fn against a proxy of its own, stopped afterwards so its backends do not linger into the next test. */
async function withProxy(flags: Record<string, unknown>, fn: (p: TestProxy) => Promise<void>): Promise<void> {
  const p = await fx.startProxy(flags);
  try {
    await fn(p);
  } finally {
    await p.server.close(0);
  }
}

const connect = (p: TestProxy, tenant: string, extra: Partial<pg.ClientConfig> = {}) =>
  connectPg({ ...p.clientConfig(tenant, PASSWORD), ...extra });

const pidOf = async (c: pg.Client): Promise<number> => (await c.query('SELECT pg_catalog.pg_backend_pid() AS pid')).rows[0].pid;

/** Polls `cond` every 25 ms for up to `ms`; true once it held. */
async function until(cond: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > deadline) return false;
    await sleep(25);
  }
}

const counts = (p: TestProxy, tenant: string) => p.server.pool.counts().get(tenant) ?? { login: 0, active: 0, idle: 0 };

/** Waits until the tenant's pool holds `n` idle backends (a released backend is reset before it is idle). */
const idleReaches = (p: TestProxy, tenant: string, n: number) => until(() => counts(p, tenant).idle === n);

const backendGone = (pid: number) =>
  until(async () => (await fx.admin.query('SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid])).rowCount === 0, 5000);

const usenameOf = async (pid: number): Promise<string | null> =>
  (await fx.admin.query('SELECT usename FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid])).rows[0]?.usename ?? null;

const backendsOf = async (role: string): Promise<number> =>
  (await fx.admin.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = $1', [role])).rows[0]!.n;

/**
 * A connect that may have to wait for a backend. `authenticated` resolves on AuthenticationOk: the proxy sends
 * it right before it asks the pool, so from then on the client is queued (or served).
 */
function queued(p: TestProxy, tenant: string) {
  const client = new pg.Client({ ...p.clientConfig(tenant, PASSWORD), connectionTimeoutMillis: 20_000 });
  client.on('error', () => undefined);
  const connection = (client as unknown as { connection: NodeJS.EventEmitter }).connection;
  const authenticated = new Promise<void>((resolve) => connection.once('authenticationOk', () => resolve()));
  const connected = client.connect().then(() => client);
  connected.catch(() => undefined);
  return { client, authenticated, connected };
}

/** True when the promise has not settled within `ms` (used only to show a client is still waiting). */
const stillPending = async (p: Promise<unknown>, ms = 300): Promise<boolean> =>
  Promise.race([p.then(() => false, () => false), sleep(ms).then(() => true)]);

/** Records the largest pool size seen until stopped. */
function watchPoolSize(p: TestProxy): { stop(): number } {
  let max = p.server.pool.size;
  const timer = setInterval(() => (max = Math.max(max, p.server.pool.size)), 2);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(max, p.server.pool.size);
    },
  };
}

describe('reuse', () => {
  it('the next client of a tenant gets the same backend, with nothing left from the first (DISCARD ALL)', async () => {
    const tenant = await newTenant('reuse');
    await withProxy({}, async (p) => {
      const first = await connect(p, tenant);
      const pid = await pidOf(first);
      const workMem = (await first.query('SHOW work_mem')).rows[0].work_mem as string;
      await first.query("SET work_mem = '7777kB'");
      await first.query('PREPARE leftover_stmt AS SELECT 1');
      await first.query('CREATE TEMP TABLE leftover_temp (i int)');
      await first.query('SELECT pg_catalog.pg_advisory_lock(424242)');
      await first.query('LISTEN leftover_channel');
      const { rows: held } = await fx.admin.query("SELECT count(*)::int AS n FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = $1", [pid]);
      expect(held[0].n).toBe(1);
      await first.end();
      expect(await idleReaches(p, tenant, 1)).toBe(true);

      const second = await connect(p, tenant);
      try {
        expect(await pidOf(second)).toBe(pid);
        expect((await second.query('SHOW work_mem')).rows[0].work_mem).toBe(workMem);
        expect((await second.query('SELECT count(*)::int AS n FROM pg_catalog.pg_prepared_statements')).rows[0].n).toBe(0);
        await expect(second.query('EXECUTE leftover_stmt')).rejects.toMatchObject({ code: '26000' });
        const temp = await second.query("SELECT count(*)::int AS n FROM pg_catalog.pg_class WHERE relname = 'leftover_temp' AND relpersistence = 't'");
        expect(temp.rows[0].n).toBe(0);
        expect((await second.query('SELECT count(*)::int AS n FROM pg_catalog.pg_listening_channels()')).rows[0].n).toBe(0);
        const { rows: locks } = await fx.admin.query("SELECT count(*)::int AS n FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = $1", [pid]);
        expect(locks[0].n).toBe(0);
      } finally {
        await second.end();
      }
    });
  });

  it('a reused backend gets the next client\'s startup settings, and never its search_path', async () => {
    const tenant = await newTenant('settings');
    await withProxy({}, async (p) => {
      const a = await connect(p, tenant, { application_name: 'a' });
      const pid = await pidOf(a);
      expect((await a.query('SHOW application_name')).rows[0].application_name).toBe('a');
      await a.end();
      expect(await idleReaches(p, tenant, 1)).toBe(true);

      const b = await connect(p, tenant, { application_name: 'b', options: '-c statement_timeout=1234' });
      expect(await pidOf(b)).toBe(pid);
      expect((await b.query('SHOW application_name')).rows[0].application_name).toBe('b');
      expect((await b.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('1234ms');
      const { rows } = await fx.admin.query('SELECT application_name FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid]);
      expect(rows).toEqual([{ application_name: 'b' }]);
      await b.end();
      expect(await idleReaches(p, tenant, 1)).toBe(true);

      const c = await connect(p, tenant, { options: '-c search_path=public' });
      try {
        expect(await pidOf(c)).toBe(pid);
        expect((await c.query('SELECT current_schema() AS s')).rows).toEqual([{ s: tenant }]);
        // What b asked for went with b.
        expect((await c.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('0');
        expect((await c.query('SHOW application_name')).rows[0].application_name).not.toBe('b');
      } finally {
        await c.end();
      }
    });
  });

  it('an invalid startup setting is refused as PostgreSQL would (22023), and the next client is unaffected', async () => {
    const tenant = await newTenant('badset');
    await withProxy({}, async (p) => {
      const warm = await connect(p, tenant);
      await warm.end();
      expect(await idleReaches(p, tenant, 1)).toBe(true);
      const err = await rejection(connect(p, tenant, { options: '-c statement_timeout=not-a-duration' }));
      expect(err.code).toBe('22023');
      expect(err.message).toContain('statement_timeout');
      const next = await connect(p, tenant);
      try {
        expect((await next.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('0');
        expect(p.server.pool.size).toBe(1);
      } finally {
        await next.end();
      }
    });
  });

  it('pools never mix tenants: alternating clients of two tenants never share a backend', async () => {
    const [ta, tb] = [await newTenant('mixa'), await newTenant('mixb')];
    await withProxy({}, async (p) => {
      const seen = new Map<string, Set<number>>([
        [ta, new Set()],
        [tb, new Set()],
      ]);
      for (let i = 0; i < 6; i++) {
        const tenant = i % 2 === 0 ? ta : tb;
        const c = await connect(p, tenant);
        const pid = await pidOf(c);
        expect(await usenameOf(pid)).toBe(tenant);
        expect((await c.query('SELECT current_user AS u, current_schema() AS s')).rows).toEqual([{ u: tenant, s: tenant }]);
        seen.get(tenant)!.add(pid);
        await c.end();
        expect(await idleReaches(p, tenant, 1)).toBe(true);
      }
      const [pa, pb] = [[...seen.get(ta)!], [...seen.get(tb)!]];
      // Each tenant kept reusing its own backend, and none crossed over.
      expect(pa).toHaveLength(1);
      expect(pb).toHaveLength(1);
      expect(pa.filter((pid) => pb.includes(pid))).toEqual([]);
    });
  });
});

describe('limits', () => {
  it('a full pool refuses a third client with 53300 naming the tenant after poolWaitTimeout', async () => {
    const tenant = await newTenant('full');
    await withProxy({ poolSize: 2, poolWaitTimeout: 800 }, async (p) => {
      const holders = [await connect(p, tenant), await connect(p, tenant)];
      try {
        const err = await rejection(connect(p, tenant));
        expect(err.code).toBe('53300');
        expect(err.message).toContain(`"${tenant}"`);
        expect(counts(p, tenant)).toEqual({ login: 0, active: 2, idle: 0 });
        // The holders are unaffected.
        for (const h of holders) expect((await h.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      } finally {
        await Promise.all(holders.map((h) => h.end()));
      }
    });
  });

  it('with a longer wait the third client gets the backend the first one gives back', async () => {
    const tenant = await newTenant('handover');
    await withProxy({ poolSize: 2, poolWaitTimeout: 15_000 }, async (p) => {
      const first = await connect(p, tenant);
      const second = await connect(p, tenant);
      const pid = await pidOf(first);
      const third = queued(p, tenant);
      await third.authenticated;
      expect(await stillPending(third.connected)).toBe(true);
      await first.end();
      const c = await third.connected;
      try {
        expect(await pidOf(c)).toBe(pid);
        expect(p.server.pool.size).toBe(2);
      } finally {
        await Promise.all([c.end(), second.end()]);
      }
    });
  });

  it('at the global cap, freed room goes to the other tenant waiting for it, not to the busy tenant\'s queue', async () => {
    const [ta, tb] = [await newTenant('capa'), await newTenant('capb')];
    await withProxy({ maxBackends: 2, poolSize: 2, poolWaitTimeout: 5000 }, async (p) => {
      const watch = watchPoolSize(p);
      const a1 = await connect(p, ta);
      const a2 = await connect(p, ta);
      const a1pid = await pidOf(a1);
      const a3 = queued(p, ta);
      await a3.authenticated;
      const b1 = queued(p, tb);
      await b1.authenticated;
      expect(await stillPending(b1.connected)).toBe(true);

      // A backend serves its own pool's queue for a turn (500 ms, see pool.ts) before it yields: let a1's run out.
      await sleep(600);
      await a1.end();
      const b = await b1.connected;
      try {
        expect(await usenameOf(await pidOf(b))).toBe(tb);
        expect(await stillPending(a3.connected)).toBe(true);
        // a1's backend was closed to make that room, not handed to a3.
        expect(await backendGone(a1pid)).toBe(true);
        await a2.end();
        const a = await a3.connected;
        expect(await usenameOf(await pidOf(a))).toBe(ta);
        await a.end();
      } finally {
        await b.end();
        expect(watch.stop()).toBeLessThanOrEqual(2);
      }
    });
  });

  it('at the global cap, a backend first serves its own tenant\'s queue for a turn, then yields to the waiting tenant', async () => {
    const [ta, tb] = [await newTenant('turna'), await newTenant('turnb')];
    await withProxy({ maxBackends: 2, poolSize: 2, poolWaitTimeout: 5000 }, async (p) => {
      const a1 = await connect(p, ta);
      const a2 = await connect(p, ta);
      const a1pid = await pidOf(a1);
      const a3 = queued(p, ta);
      await a3.authenticated;
      const b1 = queued(p, tb);
      await b1.authenticated;
      // Within its turn, a1's backend goes straight to a3, though tb waits for room.
      await a1.end();
      const a = await a3.connected;
      expect(await pidOf(a)).toBe(a1pid);
      expect(await stillPending(b1.connected)).toBe(true);
      // a2's backend has served ta for longer than a turn: released, it makes room for tb.
      await sleep(600);
      await a2.end();
      const b = await b1.connected;
      expect(await usenameOf(await pidOf(b))).toBe(tb);
      await Promise.all([a.end(), b.end()]);
    });
  });

  it('in transaction mode a turn lasts 8 transactions as well as 500 ms: slow transactions do not make a login every few', async () => {
    const [ta, tb] = [await newTenant('txturna'), await newTenant('txturnb')];
    await withProxy({ poolMode: 'transaction', maxBackends: 1, poolSize: 1, poolWaitTimeout: 10_000 }, async (p) => {
      const [a1, a2] = [await connect(p, ta), await connect(p, ta)];
      let done = 0;
      let running = true;
      // Two clients of ta take turns on its one backend, 150 ms a transaction: one always waits when the other ends.
      const loop = async (c: pg.Client) => {
        while (running) {
          await c.query('SELECT pg_catalog.pg_sleep(0.15)');
          done++;
        }
      };
      const loops = [loop(a1), loop(a2)];
      try {
        await sleep(50);
        const b = queued(p, tb);
        const started = done;
        const got = await b.connected;
        // 500 ms hold about 4 such transactions; the turn waits for the 8th (one may still be on its way back).
        expect(done - started).toBeGreaterThanOrEqual(7);
        expect((await got.query('SELECT current_user AS u')).rows[0].u).toBe(tb);
        await got.end();
      } finally {
        running = false;
        await Promise.all(loops);
        await Promise.all([a1.end(), a2.end()]);
      }
    });
  });

  it('idle backends of a quiet tenant make room for another at the global cap', async () => {
    const [ta, tb] = [await newTenant('quieta'), await newTenant('quietb')];
    // Had B to wait for an idle timeout (60 s by default), this wait timeout would refuse it.
    await withProxy({ maxBackends: 2, poolWaitTimeout: 3000 }, async (p) => {
      const watch = watchPoolSize(p);
      const [a1, a2] = [await connect(p, ta), await connect(p, ta)];
      const pids = [await pidOf(a1), await pidOf(a2)];
      await Promise.all([a1.end(), a2.end()]);
      expect(await idleReaches(p, ta, 2)).toBe(true);
      const b = await connect(p, tb);
      try {
        expect(await usenameOf(await pidOf(b))).toBe(tb);
        expect(counts(p, ta).idle).toBe(1);
        expect(counts(p, tb).active).toBe(1);
        const gone = await Promise.all(pids.map(async (pid) => (await usenameOf(pid)) === null));
        expect(gone.filter(Boolean)).toHaveLength(1);
      } finally {
        await b.end();
        expect(watch.stop()).toBeLessThanOrEqual(2);
      }
    });
  });
});

describe('a tenant\'s own pool size', () => {
  it('overrides --pool-size for that tenant only, and a change reaches a running proxy at once', async () => {
    const small = await newTenant('small');
    const other = await newTenant('other');
    await fx.tenants.setPoolSize(small, 1);
    await withProxy({ poolSize: 3, poolWaitTimeout: 600 }, async (p) => {
      const holder = await connect(p, small);
      const others = [await connect(p, other), await connect(p, other)];
      try {
        const err = await rejection(connect(p, small));
        expect(err.code).toBe('53300');
        expect(counts(p, other).active).toBe(2);
        // Raised through the lifecycle service: its NOTIFY reaches this proxy, the next client gets in.
        await fx.tenants.setPoolSize(small, 2);
        expect(await until(async () => {
          const c = await connect(p, small).catch(() => null);
          if (!c) return false;
          await c.end();
          return true;
        })).toBe(true);
      } finally {
        await Promise.all([holder.end(), ...others.map((c) => c.end())]);
      }
    });
  });

  it('a smaller size closes idle backends beyond it at once, and back to the default lifts it', async () => {
    const tenant = await newTenant('shrink');
    await withProxy({ poolSize: 3 }, async (p) => {
      const clients = [await connect(p, tenant), await connect(p, tenant), await connect(p, tenant)];
      await Promise.all(clients.map((c) => c.end()));
      expect(await idleReaches(p, tenant, 3)).toBe(true);
      expect((await fx.tenants.setPoolSize(tenant, 1)).poolSize).toBe(1);
      expect(await idleReaches(p, tenant, 1)).toBe(true);
      expect(await until(async () => (await backendsOf(tenant)) === 1)).toBe(true);
      expect((await fx.tenants.setPoolSize(tenant, null)).poolSize).toBeNull();
      const again = [await connect(p, tenant), await connect(p, tenant), await connect(p, tenant)];
      expect(counts(p, tenant).active).toBe(3);
      await Promise.all(again.map((c) => c.end()));
    });
  });

  it('refuses sizes outside 1..10000 with invalid_pool_size and changes nothing', async () => {
    const tenant = await newTenant('badsize');
    for (const bad of [0, -1, 1.5, 10_001]) {
      await expect(fx.tenants.setPoolSize(tenant, bad)).rejects.toMatchObject({ code: 'invalid_pool_size' });
    }
    expect((await fx.tenants.get(tenant)).poolSize).toBeNull();
  });
});

describe('reaping and replacing backends', () => {
  it('serverIdleTimeout closes a released backend', async () => {
    const tenant = await newTenant('idleto');
    await withProxy({ serverIdleTimeout: 300 }, async (p) => {
      const c = await connect(p, tenant);
      const pid = await pidOf(c);
      await c.end();
      expect(await backendGone(pid)).toBe(true);
      expect(await until(() => p.server.pool.size === 0)).toBe(true);
      expect(counts(p, tenant)).toEqual({ login: 0, active: 0, idle: 0 });
    });
  });

  it('serverLifetime: a backend older than it is closed when its session ends, not reused', async () => {
    const tenant = await newTenant('lifetime');
    await withProxy({ serverLifetime: 300 }, async (p) => {
      const c = await connect(p, tenant);
      const pid = await pidOf(c);
      await c.query('SELECT pg_catalog.pg_sleep(0.4)');
      await c.end();
      // Once released it is not parked at all (the reaper would also close an old idle one, but later).
      expect(await until(() => counts(p, tenant).active === 0)).toBe(true);
      expect(counts(p, tenant).idle).toBe(0);
      expect(await backendGone(pid)).toBe(true);
      const next = await connect(p, tenant);
      try {
        expect(await pidOf(next)).not.toBe(pid);
      } finally {
        await next.end();
      }
    });
  });

  it('an idle backend the server terminated is replaced: the next client gets a new one', async () => {
    const tenant = await newTenant('dead');
    await withProxy({}, async (p) => {
      const c = await connect(p, tenant);
      const pid = await pidOf(c);
      await c.end();
      expect(await idleReaches(p, tenant, 1)).toBe(true);
      await fx.admin.query('SELECT pg_catalog.pg_terminate_backend($1)', [pid]);
      expect(await backendGone(pid)).toBe(true);
      // The pool watches its idle backends: this one leaves without waiting for a client to trip over it.
      expect(await until(() => counts(p, tenant).idle === 0)).toBe(true);
      const next = await connect(p, tenant);
      try {
        expect(await pidOf(next)).not.toBe(pid);
        expect((await next.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
      } finally {
        await next.end();
      }
    });
  });

  it('poolMinIdle keeps two idle backends ready while the tenant has a client', async () => {
    const tenant = await newTenant('minidle');
    await withProxy({ poolMinIdle: 2 }, async (p) => {
      const c = await connect(p, tenant);
      try {
        expect(await until(() => counts(p, tenant).idle >= 2, 6000)).toBe(true);
        expect(counts(p, tenant)).toEqual({ login: 0, active: 1, idle: 2 });
        expect(await until(async () => (await backendsOf(tenant)) === 3)).toBe(true);
      } finally {
        await c.end();
      }
    });
  });
});

describe('a client vanishing mid-transaction', () => {
  it('its row lock is released (ROLLBACK) before anyone else needs it', async () => {
    const tenant = await newTenant('midtx');
    await withProxy({}, async (p) => {
      const setup = await connect(p, tenant);
      await setup.query('CREATE TABLE locked (id int PRIMARY KEY); INSERT INTO locked VALUES (1)');
      await setup.end();

      const holder = await connect(p, tenant);
      const pid = await pidOf(holder);
      await holder.query('BEGIN');
      await holder.query('SELECT id FROM locked WHERE id = 1 FOR UPDATE');
      // The lock is really held: another session cannot take it.
      const probe = await connect(p, tenant);
      await probe.query("SET lock_timeout = '200ms'");
      await expect(probe.query('SELECT id FROM locked WHERE id = 1 FOR UPDATE')).rejects.toMatchObject({ code: '55P03' });
      await probe.end();

      (holder as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
      // Left at a statement boundary, the backend is kept: rolled back, then DISCARD ALL, then idle in the pool
      // (DISCARD ALL would fail inside the transaction and the backend would be closed instead).
      expect(
        await until(async () => {
          const { rows } = await fx.admin.query('SELECT state, query FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid]);
          return rows[0]?.state === 'idle' && rows[0]?.query === 'DISCARD ALL';
        }),
      ).toBe(true);

      const next = await connect(p, tenant);
      try {
        // Not inside the vanished client's transaction (that one had an xid from FOR UPDATE).
        expect((await next.query('SELECT txid_current_if_assigned() AS x')).rows).toEqual([{ x: null }]);
        await next.query("SET lock_timeout = '2s'");
        await next.query('BEGIN');
        expect((await next.query('SELECT id FROM locked WHERE id = 1 FOR UPDATE')).rows).toEqual([{ id: 1 }]);
        await next.query('COMMIT');
      } finally {
        await next.end();
      }
    });
  });
});
