// Client limits: --max-client-connections, --max-tenant-clients, the startup timeout (slowloris) and the idle-in-transaction timeout, each with its error.
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config.js';
import {
  backendKey,
  connectPg,
  errorFields,
  parseMessages,
  proxyFixture,
  rawExchange,
  rejection,
  sendCancel,
  sessionEnd,
  sleep,
  startupMessage,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'limits-password-1';
let fx: ProxyFixture;
let alpha: string;
let beta: string;
const open: pg.Client[] = [];

beforeAll(async () => {
  fx = await proxyFixture('role');
  alpha = await fx.newTenant('lim_a', PASSWORD);
  beta = await fx.newTenant('lim_b', PASSWORD);
});

afterAll(async () => {
  await Promise.allSettled(open.map((c) => c.end()));
  await fx?.close();
});

async function connect(p: TestProxy, tenant: string): Promise<pg.Client> {
  const c = await connectPg(p.clientConfig(tenant, PASSWORD));
  open.push(c);
  return c;
}

/** The first ErrorResponse's fields in what the proxy sent, or null. */
function firstError(data: Buffer): Record<string, string> | null {
  const e = parseMessages(data).messages.find((m) => m.type === 'E');
  return e ? errorFields(e.body) : null;
}

/** Polls `cond` every 25 ms for up to `ms`. */
async function eventually(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await cond()) return true;
    await sleep(25);
  }
  return cond();
}

describe('--max-client-connections', () => {
  it('refuses the connection past the cap with 53300 once the client has said who it is, and lets the next one in when one leaves', async () => {
    const p = await fx.startProxy({ maxClientConnections: 2 });
    const first = await connect(p, alpha);
    await connect(p, beta);
    const err = await rejection(connectPg(p.clientConfig(alpha, PASSWORD)));
    expect(err.code).toBe('53300');
    expect(err.message).toMatch(/too many client connections.*max-client-connections is 2/);
    await first.end();
    expect(await eventually(() => p.server.sessions().size < 2)).toBe(true);
    const again = await connect(p, alpha);
    expect((await again.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });

  it('still forwards a CancelRequest while full', async () => {
    const p = await fx.startProxy({ maxClientConnections: 1 });
    const c = await connect(p, alpha);
    const query = rejection(c.query('SELECT pg_catalog.pg_sleep(30)'));
    await sleep(200);
    const key = backendKey(c);
    await sendCancel(p.port, key.processId, key.secretKey);
    expect((await query).code).toBe('57014');
  });
});

describe('--max-tenant-clients', () => {
  let p: TestProxy;
  beforeAll(async () => {
    p = await fx.startProxy({ maxTenantClients: 2 });
  });

  const alphas: pg.Client[] = [];

  it('refuses a tenant\'s third client with 53300 and names the tenant; other tenants are not affected', async () => {
    alphas.push(await connect(p, alpha), await connect(p, alpha));
    const err = await rejection(connectPg(p.clientConfig(alpha, PASSWORD)));
    expect(err.code).toBe('53300');
    expect(err.message).toContain(`too many connections for tenant "${alpha}"`);
    const other = await connect(p, beta);
    expect((await other.query('SELECT current_user AS u')).rows[0].u).toBe(beta);
  });

  it('a wrong password at the cap still gets 28P01: the cap is checked only once the password is proven', async () => {
    const err = await rejection(connectPg(p.clientConfig(alpha, 'not-the-password')));
    expect(err.code).toBe('28P01');
  });

  it('a refused client and a client that left free their places', async () => {
    await alphas[0]!.end();
    // The session ends on the proxy a moment after the client's Terminate.
    expect(await eventually(async () => {
      try {
        await connect(p, alpha);
        return true;
      } catch {
        return false;
      }
    })).toBe(true);
  });

  it('a reload lowers the cap for new clients and leaves open sessions be', async () => {
    const q = await fx.startProxy({ maxTenantClients: 0 });
    const held = [await connect(q, beta), await connect(q, beta)];
    q.server.reload(resolveConfig({ flags: { upstream: fx.db.url, listen: '127.0.0.1:0', adminListen: 'off', maxTenantClients: 1 }, env: {} }));
    expect((await rejection(connectPg(q.clientConfig(beta, PASSWORD)))).code).toBe('53300');
    for (const c of held) expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });
});

describe("a tenant's own client cap (tenants set --max-clients)", () => {
  /** Connects, or the SQLSTATE of the refusal. */
  const tryConnect = (p: TestProxy, tenant: string): Promise<pg.Client | string> =>
    connect(p, tenant).catch((err: Error & { code?: string }) => err.code ?? err.message);

  it('overrides --max-tenant-clients for that tenant only, both lower (a cap of 1) and off (0); the default comes back with null', async () => {
    const own = await fx.newTenant('lim_own', PASSWORD);
    const p = await fx.startProxy({ maxTenantClients: 2 });
    const mine: pg.Client[] = [];
    /** Connects as `own` (kept in `mine`), or the SQLSTATE of the refusal. */
    const ownClient = async (): Promise<string | null> => {
      const c = await tryConnect(p, own);
      if (typeof c === 'string') return c;
      mine.push(c);
      return null;
    };
    try {
      expect((await fx.tenants.setMaxClients(own, 1)).maxClients).toBe(1);
      expect(await ownClient()).toBeNull();
      const err = await rejection(connectPg(p.clientConfig(own, PASSWORD)));
      expect(err.code).toBe('53300');
      expect(err.message).toBe(`too many connections for tenant "${own}" (its own cap is 1)`);
      // Another tenant keeps the proxy's cap of 2.
      await connect(p, beta);
      await connect(p, beta);
      expect(await tryConnect(p, beta)).toBe('53300');

      // 0: no cap for this tenant, whatever the proxy's. The change reaches the proxy by NOTIFY.
      expect((await fx.tenants.setMaxClients(own, 0)).maxClients).toBe(0);
      expect(await eventually(async () => (await ownClient()) === null)).toBe(true);
      for (let i = 0; i < 3; i++) expect(await ownClient()).toBeNull();
      expect(mine.length).toBe(5);

      // null: back to --max-tenant-clients (2), which the five open sessions are over: new ones are refused, open ones go on.
      expect((await fx.tenants.setMaxClients(own, null)).maxClients).toBeNull();
      // Until the NOTIFY lands, a login may still get in under the old setting.
      expect(await eventually(async () => (await ownClient()) === '53300')).toBe(true);
      expect(mine.length).toBeGreaterThanOrEqual(5);
      for (const c of mine) expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe(own);
    } finally {
      await fx.tenants.setMaxClients(own, null);
    }
  });

  it('refuses values outside 0..1000000 with invalid_max_clients and changes nothing', async () => {
    for (const bad of [-1, 1_000_001, 2.5, Number.NaN]) {
      await expect(fx.tenants.setMaxClients(alpha, bad)).rejects.toMatchObject({ code: 'invalid_max_clients' });
    }
    expect((await fx.tenants.get(alpha)).maxClients).toBeNull();
    await expect(fx.tenants.setMaxClients('no_such_tenant_here', 3)).rejects.toMatchObject({ code: 'tenant_not_found' });
  });
});

describe('--startup-timeout', () => {
  let p: TestProxy;
  beforeAll(async () => {
    p = await fx.startProxy({ startupTimeout: 400 });
  });

  it('a client that connects and sends nothing gets 08P01 and is closed', async () => {
    const t0 = Date.now();
    const reply = await rawExchange(p.port, [], { waitMs: 5000 });
    expect(reply.closed).toBe(true);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(firstError(reply.data)).toMatchObject({ C: '08P01', M: 'timeout during startup' });
  });

  it('a slowloris trickling its startup packet one byte every 100 ms is cut off, while a well-behaved client logs in meanwhile', async () => {
    const packet = startupMessage({ user: alpha, database: fx.db.name });
    const socket = net.connect(p.port, '127.0.0.1');
    const received: Buffer[] = [];
    socket.on('data', (d: Buffer) => received.push(d));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent < packet.length && !socket.destroyed) socket.write(packet.subarray(sent, ++sent));
    }, 100);
    try {
      const good = await connect(p, beta);
      expect((await good.query('SELECT 1 AS one')).rows[0].one).toBe(1);
      await Promise.race([closed, sleep(5000)]);
      expect(socket.destroyed || socket.readableEnded).toBe(true);
      expect(sent).toBeLessThan(packet.length);
      expect(firstError(Buffer.concat(received))?.C).toBe('08P01');
    } finally {
      clearInterval(trickle);
      socket.destroy();
    }
  });

  it('a client that stops answering the password challenge is cut off the same way', async () => {
    const reply = await rawExchange(p.port, [startupMessage({ user: alpha, database: fx.db.name })], { waitMs: 5000 });
    expect(reply.closed).toBe(true);
    const types = parseMessages(reply.data).messages.map((m) => m.type);
    expect(types[0]).toBe('R'); // the SASL challenge went out; no answer came
    expect(firstError(reply.data)?.C).toBe('08P01');
  });

  it('ends with the password: a client that then waits for a backend longer than the startup timeout gets in', async () => {
    const q = await fx.startProxy({ startupTimeout: 400, maxBackends: 1, poolWaitTimeout: 10_000 });
    const holder = await connect(q, alpha);
    const waiting = connectPg(q.clientConfig(beta, PASSWORD));
    waiting.catch(() => undefined);
    // The only backend is alpha's: beta, logged in, waits for it well past 400 ms.
    await sleep(1200);
    await holder.end();
    const c = await waiting;
    open.push(c);
    expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe(beta);
  });
});

describe.each(['session', 'transaction'] as const)('--idle-transaction-timeout in %s mode', (poolMode) => {
  let p: TestProxy;
  beforeAll(async () => {
    p = await fx.startProxy({ poolMode, idleTransactionTimeout: 600 });
    const c = await connect(p, alpha);
    await c.query('CREATE TABLE IF NOT EXISTS iit (v text)');
    await c.end();
  });

  it('ends a client idle inside a transaction with 25P03 and rolls its transaction back, leaving no backend in a transaction', async () => {
    const c = await connect(p, alpha);
    const ended = sessionEnd(c, 10_000);
    await c.query('BEGIN');
    await c.query(`INSERT INTO iit VALUES ('${poolMode} abandoned')`);
    const { error } = await ended;
    expect(error?.message).toContain('idle-in-transaction timeout');
    expect((error as { code?: string } | null)?.code).toBe('25P03');
    const next = await connect(p, alpha);
    const rows = await next.query(`SELECT count(*)::int AS n FROM iit WHERE v = '${poolMode} abandoned'`);
    expect(rows.rows[0].n).toBe(0);
    const stuck = async () =>
      (await fx.admin.query("SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND state LIKE 'idle in transaction%'", [alpha])).rows[0].n;
    expect(await eventually(async () => (await stuck()) === 0)).toBe(true);
  });

  it('an aborted transaction left idle is ended too', async () => {
    const c = await connect(p, alpha);
    const ended = sessionEnd(c, 10_000);
    await c.query('BEGIN');
    await rejection(c.query('SELECT 1/0'));
    expect((await ended).error?.message).toContain('idle-in-transaction timeout');
  });

  it('leaves alone a client idle outside a transaction, and one whose statement inside a transaction runs longer than the timeout', async () => {
    const idle = await connect(p, beta);
    const busy = await connect(p, beta);
    await busy.query('BEGIN');
    await busy.query('SELECT pg_catalog.pg_sleep(1.5)');
    await busy.query('COMMIT');
    await sleep(1200);
    expect((await idle.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    expect((await busy.query('SELECT 2 AS two')).rows[0].two).toBe(2);
  });

  it('a transaction that keeps talking is not ended, however long it lasts in all', async () => {
    const c = await connect(p, beta);
    await c.query('BEGIN');
    for (let i = 0; i < 6; i++) {
      await sleep(300);
      await c.query('SELECT 1');
    }
    await c.query('COMMIT');
    expect((await c.query('SELECT 3 AS three')).rows[0].three).toBe(3);
  });
});
