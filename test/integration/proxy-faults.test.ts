// Faults between the proxy and PostgreSQL (unreachable, reset, slow, terminated, restarted) and clients that vanish mid-query: errors, not hangs or leaks.
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../src/embedded-postgres.js';
import { silentLogger } from '../../src/logger.js';
import { startProxy, type ProxyServer } from '../../src/proxy/server.js';
import { startRuntime, type Runtime } from '../../src/runtime.js';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { TenantService } from '../../src/tenants/service.js';
import { fetchJson } from '../support/admin.js';
import { uniqueTenantId } from '../support/db.js';
import { FaultRelay } from '../support/fault-relay.js';
import { connectPg, proxyFixture, sessionEnd, sleep, type ProxyFixture, type TestProxy } from '../support/proxy.js';

const PASSWORD = 'faults-password-1';
const CONNECT_TIMEOUT = 1000;
/** The proxies' own limit on a login, so that a hung one ends and says how. */
const STARTUP_TIMEOUT = CONNECT_TIMEOUT + 2500;
/** What a client may be told when the proxy cannot reach the server. */
const UNREACHABLE = ['08006', '57P03'];
const MODES = ['session', 'transaction'] as const;
type PoolMode = (typeof MODES)[number];

let fx: ProxyFixture;
let relay: FaultRelay;
/** The restart test's own server, initialised while the other tests run (initdb is most of that test's time). */
let ownServer: Promise<EmbeddedPostgres> | null = null;
let ownServerDir = '';
/** Faults the tests cause themselves (pg_terminate_backend, vanished clients, a server restart), besides the relay's. */
let ownFaults = 0;
/** What each fault did to clients, printed at the end for docs/reliability.md. */
const observed: string[] = [];
const proxies = new Map<PoolMode, TestProxy>();
const clients: pg.Client[] = [];

beforeAll(async () => {
  ownServerDir = await mkdtemp(path.join(tmpdir(), 'pgtenant-faults-'));
  // As root the server runs as user postgres, which must reach the data dir inside this folder.
  await chmod(ownServerDir, 0o755);
  ownServer = startEmbeddedPostgres({ dataDir: path.join(ownServerDir, 'data'), persistent: true });
  ownServer.catch(() => undefined);
  fx = await proxyFixture('role');
  const u = new URL(fx.db.url);
  relay = await FaultRelay.start({ host: u.hostname, port: Number(u.port || 5432) });
  for (const poolMode of MODES) {
    proxies.set(
      poolMode,
      await fx.startProxy({ upstream: relay.urlFor(fx.db.url), connectTimeout: CONNECT_TIMEOUT, startupTimeout: STARTUP_TIMEOUT, poolMode }),
    );
  }
});

afterAll(async () => {
  const stats = relay?.stats();
  if (stats) {
    console.log(
      `faults: ${stats.faults + ownFaults} injected (relay: ${stats.dropped} dropped, ${stats.reset} reset, ${stats.blackholed} blackholed, ` +
        `${stats.refusals} refusals, ${stats.delays} delays; test: ${ownFaults})\n  ${observed.join('\n  ')}`,
    );
  }
  for (const c of clients) c.connection.stream.destroy();
  // Dead ends first: a proxy waiting on one would otherwise wait in close().
  relay?.reset();
  relay?.close();
  await fx?.close();
  await (await ownServer?.catch(() => null))?.stop();
  if (ownServerDir) await rm(ownServerDir, { recursive: true, force: true });
});

interface Settled {
  ms: number;
  ok: boolean;
  code: string | undefined;
  message: string;
}

/** How a promise ended, and after how long; `hung` when it had not within `limitMs`. */
async function settle(p: Promise<unknown>, limitMs = 30_000): Promise<Settled & { hung: boolean }> {
  const start = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), limitMs)));
  try {
    const r = await Promise.race([p.then(() => 'ok' as const), hang]);
    return { ms: Date.now() - start, ok: r === 'ok', code: undefined, message: r, hung: r === 'hung' };
  } catch (err) {
    const e = err as Error & { code?: string };
    return { ms: Date.now() - start, ok: false, code: e.code, message: e.message, hung: false };
  } finally {
    clearTimeout(timer);
  }
}

const said = (s: Settled): string => (s.ok ? 'ok' : `${s.code ?? 'no SQLSTATE'} "${s.message}"`);
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

async function client(proxy: TestProxy, tenant: string): Promise<pg.Client> {
  const c = await connectPg({ ...proxy.clientConfig(tenant, PASSWORD), connectionTimeoutMillis: 30_000 });
  clients.push(c);
  return c;
}

/** A login that the test abandons (hung or not): its socket is destroyed when it settles or at the end. */
function loginAttempt(proxy: TestProxy, tenant: string): { settled: Promise<Settled & { hung: boolean }>; abandon(): void } {
  const c = new pg.Client({ ...proxy.clientConfig(tenant, PASSWORD), connectionTimeoutMillis: 0 });
  c.on('error', () => undefined);
  clients.push(c);
  const connected = c.connect();
  return {
    settled: settle(connected, STARTUP_TIMEOUT + 1500),
    abandon: () => c.connection.stream.destroy(),
  };
}

/** Logs in and runs a query, retrying until it works or `deadlineMs` passes; resolves with the time it took. */
async function loginUntilOk(proxy: TestProxy, tenant: string, deadlineMs = 10_000): Promise<number> {
  const start = Date.now();
  let last: Settled | null = null;
  while (Date.now() - start < deadlineMs) {
    const c = new pg.Client({ ...proxy.clientConfig(tenant, PASSWORD), connectionTimeoutMillis: 3000 });
    c.on('error', () => undefined);
    last = await settle(
      (async () => {
        await c.connect();
        const { rows } = await c.query('SELECT current_user AS u');
        if (rows[0].u !== tenant) throw new Error(`logged in as ${rows[0].u}`);
      })(),
    );
    await c.end().catch(() => undefined);
    if (last.ok) return Date.now() - start;
    await sleep(100);
  }
  throw new Error(`no login within ${deadlineMs} ms; last: ${last ? said(last) : 'none'}`);
}

/** The pid of the tenant's backend running a statement that starts with `prefix` (polled until it shows). */
async function activeBackend(tenant: string, prefix: string): Promise<number> {
  for (let i = 0; i < 250; i++) {
    const { rows } = await fx.admin.query(
      "SELECT pid FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND state = 'active' AND starts_with(query, $2)",
      [tenant, prefix],
    );
    if (rows[0]) return rows[0].pid as number;
    await sleep(20);
  }
  throw new Error(`no backend of ${tenant} ever ran ${prefix}`);
}

/** Resolves with how long `check` took to hold; rejects with `what` after `deadlineMs`. */
async function eventually(what: string, check: () => Promise<boolean> | boolean, deadlineMs = 5000): Promise<number> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > deadlineMs) throw new Error(`${what} (not within ${deadlineMs} ms)`);
    await sleep(50);
  }
  return Date.now() - start;
}

const backendPid = async (c: pg.Client): Promise<number> => (await c.query('SELECT pg_catalog.pg_backend_pid() AS pid')).rows[0].pid;

/**
 * Waits until every fixture proxy has its LISTEN connection back after an earlier fault: without it the tenant
 * directory caches nothing, and a login would read the registry instead of taking the path a test means.
 */
async function listenersUp(): Promise<void> {
  await eventually('the proxies\' LISTEN connections are back', async () => {
    const { rows } = await fx.admin.query(
      "SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND application_name = 'pgtenant-listen'",
      [fx.db.name],
    );
    return rows[0].n >= fx.proxies.length;
  }, 10_000);
}

/** The proxy's server connections for a tenant (opening, linked to a client, idle). */
function serverCounts(proxy: TestProxy, tenant: string): { login: number; active: number; idle: number } {
  return proxy.server.pool.counts().get(tenant) ?? { login: 0, active: 0, idle: 0 };
}

describe.each(MODES)('upstream unreachable for new connections (%s mode)', (poolMode) => {
  let proxy: TestProxy;
  let tenant: string;
  beforeAll(async () => {
    proxy = proxies.get(poolMode)!;
    tenant = await fx.newTenant('unreach', PASSWORD);
  });

  it('refused: a login needing a new backend gets 08006 at once; with the open connections reset too, 57P03; logins work again once it is back', async () => {
    // A holds its backend, so B needs a new one while the tenant registry is still cached and connected.
    await listenersUp();
    const a = await client(proxy, tenant);
    await a.query('BEGIN');
    relay.refuse();
    const login = () => settle(connectPg({ ...proxy.clientConfig(tenant, PASSWORD), connectionTimeoutMillis: 30_000 }).then((c) => c.end()));
    const r = await login();
    observed.push(`refused upstream (${poolMode}), login needing a new backend: ${said(r)} after ${secs(r.ms)}`);
    expect(r.code, said(r)).toBe('08006');
    expect(r.ms).toBeLessThan(CONNECT_TIMEOUT + 2000);
    relay.reset();
    for (const attempt of ['first', 'second']) {
      const r = await login();
      observed.push(`refused upstream, open connections reset (${poolMode}), ${attempt} login: ${said(r)} after ${secs(r.ms)}`);
      expect(UNREACHABLE, said(r)).toContain(r.code);
      expect(r.ms).toBeLessThan(CONNECT_TIMEOUT + 2000);
    }
    await relay.pass();
    const recovered = await loginUntilOk(proxy, tenant);
    observed.push(`refused upstream (${poolMode}): logins work again ${secs(recovered)} after the server is back`);
  });

  // --connect-timeout bounds each silence of the server while a backend opens (TCP, SSLRequest, TLS, login), not
  // only the TCP connect: a server that accepts and never answers fails the login with 08006, not with the client's
  // startup timeout, and the backend being opened gives its pool slot back.
  it('blackholed (accepts, never answers), a new backend needed: the login gets 08006/57P03 within connectTimeout', async () => {
    // A holds its backend, so B needs a new one; B comes right after A, so the tenant and its secret are cached.
    await listenersUp();
    const a = await client(proxy, tenant);
    await a.query('BEGIN');
    await a.query('SELECT 1');
    await relay.blackhole();
    const b = loginAttempt(proxy, tenant);
    try {
      const r = await b.settled;
      observed.push(
        `blackholed upstream (${poolMode}), login needing a new backend: ${r.hung ? 'no answer' : said(r)} after ${secs(r.ms)} ` +
          `(--startup-timeout ${secs(STARTUP_TIMEOUT)}); server connections still opening: ${serverCounts(proxy, tenant).login}`,
      );
      expect(r.hung, 'the login hangs').toBe(false);
      expect(UNREACHABLE, said(r)).toContain(r.code);
      expect(r.ms).toBeLessThan(CONNECT_TIMEOUT + 1000);
      expect(serverCounts(proxy, tenant).login).toBe(0);
    } finally {
      b.abandon();
      await relay.pass();
      await a.query('COMMIT').catch(() => undefined);
    }
  });

  // A server (or load balancer) that closes the connection before it answers the SSLRequest fails the login at once,
  // and the pool slot of the backend being opened comes back.
  it('dropped (accepted, closed at once), a new backend needed: the login gets 08006/57P03 at once', async () => {
    // A tenant of its own, so that its pool counts only this test's backends.
    const tenant = await fx.newTenant('drop', PASSWORD);
    await listenersUp();
    const a = await client(proxy, tenant);
    await a.query('BEGIN');
    await a.query('SELECT 1');
    await relay.drop();
    const b = loginAttempt(proxy, tenant);
    try {
      const r = await b.settled;
      observed.push(`dropped upstream connections (${poolMode}), login needing a new backend: ${r.hung ? 'no answer' : said(r)} after ${secs(r.ms)}`);
      expect(r.hung, 'the login hangs').toBe(false);
      expect(UNREACHABLE, said(r)).toContain(r.code);
      expect(r.ms).toBeLessThan(CONNECT_TIMEOUT + 1000);
    } finally {
      b.abandon();
      await relay.pass();
      await a.query('COMMIT').catch(() => undefined);
      await sleep(500);
    }
    expect(serverCounts(proxy, tenant).login).toBe(0);
  });

  it('after a blackhole that also cut every open connection, new logins work once it ends, without restarting the proxy', async () => {
    await loginUntilOk(proxy, tenant);
    await relay.blackhole();
    relay.reset();
    await sleep(CONNECT_TIMEOUT + 500);
    await relay.pass();
    const recovered = await loginUntilOk(proxy, tenant);
    observed.push(`blackhole + reset (${poolMode}): logins work again ${secs(recovered)} after it ends`);
  });
});

describe('upstream unreachable: the tenant registry', () => {
  // The tenant directory's connections and lookups time out after --connect-timeout: once the LISTEN connection is
  // lost the cache is cleared, and a lookup against a server that never answers fails (57P03) instead of waiting.
  it('a login that must read the registry from a blackholed server gets 57P03 within connectTimeout', async () => {
    const proxy = proxies.get('session')!;
    const tenant = await fx.newTenant('registry', PASSWORD);
    await loginUntilOk(proxy, tenant);
    await relay.blackhole();
    relay.reset(); // the LISTEN connection is lost: the cache is dropped and the next lookup goes to the server
    const b = loginAttempt(proxy, tenant);
    try {
      const r = await b.settled;
      observed.push(`blackholed upstream, login reading the registry: ${r.hung ? 'no answer' : said(r)} after ${secs(r.ms)} (--startup-timeout ${secs(STARTUP_TIMEOUT)})`);
      expect(r.hung, 'the login hangs').toBe(false);
      expect(UNREACHABLE, said(r)).toContain(r.code);
      expect(r.ms).toBeLessThan(CONNECT_TIMEOUT + 1000);
    } finally {
      b.abandon();
      await relay.pass();
    }
  });
});

describe('upstream connections closed at once, with sslmode=disable', () => {
  it('a login that needs a new backend gets 08006 at once, and logins work once the server accepts again', async () => {
    const u = new URL(relay.urlFor(fx.db.url));
    u.searchParams.set('sslmode', 'disable');
    const proxy = await fx.startProxy({ upstream: u.toString(), connectTimeout: CONNECT_TIMEOUT, startupTimeout: STARTUP_TIMEOUT });
    const tenant = await fx.newTenant('plain', PASSWORD);
    const a = await client(proxy, tenant);
    await relay.drop();
    const b = loginAttempt(proxy, tenant);
    try {
      const r = await b.settled;
      observed.push(`dropped upstream connections (sslmode=disable), login needing a new backend: ${said(r)} after ${secs(r.ms)}`);
      expect(r.code, said(r)).toBe('08006');
      expect(r.ms).toBeLessThan(CONNECT_TIMEOUT + 1000);
    } finally {
      b.abandon();
      await relay.pass();
    }
    expect((await a.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    await loginUntilOk(proxy, tenant);
    expect(serverCounts(proxy, tenant).login).toBe(0);
  });
});

describe('/readyz follows the upstream behind the fault relay', () => {
  let runtime: Runtime;
  let base: string;
  const token = randomBytes(16).toString('hex');
  beforeAll(async () => {
    const config = resolveConfig({
      flags: { upstream: relay.urlFor(fx.db.url), listen: '127.0.0.1:0', adminListen: '127.0.0.1:0', adminToken: token, connectTimeout: CONNECT_TIMEOUT },
      env: {},
    });
    runtime = await startRuntime({ config, log: silentLogger });
    base = `http://127.0.0.1:${runtime.admin!.address.port}`;
  });
  afterAll(async () => {
    await runtime?.close(0);
  });

  const readyz = async () => (await fetchJson(`${base}/readyz`, { headers: { authorization: `Bearer ${token}` } })).status;
  async function statusBecomes(status: number): Promise<number> {
    return eventually(`/readyz never answered ${status}`, async () => (await readyz()) === status, 8000);
  }

  it('answers 503 while the upstream is blackholed or refused (within connectTimeout), and 200 once it is back', async () => {
    expect(await readyz()).toBe(200);
    await relay.blackhole();
    const blackholed = await statusBecomes(503);
    await relay.pass();
    const back = await statusBecomes(200);
    relay.refuse();
    relay.reset();
    const refused = await statusBecomes(503);
    await relay.pass();
    const back2 = await statusBecomes(200);
    observed.push(
      `/readyz: 503 after ${secs(blackholed)} (blackhole) and ${secs(refused)} (refused); 200 again after ${secs(back)} and ${secs(back2)}`,
    );
    expect(blackholed).toBeLessThan(CONNECT_TIMEOUT + 3000);
  });
});

describe.each(MODES)('connections reset by the network (%s mode)', (poolMode) => {
  let proxy: TestProxy;
  let tenant: string;
  beforeAll(async () => {
    proxy = proxies.get(poolMode)!;
    tenant = await fx.newTenant('reset', PASSWORD);
    await loginUntilOk(proxy, tenant);
  });

  it('idle clients: session mode closes them (their backend is gone); transaction mode carries on with a new backend', async () => {
    const [a, b] = [await client(proxy, tenant), await client(proxy, tenant)];
    await Promise.all([a.query('SELECT 1'), b.query('SELECT 1')]);
    const ended = sessionEnd(a, 5000);
    const n = relay.reset();
    expect(n).toBeGreaterThan(0);
    if (poolMode === 'session') {
      const { error } = await ended;
      observed.push(`reset, idle client (session): connection closed, ${error ? `${error.code ?? 'no SQLSTATE'} "${error.message}"` : 'no error message'}`);
      // The server said nothing before it went: the proxy says 08006, not a bare close.
      expect((error as { code?: string } | null)?.code).toBe('08006');
      const r = await settle(b.query('SELECT 1'));
      expect(r.ok).toBe(false);
      observed.push(`reset, idle client's next query (session): ${said(r)}`);
    } else {
      ended.catch(() => undefined);
      await sleep(200);
      const r = await settle(a.query('SELECT 1 AS one'));
      observed.push(`reset, idle client's next query (transaction): ${said(r)} after ${r.ms} ms`);
      expect(r.ok, said(r)).toBe(true);
      expect((await b.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    }
    const recovered = await loginUntilOk(proxy, tenant);
    observed.push(`reset (${poolMode}): a new login works after ${secs(recovered)}`);
  });

  it('clients mid-query get an error at once; new logins work', async () => {
    const a = await client(proxy, tenant);
    const b = await client(proxy, tenant);
    await b.query('SELECT 1');
    const running = settle(a.query('SELECT pg_catalog.pg_sleep(5)'));
    await activeBackend(tenant, 'SELECT pg_catalog.pg_sleep(5)');
    const at = Date.now();
    relay.reset();
    const r = await running;
    const ms = Date.now() - at;
    observed.push(`reset mid-query (${poolMode}): ${said(r)} after ${ms} ms`);
    expect(r.ok).toBe(false);
    expect(r.code, said(r)).toBe('08006');
    expect(ms).toBeLessThan(2000);
    const other = await settle(b.query('SELECT 1'));
    observed.push(`reset mid-query (${poolMode}), an idle client of the same tenant: ${said(other)}`);
    // In transaction mode an idle client holds no backend: it is untouched. In session mode its backend went too.
    expect(other.ok, said(other)).toBe(poolMode === 'transaction');
    const recovered = await loginUntilOk(proxy, tenant);
    observed.push(`reset mid-query (${poolMode}): a new login works after ${secs(recovered)}`);
  });
});

describe.each(MODES)('a slow network: every chunk delayed 200 ms each way (%s mode)', (poolMode) => {
  it('logins and queries still succeed, only slower', async () => {
    // connectTimeout left at its default: the login itself takes several delayed round trips.
    const proxy = await fx.startProxy({ upstream: relay.urlFor(fx.db.url), poolMode });
    const tenant = await fx.newTenant('slow', PASSWORD);
    await relay.delay(200);
    try {
      const start = Date.now();
      const c = await client(proxy, tenant);
      const login = Date.now() - start;
      const q = Date.now();
      await c.query('CREATE TABLE t (v int)');
      await c.query('INSERT INTO t SELECT generate_series(1, 1000)');
      const { rows } = await c.query('SELECT count(*)::int AS n, sum(v)::int AS s FROM t');
      expect(rows).toEqual([{ n: 1000, s: 500500 }]);
      observed.push(`delay 200 ms (${poolMode}): login ${secs(login)}, three statements ${secs(Date.now() - q)}`);
    } finally {
      await relay.pass();
    }
  });
});

describe.each(MODES)('pg_terminate_backend from the superuser (%s mode)', (poolMode) => {
  let proxy: TestProxy;
  let tenant: string;
  beforeAll(async () => {
    proxy = proxies.get(poolMode)!;
    tenant = await fx.newTenant('term', PASSWORD);
    await loginUntilOk(proxy, tenant);
  });

  it('the client whose backend it was gets 57P01; another client of the tenant and a new one keep working', async () => {
    const [a, b] = [await client(proxy, tenant), await client(proxy, tenant)];
    // In transaction mode a client owns a backend only inside a transaction.
    if (poolMode === 'transaction') await a.query('BEGIN');
    const pid = await backendPid(a);
    await b.query('SELECT 1');
    const ended = sessionEnd(a, 5000);
    const at = Date.now();
    ownFaults++;
    expect((await fx.admin.query('SELECT pg_catalog.pg_terminate_backend($1) AS ok', [pid])).rows[0].ok).toBe(true);
    const { error } = await ended;
    observed.push(`pg_terminate_backend (${poolMode}${poolMode === 'transaction' ? ', in a transaction' : ''}): ${error?.code ?? 'no SQLSTATE'} "${error?.message}" after ${Date.now() - at} ms`);
    expect(error?.code).toBe('57P01');
    expect((await b.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    const c = await client(proxy, tenant);
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
  });
});

describe('pg_terminate_backend of a backend idle in the pool (transaction mode)', () => {
  it('is replaced unseen: the client that used it last runs its next query on another backend', async () => {
    const proxy = proxies.get('transaction')!;
    const tenant = await fx.newTenant('termidle', PASSWORD);
    const a = await client(proxy, tenant);
    const pid = await backendPid(a);
    expect(serverCounts(proxy, tenant)).toEqual({ login: 0, active: 0, idle: 1 });
    ownFaults++;
    await fx.admin.query('SELECT pg_catalog.pg_terminate_backend($1)', [pid]);
    // The pool watches its idle backends: the dead one leaves it without anyone asking. (A query sent in the same
    // instant as the server's goodbye would still meet it, as with any pooler.)
    const dropped = await eventually('the pool dropped the terminated backend', () => serverCounts(proxy, tenant).idle === 0);
    const r = await settle(a.query('SELECT current_user AS u'));
    observed.push(`pg_terminate_backend of an idle pooled backend (transaction): dropped from the pool after ${dropped} ms, the next query ${said(r)}`);
    expect(r.ok, said(r)).toBe(true);
    expect(await backendPid(a)).not.toBe(pid);
  });
});

describe('a FATAL that comes with the last ReadyForQuery of a transaction (transaction mode)', () => {
  it('the backend is not given back: the next client of the tenant gets another one, not a dead one and an 08006', async () => {
    const proxy = proxies.get('transaction')!;
    const tenant = await fx.newTenant('termcommit', PASSWORD);
    const a = await client(proxy, tenant);
    await a.query('BEGIN');
    const pid = await backendPid(a);
    const state = async () => (await fx.admin.query('SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid])).rows[0]?.state ?? 'gone';
    // COMMIT reaches the server; its answer is held while the backend is terminated, then arrives with the FATAL
    // in one chunk, and the server's close comes only later (as when a kill lands right after a COMMIT).
    relay.holdReplies();
    relay.holdCloses();
    try {
      const committed = settle(a.query('COMMIT'));
      await eventually('the server ran the COMMIT', async () => (await state()) === 'idle');
      ownFaults++;
      await fx.admin.query('SELECT pg_catalog.pg_terminate_backend($1)', [pid]);
      await eventually('the backend exited', async () => (await state()) === 'gone');
      const fatal = new Promise<Error & { code?: string }>((resolve) => a.once('error', resolve));
      relay.releaseReplies();
      expect((await committed).ok).toBe(true);
      expect((await fatal).code).toBe('57P01');
      // The client leaves before the proxy hears the server close.
      await a.end();
      await eventually("a's session ended", () => [...proxy.server.sessions().keys()].every((s) => s.tenant !== tenant));
      const b = await client(proxy, tenant);
      const r = await settle(b.query('SELECT current_user AS u'));
      observed.push(`a FATAL arriving with a transaction's last ReadyForQuery, its client gone before the close (transaction): the next client ${said(r)}`);
      expect(r.ok, said(r)).toBe(true);
      expect(await backendPid(b)).not.toBe(pid);
    } finally {
      relay.releaseReplies();
      relay.releaseCloses();
    }
  });
});

/** COPY ... FROM STDIN through pg's submittable interface: `started` resolves once the first CopyData is sent. */
class CopyFromStdin implements pg.Submittable {
  readonly started: Promise<void>;
  readonly done: Promise<void>;
  private onStarted!: () => void;
  private onDone!: () => void;
  private onError!: (err: Error) => void;
  constructor(private readonly text: string) {
    this.started = new Promise((resolve) => (this.onStarted = resolve));
    this.done = new Promise((resolve, reject) => {
      this.onDone = resolve;
      this.onError = reject;
    });
    this.done.catch(() => undefined);
  }
  submit(connection: pg.Connection): void {
    connection.query(this.text);
  }
  handleCopyInResponse(connection: pg.Connection & { sendCopyFromChunk(b: Buffer): void }): void {
    connection.sendCopyFromChunk(Buffer.from('1\n2\n3\n'));
    this.onStarted();
  }
  handleError(err: Error): void {
    this.onError(err);
  }
  handleReadyForQuery(): void {
    this.onDone();
  }
  handleCommandComplete(): void {}
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {}
  handleCopyData(): void {}
  handlePortalSuspended(): void {}
}

describe.each(MODES)('a client that vanishes mid-query (%s mode)', (poolMode) => {
  let proxy: TestProxy;
  beforeAll(() => {
    proxy = proxies.get(poolMode)!;
  });

  /**
   * Starts `work` on a fresh tenant's client, destroys the client's socket once the server runs `prefix`,
   * then expects the backend to stop within 5 s and the tenant's pool to hold no server connection for it.
   */
  async function vanish(what: string, prefix: string, work: (c: pg.Client) => Promise<void>): Promise<void> {
    const tenant = await fx.newTenant('gone', PASSWORD);
    const c = await client(proxy, tenant);
    await c.query('CREATE TABLE t (v int)');
    const sessionsBefore = proxy.server.sessions().size;
    await work(c);
    const pid = await activeBackend(tenant, prefix);
    ownFaults++;
    c.connection.stream.destroy();
    const stopped = await eventually(`backend ${pid} still runs ${prefix}`, async () => {
      const { rows } = await fx.admin.query('SELECT state, query FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid]);
      return !rows[0] || rows[0].state !== 'active';
    });
    const released = await eventually(`the pool still holds a server connection for ${tenant}: ${JSON.stringify(serverCounts(proxy, tenant))}`, () => {
      const s = serverCounts(proxy, tenant);
      return s.active + s.login === 0 && proxy.server.sessions().size < sessionsBefore;
    });
    observed.push(`client vanished during ${what} (${poolMode}): backend stopped after ${stopped} ms, pool released after ${released} ms`);
  }

  it('during pg_sleep(30): the proxy cancels the query and closes the backend', async () => {
    await vanish('pg_sleep(30)', 'SELECT pg_catalog.pg_sleep(30)', async (c) => {
      c.query('SELECT pg_catalog.pg_sleep(30)').catch(() => undefined);
    });
  });

  it('in the middle of COPY FROM STDIN (one CopyData sent)', async () => {
    await vanish('COPY FROM STDIN', 'COPY t FROM STDIN', async (c) => {
      const copy = c.query(new CopyFromStdin('COPY t FROM STDIN'));
      await copy.started;
    });
  });

  it('during a long COPY TO STDOUT it stopped reading', async () => {
    await vanish('COPY TO STDOUT (not reading)', 'COPY (SELECT', async (c) => {
      c.query('COPY (SELECT generate_series(1, 10000000)) TO STDOUT').catch(() => undefined);
      await sleep(100);
      c.connection.stream.pause();
      await sleep(300);
    });
  });
});

describe('PostgreSQL restarted under load (a server of its own)', () => {
  const own: ProxyServer[] = [];
  afterAll(async () => {
    await Promise.allSettled(own.map((p) => p.close(0)));
  });

  it('in-flight queries fail with a SQLSTATE, the same proxies serve again after the restart, and no client sees another tenant', async () => {
    const dataDir = path.join(ownServerDir, 'data');
    let server = await ownServer!;
    const port = server.port;
    const admin = new pg.Pool({ connectionString: server.url, max: 2 });
    admin.on('error', () => undefined);
    const tenantIds = [uniqueTenantId('rsa'), uniqueTenantId('rsb')];
    try {
      const c = await admin.connect();
      try {
        await installControlSchema(c);
      } finally {
        c.release();
      }
      const service = new TenantService(admin, { isolation: 'role', migrationsDir: null });
      for (const id of tenantIds) await service.create(id, { password: PASSWORD });
    } finally {
      await admin.end();
    }
    const flags = { upstream: server.url, listen: '127.0.0.1:0', adminListen: 'off', connectTimeout: CONNECT_TIMEOUT };
    for (const poolMode of MODES) own.push(await startProxy({ config: resolveConfig({ flags: { ...flags, poolMode }, env: {} }), log: silentLogger }));
    const config = (p: ProxyServer, user: string): pg.ClientConfig => ({
      host: '127.0.0.1',
      port: p.address.port,
      user,
      password: PASSWORD,
      database: 'postgres',
      connectionTimeoutMillis: 5000,
    });
    for (const id of tenantIds) {
      const c = await connectPg(config(own[0]!, id));
      await c.query('CREATE TABLE t (v text); INSERT INTO t VALUES ($$' + id + '$$)');
      await c.end();
    }

    // One looping client per (proxy, tenant): each query sleeps a little, so most are in flight at the stop.
    let phase: 'before' | 'down' | 'after' = 'before';
    let stop = false;
    const results = own.flatMap((p, i) =>
      tenantIds.map((id) => ({ name: `${MODES[i]}/${id}`, proxy: p, id, okBefore: 0, okAfter: 0, foreign: 0, inFlight: [] as Settled[], logins: [] as string[], firstOkAfter: -1 })),
    );
    let restartedAt = 0;
    const loops = results.map(async (result) => {
      let c: pg.Client | null = null;
      // A FATAL that lands between two queries comes as an 'error' event; the next query then fails in pg itself.
      const between: { error: (Error & { code?: string }) | null } = { error: null };
      while (!stop) {
        if (!c) {
          between.error = null;
          const attempt = new pg.Client(config(result.proxy, result.id));
          attempt.on('error', (err) => (between.error ??= err));
          const r = await settle(attempt.connect());
          if (!r.ok) {
            result.logins.push(r.code ?? r.message);
            await attempt.end().catch(() => undefined);
            await sleep(100);
            continue;
          }
          c = attempt;
        }
        const q = c.query<{ v: string }>('SELECT v, pg_catalog.pg_sleep(0.1) FROM t');
        const r = await settle(q);
        if (r.ok) {
          result.foreign += (await q).rows.filter((row) => row.v !== result.id).length;
          if (phase === 'before') result.okBefore++;
          if (phase === 'after' && result.okAfter++ === 0) result.firstOkAfter = Date.now() - restartedAt;
          continue;
        }
        if (result.okAfter === 0) result.inFlight.push(r.code === undefined && between.error ? { ...r, code: between.error.code, message: between.error.message } : r);
        await c.end().catch(() => undefined);
        c = null;
      }
      await c?.end().catch(() => undefined);
    });

    await sleep(800);
    ownFaults++;
    const stoppedAt = Date.now();
    phase = 'down';
    await server.stop();
    const downMs = Date.now() - stoppedAt;
    await sleep(500);
    const restarting = Date.now();
    ownServer = startEmbeddedPostgres({ dataDir, persistent: true, port });
    server = await ownServer;
    restartedAt = Date.now();
    const startMs = restartedAt - restarting;
    phase = 'after';
    try {
      await eventually('every looping client works again after the restart', () => results.every((r) => r.okAfter > 0), 20_000);
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    for (const r of results) {
      observed.push(
        `restart (${r.name}): failed queries at the stop: ${r.inFlight.map(said).join('; ') || 'none'}; failed logins while down [${[...new Set(r.logins)].join(', ')}]; ` +
          `first success ${secs(r.firstOkAfter)} after the server was back`,
      );
    }
    observed.push(`restart: the server's fast shutdown took ${secs(downMs)}, its start ${secs(startMs)}`);
    const foreign = results.reduce((n, r) => n + r.foreign, 0);
    expect(foreign).toBe(0);
    for (const r of results) {
      expect(r.okBefore, r.name).toBeGreaterThan(0);
      expect(r.inFlight.length, `${r.name} saw the restart`).toBeGreaterThan(0);
      for (const f of r.inFlight) expect(f.code, `${r.name}: ${said(f)}`).toMatch(/^(57P01|57P03|08006)$/);
      expect(r.okAfter, `${r.name} works again after the restart`).toBeGreaterThan(0);
    }
  });
});
