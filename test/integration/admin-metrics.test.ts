// /metrics and /readyz on a live proxy: connection gauges, session and traffic counters, refusals, label hygiene, the tenant cap, promtool, upstream loss.
import { spawn } from 'node:child_process';
import net from 'node:net';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminFixture, parseMetrics, sampleValue, type AdminFixture, type Sample } from '../support/admin.js';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { freshDatabase, uniqueTenantId, withClient, type TestDatabase } from '../support/db.js';
import { connectPg, hasBinary, rejection, sessionEnd, sleep, startupMessage, titleNeeding } from '../support/proxy.js';

const PASSWORD = 'metrics-password-123';

const scrapeText = async (fx: AdminFixture): Promise<string> => (await fx.scrape()).text;
const scrape = async (fx: AdminFixture): Promise<Sample[]> => (await fx.scrape()).samples;

/** Scrapes until `check` holds (the proxy notices a closed client asynchronously); the last samples either way. */
async function scrapeUntil(fx: AdminFixture, check: (s: Sample[]) => boolean, timeoutMs = 5000): Promise<Sample[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await scrape(fx);
    if (check(s) || Date.now() > deadline) return s;
    await sleep(25);
  }
}

async function newTenant(fx: AdminFixture, prefix: string): Promise<string> {
  const id = uniqueTenantId(prefix);
  await fx.tenants.create(id, { password: PASSWORD });
  return id;
}

const connectAs = (fx: AdminFixture, user: string, password = PASSWORD): Promise<pg.Client> =>
  connectPg({ connectionString: fx.proxyUrl(user, password), connectionTimeoutMillis: 5000 });

/** Per-tenant counters whose values must only ever grow. */
const COUNTERS = [
  'pgtenant_sessions_started_total',
  'pgtenant_client_received_bytes_total',
  'pgtenant_client_sent_bytes_total',
  'pgtenant_queries_total',
  'pgtenant_transactions_total',
] as const;

type Counters = Record<(typeof COUNTERS)[number], number>;

function countersOf(s: Sample[], tenant: string): Counters {
  return Object.fromEntries(COUNTERS.map((n) => [n, sampleValue(s, n, { tenant })])) as Counters;
}

function expectNoDecrease(prev: Counters, next: Counters, when: string): void {
  for (const n of COUNTERS) expect(next[n], `${n} ${when}`).toBeGreaterThanOrEqual(prev[n]);
}

/** `promtool check metrics` with the text on stdin. */
function promtoolCheck(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    p.stdout.on('data', (d: Buffer) => (output += d.toString()));
    p.stderr.on('data', (d: Buffer) => (output += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, output }));
    p.stdin.end(text);
  });
}

describe('one fixture, default limits', () => {
  let fx: AdminFixture;
  beforeAll(async () => {
    fx = await adminFixture();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('shows a live session under its tenant, counts its work, and never lets counters go down', async () => {
    const tenant = await newTenant(fx, 'mlive');
    const s0 = await scrape(fx);
    const c0 = countersOf(s0, tenant);
    expect(c0.pgtenant_sessions_started_total).toBe(0);

    const client = await connectAs(fx, tenant);
    const s1 = await scrape(fx);
    expect(sampleValue(s1, 'pgtenant_client_connections', { tenant, state: 'idle' })).toBe(1);
    expect(sampleValue(s1, 'pgtenant_client_connections', { tenant })).toBe(1);
    expect(sampleValue(s1, 'pgtenant_server_connections', { tenant, state: 'active' })).toBe(1);
    expect(sampleValue(s1, 'pgtenant_server_connections', { tenant })).toBe(1);
    const c1 = countersOf(s1, tenant);
    expect(c1.pgtenant_sessions_started_total).toBe(1);
    expectNoDecrease(c0, c1, 'after connecting');

    const N = 7;
    for (let i = 0; i < N; i++) await client.query(`SELECT ${i} AS n`);
    await client.query('CREATE TEMP TABLE t (x int)');
    await client.query('BEGIN');
    await client.query('INSERT INTO t VALUES (1)');
    await client.query('COMMIT');
    const s2 = await scrape(fx);
    const c2 = countersOf(s2, tenant);
    expectNoDecrease(c1, c2, 'after the queries');
    // N selects, the CREATE and three statements of the explicit transaction.
    expect(c2.pgtenant_queries_total - c1.pgtenant_queries_total).toBeGreaterThanOrEqual(N + 4);
    // Each statement outside BEGIN is a transaction of its own; BEGIN..COMMIT is one more.
    expect(c2.pgtenant_transactions_total - c1.pgtenant_transactions_total).toBeGreaterThanOrEqual(N + 2);
    expect(c2.pgtenant_client_received_bytes_total).toBeGreaterThan(c1.pgtenant_client_received_bytes_total);
    expect(c2.pgtenant_client_sent_bytes_total).toBeGreaterThan(c1.pgtenant_client_sent_bytes_total);
    expect(c2.pgtenant_client_received_bytes_total).toBeGreaterThan(0);
    expect(c2.pgtenant_client_sent_bytes_total).toBeGreaterThan(0);

    // Inside a transaction the client is reported as such.
    await client.query('BEGIN');
    const sTx = await scrape(fx);
    expect(sampleValue(sTx, 'pgtenant_client_connections', { tenant, state: 'idle_in_transaction' })).toBe(1);
    expect(sampleValue(sTx, 'pgtenant_client_connections', { tenant, state: 'idle' })).toBe(0);
    await client.query('COMMIT');

    const ended = sessionEnd(client, 5000);
    await client.end();
    await ended;
    // The backend goes back to its pool: idle, no longer active.
    const s3 = await scrapeUntil(
      fx,
      (s) =>
        sampleValue(s, 'pgtenant_client_connections', { tenant }) === 0 &&
        sampleValue(s, 'pgtenant_server_connections', { tenant, state: 'idle' }) === 1,
    );
    expect(sampleValue(s3, 'pgtenant_client_connections', { tenant })).toBe(0);
    expect(sampleValue(s3, 'pgtenant_server_connections', { tenant, state: 'active' })).toBe(0);
    expect(sampleValue(s3, 'pgtenant_server_connections', { tenant, state: 'idle' })).toBe(1);
    // The ended session's totals are kept, not dropped with it.
    const c3 = countersOf(s3, tenant);
    expectNoDecrease(c2, c3, 'after the session ended');
    expect(c3.pgtenant_sessions_started_total).toBe(1);
    const c4 = countersOf(await scrape(fx), tenant);
    expectNoDecrease(c3, c4, 'on a later scrape');

    const again = await connectAs(fx, tenant);
    await again.query('SELECT 1');
    const c5 = countersOf(await scrape(fx), tenant);
    expect(c5.pgtenant_sessions_started_total).toBe(2);
    expectNoDecrease(c4, c5, 'with a second session');
    expect(c5.pgtenant_queries_total).toBeGreaterThan(c4.pgtenant_queries_total);
    await again.end();
  });

  it('counts refusals by condition name, and never uses a claimed tenant name as a label', async () => {
    const tenant = await newTenant(fx, 'mrefuse');
    const ghost = uniqueTenantId('mghost');
    const refused = (s: Sample[], reason: string) => sampleValue(s, 'pgtenant_sessions_refused_total', { reason });
    const s0 = await scrape(fx);

    expect((await rejection(connectAs(fx, tenant, 'wrong-password-000'))).code).toBe('28P01');
    const s1 = await scrape(fx);
    expect(refused(s1, 'invalid_password')).toBe(refused(s0, 'invalid_password') + 1);

    expect((await rejection(connectAs(fx, ghost, 'wrong-password-000'))).code).toBe('28P01');
    const s2Text = await scrapeText(fx);
    expect(refused(parseMetrics(s2Text), 'invalid_password')).toBe(refused(s0, 'invalid_password') + 2);
    expect(s2Text).not.toContain(ghost);

    const patch = await fx.request('PATCH', `/v1/tenants/${tenant}`, { state: 'suspended' });
    expect(patch.status, patch.text).toBe(200);
    expect((await rejection(connectAs(fx, tenant))).code).toBe('57P03');
    const s3 = await scrape(fx);
    expect(refused(s3, 'cannot_connect_now')).toBe(refused(s0, 'cannot_connect_now') + 1);
    expect(refused(s3, 'invalid_password')).toBe(refused(s0, 'invalid_password') + 2);
    // Refused clients never started a session.
    expect(sampleValue(s3, 'pgtenant_sessions_started_total', { tenant })).toBe(0);

    // A client still logging in as the unknown name is counted, as _unauthenticated, while it waits on the challenge.
    const socket = net.connect({ host: '127.0.0.1', port: fx.runtime.proxy.address.port });
    socket.on('error', () => undefined);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.once('connect', () => socket.write(startupMessage({ user: ghost, database: fx.db.name })));
        socket.once('data', () => resolve());
      });
      const duringText = await scrapeText(fx);
      expect(duringText).not.toContain(ghost);
      const during = parseMetrics(duringText);
      expect(sampleValue(during, 'pgtenant_client_connections', { tenant: '_unauthenticated', state: 'login' })).toBeGreaterThanOrEqual(1);
    } finally {
      socket.destroy();
    }
    const after = await scrapeUntil(fx, (s) => sampleValue(s, 'pgtenant_client_connections', { tenant: '_unauthenticated' }) === 0);
    expect(sampleValue(after, 'pgtenant_client_connections', { tenant: '_unauthenticated' })).toBe(0);
    expect(await scrapeText(fx)).not.toContain(ghost);
  });

  it('times backend connects per session, and carries the default process metrics', async () => {
    const tenant = await newTenant(fx, 'mconn');
    const count = (samples: Sample[]) => sampleValue(samples, 'pgtenant_backend_connect_duration_seconds_count');
    const before = count(parseMetrics(await scrapeText(fx)));
    const clients = [await connectAs(fx, tenant), await connectAs(fx, tenant), await connectAs(fx, tenant)];
    const s = parseMetrics(await scrapeText(fx));
    expect(count(s)).toBe(before + 3);
    expect(sampleValue(s, 'pgtenant_backend_connect_duration_seconds_sum')).toBeGreaterThan(0);
    // The +Inf bucket holds every observation.
    expect(sampleValue(s, 'pgtenant_backend_connect_duration_seconds_bucket', { le: '+Inf' })).toBe(count(s));
    expect(sampleValue(s, 'pgtenant_client_connections', { tenant, state: 'idle' })).toBe(3);
    await Promise.all(clients.map((c) => c.end()));

    const names = new Set(s.map((x) => x.name));
    for (const n of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_seconds']) {
      expect(names.has(n), n).toBe(true);
    }
    expect(sampleValue(s, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(sampleValue(s, 'nodejs_heap_size_used_bytes')).toBeGreaterThan(0);
    // Admin requests are counted too, this scrape's route among them.
    expect(sampleValue(s, 'pgtenant_admin_requests_total', { status: '200' })).toBeGreaterThan(0);
  });

  describe.runIf(hasBinary('promtool'))(titleNeeding('promtool', 'promtool'), () => {
    it('`promtool check metrics` accepts the whole text, with live sessions in it', async () => {
      const tenant = await newTenant(fx, 'mprom');
      const client = await connectAs(fx, tenant);
      await client.query('SELECT 1');
      const text = await scrapeText(fx);
      await client.end();
      expect(() => parseMetrics(text)).not.toThrow();
      const { code, output } = await promtoolCheck(text);
      expect(code, `promtool check metrics said:\n${output}`).toBe(0);
    });
  });
});

describe('the tenant label cap', () => {
  let fx: AdminFixture;
  beforeAll(async () => {
    fx = await adminFixture({ flags: { metricsTenantLimit: 2 } });
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('gives the first two tenants their own series and sums the rest under _other', async () => {
    const ids = [await newTenant(fx, 'mcap'), await newTenant(fx, 'mcap'), await newTenant(fx, 'mcap'), await newTenant(fx, 'mcap')];
    const clients: pg.Client[] = [];
    // One after the other: labels go first come, first served.
    for (const id of ids) clients.push(await connectAs(fx, id));
    try {
      const text = await scrapeText(fx);
      const s = parseMetrics(text);
      const labelsOf = (name: string) => new Set(s.filter((x) => x.name === name).map((x) => x.labels.tenant));
      for (const name of ['pgtenant_client_connections', 'pgtenant_server_connections', 'pgtenant_sessions_started_total']) {
        expect([...labelsOf(name)].sort(), name).toEqual([ids[0]!, ids[1]!, '_other'].sort());
      }
      for (const id of ids.slice(0, 2)) {
        expect(sampleValue(s, 'pgtenant_client_connections', { tenant: id, state: 'idle' })).toBe(1);
        expect(sampleValue(s, 'pgtenant_server_connections', { tenant: id, state: 'active' })).toBe(1);
      }
      expect(sampleValue(s, 'pgtenant_client_connections', { tenant: '_other', state: 'idle' })).toBe(2);
      expect(sampleValue(s, 'pgtenant_server_connections', { tenant: '_other', state: 'active' })).toBe(2);
      expect(sampleValue(s, 'pgtenant_sessions_started_total', { tenant: '_other' })).toBe(2);
      // The capped tenants' names appear nowhere.
      for (const id of ids.slice(2)) expect(text).not.toContain(id);

      await clients[2]!.query('SELECT 1');
      const after = await scrape(fx);
      expect(sampleValue(after, 'pgtenant_queries_total', { tenant: '_other' })).toBeGreaterThanOrEqual(1);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });
});

/** A TCP relay to the real server that the test can take away and bring back on the same port. */
class Relay {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  constructor(private readonly target: { host: string; port: number }) {}

  async start(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.target);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          this.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

describe('pool waits', () => {
  let fx: AdminFixture;
  beforeAll(async () => {
    fx = await adminFixture({ flags: { poolSize: 1, poolWaitTimeout: 300 } });
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('a client that waits and gets in is timed; one that times out is counted under its tenant', async () => {
    const tenant = await newTenant(fx, 'wait');
    const before = await scrape(fx);
    const holder = await connectAs(fx, tenant);
    try {
      expect((await rejection(connectAs(fx, tenant))).code).toBe('53300');
      // This one is served once the holder leaves, well within the timeout.
      const waiting = connectAs(fx, tenant);
      await sleep(50);
      await holder.end();
      await (await waiting).end();
    } catch (err) {
      await holder.end().catch(() => undefined);
      throw err;
    }
    const after = await scrape(fx);
    const count = (s: Sample[]) => sampleValue(s, 'pgtenant_pool_wait_duration_seconds_count', {});
    expect(count(after) - count(before)).toBe(2);
    expect(sampleValue(after, 'pgtenant_pool_wait_timeouts_total', { tenant }) - sampleValue(before, 'pgtenant_pool_wait_timeouts_total', { tenant })).toBe(1);
    // The timed-out wait lasted at least the timeout.
    expect(sampleValue(after, 'pgtenant_pool_wait_duration_seconds_sum', {}) - sampleValue(before, 'pgtenant_pool_wait_duration_seconds_sum', {})).toBeGreaterThanOrEqual(0.3);
  });
});

describe('/readyz follows the upstream', () => {
  let fx: AdminFixture;
  let relay: Relay;
  let db: TestDatabase;
  beforeAll(async () => {
    // adminFixture names its database only once it made it, so the upstream behind the relay is a database of our own.
    db = await freshDatabase();
    await withClient(db.url, (c) => installControlSchema(c));
    const target = new URL(db.url);
    relay = new Relay({ host: target.hostname, port: Number(target.port || 5432) });
    await relay.start();
    const upstream = new URL(db.url);
    upstream.hostname = '127.0.0.1';
    upstream.port = String(relay.port);
    fx = await adminFixture({ flags: { upstream: upstream.toString(), connectTimeout: 1000 } });
  });
  afterAll(async () => {
    await fx?.close();
    await relay?.stop();
    await db?.drop();
  });

  it('is 200 while the upstream answers, 503 upstream_unavailable while it is gone, and 200 again once it is back', async () => {
    const ready = () => fx.request('GET', '/readyz');
    const r0 = await ready();
    expect(r0.status, r0.text).toBe(200);
    expect(r0.json).toEqual({ status: 'ready' });

    await relay.stop();
    let down = await ready();
    for (const deadline = Date.now() + 8000; down.status !== 503 && Date.now() < deadline; down = await ready()) await sleep(100);
    expect(down.status, down.text).toBe(503);
    expect(down.json.error.code).toBe('upstream_unavailable');

    await relay.start();
    let up = await ready();
    for (const deadline = Date.now() + 8000; up.status !== 200 && Date.now() < deadline; up = await ready()) await sleep(100);
    expect(up.status, up.text).toBe(200);
    expect(up.json).toEqual({ status: 'ready' });
  });
});
