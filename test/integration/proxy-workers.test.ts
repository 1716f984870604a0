// `pgtenant proxy --workers 2` as real processes: shared port and spread, cancels across workers, split limits, the admin API summed over workers, a killed worker replaced, SIGTERM, a failed start, and --workers validation.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { TenantConnections } from '../../src/proxy/activity.js';
import { TenantService } from '../../src/tenants/service.js';
import { fetchJson, parseMetrics, sampleValue } from '../support/admin.js';
import { bin, runCli, uniqueTenantId, type TestDatabase } from '../support/db.js';
import { Cli, pidsWith, until } from '../support/cli-process.js';
import { backendKey, cancelRequest, connectPg, initializedDatabase, rejection, sessionEnd, sleep, tcpConnect } from '../support/proxy.js';

const PASSWORD = 'workers-password-1';
const TOKEN = randomBytes(16).toString('hex');
/** Short, so the SIGTERM test's drain does not dominate the file's run time, long enough to query during it. */
const SHUTDOWN_TIMEOUT_MS = 2500;

let db: TestDatabase;
let admin: pg.Pool;
let tenants: TenantService;
/** Every tenant made here: the limits test counts all of the proxy's backends through them. */
const made: string[] = [];
const clients: pg.Client[] = [];
const spawned: Cli[] = [];

/** The shared `--workers 2` proxy, its proxy port and admin API base URL. */
let proxy: Cli;
let port: number;
let adminBase: string;

async function newTenant(prefix: string): Promise<string> {
  const id = uniqueTenantId(prefix);
  await tenants.create(id, { password: PASSWORD });
  made.push(id);
  return id;
}

const clientConfig = (tenant: string): pg.ClientConfig => ({
  host: '127.0.0.1',
  port,
  user: tenant,
  password: PASSWORD,
  database: db.name,
  connectionTimeoutMillis: 5000,
});

async function connect(tenant: string): Promise<pg.Client> {
  const c = await connectPg(clientConfig(tenant));
  clients.push(c);
  return c;
}

/** Ends a client without hanging on one whose connection is already gone. */
const endQuietly = (c: pg.Client): Promise<unknown> => Promise.race([c.end().catch(() => undefined), sleep(1000)]);

/** The worker slot that issued the client's cancel key. */
const slotOf = (c: pg.Client): number => backendKey(c).processId & 0xff;

/** One session on each worker; connects until both slots are covered (round-robin makes it two connects). */
async function onBothWorkers(tenant: string): Promise<{ bySlot: [pg.Client, pg.Client]; connects: number }> {
  const bySlot: (pg.Client | undefined)[] = [];
  let connects = 0;
  while ((!bySlot[0] || !bySlot[1]) && connects < 8) {
    const c = await connect(tenant);
    connects++;
    const slot = slotOf(c);
    if (bySlot[slot]) await endQuietly(c);
    else bySlot[slot] = c;
  }
  if (!bySlot[0] || !bySlot[1]) throw new Error(`${connects} connections did not reach both workers`);
  return { bySlot: [bySlot[0], bySlot[1]], connects };
}

function api(method: string, path: string): ReturnType<typeof fetchJson> {
  return fetchJson(adminBase + path, { method, headers: { authorization: `Bearer ${TOKEN}` } });
}

/** The tenant's entry of GET /v1/connections (all zero when it has none). */
async function liveOf(tenant: string): Promise<TenantConnections> {
  const r = await api('GET', '/v1/connections');
  expect(r.status).toBe(200);
  const found = (r.json.tenants as TenantConnections[]).find((t) => t.tenant === tenant);
  return (
    found ?? {
      tenant,
      clients: { login: 0, waiting: 0, idle: 0, active: 0, idle_in_transaction: 0, idle_in_transaction_aborted: 0 },
      servers: { login: 0, active: 0, idle: 0 },
    }
  );
}

const total = (counts: Record<string, number>): number => Object.values(counts).reduce((a, b) => a + b, 0);

/** Backends the server has for these roles (in role isolation, the proxy's backends log in as the tenant). */
async function backendsOf(roles: readonly string[]): Promise<number> {
  const { rows } = await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1)', [roles]);
  return rows[0]!.n;
}

const backendPid = async (c: pg.Client): Promise<number> => (await c.query('SELECT pg_catalog.pg_backend_pid() AS pid')).rows[0].pid;

/** Waits until the backend of `pid` is running its pg_sleep, so a cancel cannot arrive before the query. */
async function waitActive(pid: number): Promise<void> {
  const running = await until(async () => {
    const { rows } = await admin.query("SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'", [pid]);
    return rows[0]?.state === 'active';
  });
  if (!running) throw new Error(`backend ${pid} never started its query`);
}

/** Sends a CancelRequest on a new connection and resolves, once the proxy closed it, with the local port it came from. */
function sendCancel(processId: number, secretKey: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let localPort = 0;
    socket.setTimeout(5000, () => socket.destroy(new Error('the proxy kept the CancelRequest connection open')));
    socket.once('connect', () => {
      localPort = socket.localPort!;
      socket.write(cancelRequest(processId, secretKey));
    });
    socket.on('error', (err) => {
      if (!localPort) reject(err);
    });
    socket.once('close', () => (localPort ? resolve(localPort) : reject(new Error('the CancelRequest connection failed'))));
  });
}

/** The worker whose session took the CancelRequest from `localPort`, read from its `session ended` log line. */
async function landedOn(localPort: number, from: number): Promise<number> {
  const line = await proxy.line(
    (l) => l.msg === 'session ended' && l.outcome === 'cancel_request' && String(l.client).endsWith(`:${localPort}`),
    `for the CancelRequest from port ${localPort}`,
    from,
  );
  return line.worker!;
}

/** True when this process can listen on the port (nothing holds it any more). */
function portFree(to: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(to, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

const portOf = (listen: string | undefined): number => Number(String(listen).split(':').pop());

beforeAll(async () => {
  ({ db, admin } = await initializedDatabase());
  tenants = new TenantService(admin, { isolation: 'role', migrationsDir: null });
  // --pool-size 4 and --max-backends 6 differ in how they split (2 and 3 per worker), so the limits test tells them apart.
  proxy = new Cli(
    [
      'proxy', '--workers', '2', '--upstream', db.url, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--admin-token', TOKEN,
      '--pool-size', '4', '--max-backends', '6', '--shutdown-timeout', String(SHUTDOWN_TIMEOUT_MS),
    ],
    db.name,
  );
  spawned.push(proxy);
  const listening = await proxy.line((l) => l.msg === 'proxy workers listening', "'proxy workers listening'");
  port = portOf(listening.listen);
  const adminLine = await proxy.line((l) => l.msg === 'admin API listening', "'admin API listening'");
  adminBase = `http://127.0.0.1:${portOf(adminLine.listen)}`;
  // Workers log asynchronously: their lines may trail the primary's.
  for (const slot of [0, 1]) await proxy.line((l) => l.msg === 'proxy listening' && l.worker === slot, `'proxy listening' of worker ${slot}`);
});

// Sessions hold their backends (session pooling): one test's would count against the next one's limits.
afterEach(async () => {
  await Promise.all(clients.splice(0).map(endQuietly));
  if (!proxy?.exit) await until(async () => (await api('GET', '/v1/connections').catch(() => null))?.json?.clients === 0);
});

afterAll(async () => {
  await Promise.all(clients.map(endQuietly));
  await Promise.all(spawned.map((p) => p.kill()));
  await admin?.end();
  await db?.drop();
});

describe('a proxy with --workers 2', () => {
  it('starts two worker processes on one shared port, and the primary says so once both listen', () => {
    const primary = proxy.lines.filter((l) => l.msg === 'proxy workers listening');
    expect(primary).toHaveLength(1);
    expect(primary[0]).toMatchObject({ component: 'cluster', workers: 2, pid: proxy.child.pid, listen: `127.0.0.1:${port}` });
    expect(port).toBeGreaterThan(0);

    const workers = proxy.lines.filter((l) => l.msg === 'proxy listening').sort((a, b) => a.worker! - b.worker!);
    expect(workers.map((w) => w.worker)).toEqual([0, 1]);
    for (const w of workers) expect(w.listen).toBe(`127.0.0.1:${port}`);
    const workerPids = workers.map((w) => w.pid!);
    expect(new Set(workerPids).size).toBe(2);
    expect(workerPids).not.toContain(proxy.child.pid);
    // Exactly three processes: the primary and its two workers.
    expect(pidsWith(db.name)).toEqual([proxy.child.pid!, ...workerPids].sort((a, b) => a - b));
  });

  it('hands consecutive connections to the workers in turn; each cancel key names its worker in the low byte', async () => {
    const tenant = await newTenant('wspread');
    const slots: number[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await connect(tenant);
      expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
      slots.push(slotOf(c));
    }
    expect(new Set(slots)).toEqual(new Set([0, 1]));
    expect(slots[1]).not.toBe(slots[0]);
    expect(slots[2]).toBe(slots[0]);
    expect(slots[3]).toBe(slots[1]);
  });

  it('a CancelRequest stops pg_sleep in a session on either worker, whether it lands on that worker or is forwarded from the other', async () => {
    const tenant = await newTenant('wcancel');
    const { bySlot } = await onBothWorkers(tenant);
    const seen = new Set<string>();
    // Two cancels in a row per session: round-robin sends the second to the other worker.
    for (let i = 0; i < 16 && seen.size < 4; i++) {
      const slot = Math.floor(i / 2) % 2;
      const c = bySlot[slot]!;
      const pid = await backendPid(c);
      const query = rejection(c.query('SELECT pg_catalog.pg_sleep(30)'));
      await waitActive(pid);
      const from = proxy.lines.length;
      const { processId, secretKey } = backendKey(c);
      const localPort = await sendCancel(processId, secretKey);
      expect((await query).code).toBe('57014');
      seen.add(`session on ${slot}, cancel on ${await landedOn(localPort, from)}`);
    }
    expect([...seen].sort()).toEqual(['session on 0, cancel on 0', 'session on 0, cancel on 1', 'session on 1, cancel on 0', 'session on 1, cancel on 1']);
    for (const c of bySlot) expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it('a CancelRequest with a wrong secret cancels nothing, on the worker of the session or the other', async () => {
    const tenant = await newTenant('wcancelbad');
    const c = await connect(tenant);
    const pid = await backendPid(c);
    let settled = false;
    const query = rejection(c.query('SELECT pg_catalog.pg_sleep(30)')).finally(() => (settled = true));
    await waitActive(pid);
    const { processId, secretKey } = backendKey(c);
    const landed = new Set<number>();
    for (let i = 0; i < 8 && landed.size < 2; i++) {
      const from = proxy.lines.length;
      landed.add(await landedOn(await sendCancel(processId, secretKey ^ 1), from));
    }
    expect([...landed].sort()).toEqual([0, 1]);
    // Absence of an effect needs a moment to show: a forwarded cancel crosses two IPC hops, then one to the server.
    await sleep(500);
    expect(settled).toBe(false);
    const { rows } = await admin.query('SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1', [pid]);
    expect(rows[0]?.state).toBe('active');
    await sendCancel(processId, secretKey);
    expect((await query).code).toBe('57014');
  });

  it('splits the limits: a pool of 4 is 2 backends per worker, --max-backends 6 is 3 per worker, and the server never sees more', async () => {
    const busy = await newTenant('wlim');
    const other = await newTenant('wlim');
    const all: pg.Client[] = [];
    /** Connects n clients one after the other (each counted by the proxy before the next), so round-robin spreads them evenly. */
    const queue = async (tenant: string, n: number): Promise<{ client: pg.Client; connected: boolean }[]> => {
      const out: { client: pg.Client; connected: boolean }[] = [];
      for (let i = 0; i < n; i++) {
        const client = new pg.Client(clientConfig(tenant));
        client.on('error', () => undefined);
        all.push(client);
        const entry = { client, connected: false };
        out.push(entry);
        client.connect().then(
          () => (entry.connected = true),
          () => undefined,
        );
        const counted = await until(async () => total((await liveOf(tenant)).clients) === i + 1);
        if (!counted) throw new Error(`client ${i + 1} of ${tenant} never reached the proxy`);
      }
      return out;
    };
    try {
      const first = await queue(busy, 6);
      const busyCapped = await until(async () => (await backendsOf([busy])) === 4 && (await liveOf(busy)).clients.waiting === 2);
      expect(busyCapped).toBe(true);
      const busyLive = await liveOf(busy);
      expect(busyLive.clients).toMatchObject({ idle: 4, waiting: 2 });
      expect(busyLive.servers.active).toBe(4);
      expect(await backendsOf([busy])).toBe(4);
      // Two on each worker: neither worker's share of the pool can hold more.
      const served = first.filter((e) => e.connected).map((e) => slotOf(e.client));
      expect(served.sort()).toEqual([0, 0, 1, 1]);

      await queue(other, 4);
      // Each worker holds 2 of busy's and may add 1 of other's (idle backends of earlier tests are evicted for it).
      const globalCapped = await until(
        async () => (await backendsOf([other])) === 2 && (await backendsOf(made)) === 6 && (await liveOf(other)).clients.waiting === 2,
      );
      expect(globalCapped).toBe(true);
      expect(await backendsOf([busy])).toBe(4);
      expect(await backendsOf(made)).toBe(6);
      const otherLive = await liveOf(other);
      expect(otherLive.servers.active).toBe(2);
      expect(otherLive.clients).toMatchObject({ idle: 2, waiting: 2 });
    } finally {
      await Promise.all(all.map(endQuietly));
    }
  });

  it('the admin API sums connections and metrics over both workers, and a disconnect ends the tenant\'s sessions on both', async () => {
    expect((await api('GET', '/readyz')).status).toBe(200);
    const tenant = await newTenant('wadmin');
    const { bySlot, connects } = await onBothWorkers(tenant);
    expect(await until(async () => total((await liveOf(tenant)).clients) === 2)).toBe(true);
    const live = await liveOf(tenant);
    expect(live.clients.idle).toBe(2);
    expect(live.servers.active).toBe(2);

    const shown = await api('GET', `/v1/tenants/${tenant}`);
    expect(shown.status).toBe(200);
    expect(shown.json.connections.clients.idle).toBe(2);
    expect(shown.json.connections.servers.active).toBe(2);

    const scraped = await api('GET', '/metrics');
    expect(scraped.status).toBe(200);
    const samples = parseMetrics(scraped.text);
    expect(sampleValue(samples, 'pgtenant_sessions_started_total', { tenant })).toBe(connects);
    expect(sampleValue(samples, 'pgtenant_client_connections', { tenant, state: 'idle' })).toBe(2);
    expect(sampleValue(samples, 'pgtenant_server_connections', { tenant, state: 'active' })).toBe(2);
    // The primary's own series are in the same scrape: it counted the admin requests above.
    expect(sampleValue(samples, 'pgtenant_admin_requests_total')).toBeGreaterThan(0);
    // One series per label set, not one per process.
    const started = samples.filter((s) => s.name === 'pgtenant_sessions_started_total' && s.labels.tenant === tenant);
    expect(started).toHaveLength(1);

    const ended = bySlot.map((c) => sessionEnd(c, 5000));
    const r = await api('POST', `/v1/tenants/${tenant}/disconnect`);
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ tenant, disconnected: 2 });
    for (const e of await Promise.all(ended)) expect(e.error?.code).toBe('57P01');
    expect(await until(async () => total((await liveOf(tenant)).clients) === 0)).toBe(true);
  });

  it('a worker killed with SIGKILL is replaced in its slot; the session on the other worker carries on', async () => {
    const tenant = await newTenant('wkill');
    const { bySlot } = await onBothWorkers(tenant);
    const from = proxy.lines.length;
    const victim = proxy.lines.filter((l) => l.msg === 'proxy listening' && l.worker === 0).at(-1)!.pid!;
    const survivor = bySlot[1];
    const survivorKey = backendKey(survivor);
    const lost = sessionEnd(bySlot[0], 10_000);

    process.kill(victim, 'SIGKILL');
    const exitLine = await proxy.line((l) => l.msg === 'proxy worker exited; starting another' && l.worker === 0, 'about the dead worker', from);
    expect(exitLine).toMatchObject({ pid: proxy.child.pid, signal: 'SIGKILL' });
    await lost;
    expect((await survivor.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);

    const restarted = await proxy.line((l) => l.msg === 'proxy listening' && l.worker === 0, 'of the new worker 0', from);
    expect(restarted.pid).not.toBe(victim);
    expect(restarted.listen).toBe(`127.0.0.1:${port}`);
    expect(await until(() => !pidsWith(db.name).includes(victim))).toBe(true);
    expect(pidsWith(db.name)).toHaveLength(3);

    const again = await onBothWorkers(tenant);
    for (const c of again.bySlot) expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    expect(backendKey(survivor)).toEqual(survivorKey);
    expect((await survivor.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    // The admin API asks the new worker too.
    expect(await until(async () => (await liveOf(tenant)).clients.idle === 3)).toBe(true);
  });

  it('SIGTERM drains both workers, then every process exits, the primary with 0, and the ports are free', async () => {
    const tenant = await newTenant('wterm');
    const c = await connect(tenant);
    const ended = sessionEnd(c, 15_000);
    const adminPort = portOf(adminBase);
    expect(pidsWith(db.name)).toHaveLength(3);

    proxy.child.kill('SIGTERM');
    expect(await until(async () => (await tcpConnect(port)) === 'ECONNREFUSED')).toBe(true);
    // Draining: the open session still works until --shutdown-timeout ends it.
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    expect((await ended).error?.code).toBe('57P01');
    expect(await Promise.race([proxy.exited, sleep(15_000).then(() => 'still running')])).toEqual({ code: 0, signal: null });
    expect(await until(() => pidsWith(db.name).length === 0)).toBe(true);
    expect(await portFree(port)).toBe(true);
    expect(await portFree(adminPort)).toBe(true);
  });
});

describe('starting --workers 2 wrong', () => {
  it('a worker that cannot reach the upstream fails the start: non-zero exit, the reason on stderr, no process left', async () => {
    const marker = `pgtenant_nodb_${randomBytes(5).toString('hex')}`;
    const p = new Cli(['proxy', '--workers', '2', '--upstream', `postgres://u:p@127.0.0.1:1/${marker}`, '--listen', '127.0.0.1:0', '--admin-listen', 'off'], marker);
    spawned.push(p);
    const exit = await Promise.race([p.exited, sleep(10_000).then(() => null)]);
    expect(exit, 'the primary was still running 10 s after the start failed').not.toBeNull();
    expect(exit!.code).not.toBe(0);
    expect(exit!.code).not.toBeNull();
    expect(p.stderr).toMatch(/^pgtenant: .*worker/m);
    expect(p.stderr).toMatch(/cannot reach the upstream/);
    expect(p.lines.some((l) => l.msg === 'proxy workers listening')).toBe(false);
    expect(await until(() => pidsWith(marker).length === 0)).toBe(true);
  });

  it.each(['0', '65', '1.5'])('--workers %s exits 2 naming --workers', async (n) => {
    const r = await runCli(['proxy', '--workers', n, '--upstream', db.url, '--listen', '127.0.0.1:0', '--admin-listen', 'off']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--workers/);
  });
});
