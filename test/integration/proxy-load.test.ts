// Load: 2,000 client connections over 200 tenants through one proxy process, mixed reads and writes with backends killed under them; every tenant's rows are checked at the end.
// PGTENANT_SOAK_SECONDS=N keeps the clients working for N seconds instead of a fixed number of transactions.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quoteIdent } from '../../src/tenants/ids.js';
import { TenantService } from '../../src/tenants/service.js';
import { fetchJson } from '../support/admin.js';
import { Cli, until } from '../support/cli-process.js';
import { uniqueTenantId, type TestDatabase } from '../support/db.js';
import { connectPg, initializedDatabase, sleep } from '../support/proxy.js';

const TENANTS = 200;
const CLIENTS_PER_TENANT = 10;
const TRANSACTIONS_PER_CLIENT = 6;
const SOAK_SECONDS = Number(process.env.PGTENANT_SOAK_SECONDS ?? 0);
/** Backends the proxy may hold: well below the test server's max_connections, which other test files share. */
const MAX_BACKENDS = 60;
const KILLS = 15;
const PASSWORD = 'load-password-1';
const TOKEN = randomBytes(16).toString('hex');
/**
 * What a client may see when the backend under its transaction is terminated: the server's FATAL 57P01, the
 * proxy's 08006 when the server closed without one, or (the FATAL having come between two statements) pg's own
 * words for a connection already lost. A 08006 for any other reason (a backend login that timed out) is no kill's.
 */
const fromKill = (err: Error & { code?: string }): boolean =>
  err.code === '57P01' ||
  (err.code === '08006' && err.message === 'server closed the connection unexpectedly') ||
  (err.code === undefined && /Connection terminated unexpectedly|not queryable|ECONNRESET|EPIPE/.test(err.message));

let db: TestDatabase;
let admin: pg.Pool;
let proxy: Cli;
let port: number;
let adminBase: string;
const tenants: string[] = [];

const countBy = (xs: readonly string[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
};
const mib = (bytes: number): number => Math.round(bytes / 1048576);

/** The proxy process's resident set, from /proc. */
function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

async function inBatches<T>(items: readonly T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

beforeAll(async () => {
  // Each client is a socket here and one in the proxy process.
  const limit = Number(execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim());
  if (limit < TENANTS * CLIENTS_PER_TENANT + 500) {
    throw new Error(`ulimit -n is ${limit}: the load test needs ${TENANTS * CLIENTS_PER_TENANT + 500} (raise it with ulimit -n)`);
  }
  ({ db, admin } = await initializedDatabase());
  const service = new TenantService(admin, { isolation: 'role', migrationsDir: null });
  for (let i = 0; i < TENANTS; i++) tenants.push(uniqueTenantId(`ld${i}`));
  await inBatches(tenants, 3, async (id) => {
    await service.create(id, { password: PASSWORD });
  });
  // The tables are the tenants' own: created as each role, in its schema.
  await admin.query(
    tenants
      .map((t) => `SET ROLE ${quoteIdent(t)}; CREATE TABLE ${quoteIdent(t)}.load_rows (tenant text NOT NULL, client int NOT NULL, seq int NOT NULL, PRIMARY KEY (client, seq)); RESET ROLE;`)
      .join('\n'),
  );
  proxy = new Cli(
    [
      'proxy', '--upstream', db.url, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--admin-token', TOKEN,
      '--pool-mode', 'transaction', '--max-backends', String(MAX_BACKENDS), '--pool-size', '4', '--pool-wait-timeout', '60000',
      // 200 tenants over 60 backends open one login after another on 2 busy cores: a slow login is no fault of this test's.
      '--connect-timeout', '30000',
    ],
    db.name,
  );
  port = portOf((await proxy.line((l) => l.msg === 'proxy listening', "'proxy listening'")).listen);
  adminBase = `http://127.0.0.1:${portOf((await proxy.line((l) => l.msg === 'admin API listening', "'admin API listening'")).listen)}`;
}, 300_000);

afterAll(async () => {
  await proxy?.kill();
  await admin?.end();
  await db?.drop();
});

const portOf = (listen: unknown): number => Number(String(listen).split(':').pop());

interface Outcome {
  transactions: number;
  acked: Set<string>;
  /** Rows of another tenant seen through a tenant's session, and sessions that were not the tenant's role or schema. */
  foreignSeen: number;
  wrongIdentity: number;
  injectedErrors: string[];
  otherErrors: string[];
  reconnects: number;
}

/** One client of `tenant`: transactions of a write and two reads, until `done()`; reconnects after a lost connection. */
async function work(tenant: string, client: number, first: pg.Client, done: (seq: number) => boolean, out: Outcome): Promise<void> {
  let c: pg.Client | null = first;
  for (let seq = 0; !done(seq); seq++) {
    try {
      c ??= (out.reconnects++, await connectPg({ host: '127.0.0.1', port, user: tenant, password: PASSWORD, database: db.name }));
      await c.query('BEGIN');
      const who = await c.query('SELECT current_user AS u, current_schema() AS s');
      if (who.rows[0].u !== tenant || who.rows[0].s !== tenant) out.wrongIdentity++;
      await c.query('INSERT INTO load_rows (tenant, client, seq) VALUES ($1, $2, $3)', [tenant, client, seq]);
      const seen = await c.query('SELECT count(*) FILTER (WHERE tenant <> $1)::int AS foreign FROM load_rows', [tenant]);
      out.foreignSeen += seen.rows[0].foreign;
      await c.query('COMMIT');
      out.acked.add(`${tenant}/${client}/${seq}`);
      out.transactions++;
    } catch (err) {
      const e = err as Error & { code?: string };
      if (fromKill(e)) out.injectedErrors.push(e.code ?? e.message);
      else out.otherErrors.push(`${e.code ?? ''} ${e.message}`);
      // Whatever the error, the client starts afresh: a lost connection cannot be rolled back.
      await c?.end().catch(() => undefined);
      c = null;
    }
  }
  await c?.end().catch(() => undefined);
}

/** Sessions the server has started in the test database so far (the proxy's backend logins, and this test's own few). */
async function serverLogins(): Promise<number> {
  const { rows } = await admin.query<{ n: number }>('SELECT sessions::int AS n FROM pg_catalog.pg_stat_database WHERE datname = current_database()');
  return rows[0]!.n;
}

/** Terminates `n` backends of the proxy's tenants, one every `everyMs`, while `running()`; returns how many it killed. */
async function killBackends(n: number, everyMs: number, running: () => boolean): Promise<number> {
  let killed = 0;
  while (killed < n && running()) {
    await sleep(everyMs);
    const { rows } = await admin.query<{ ok: boolean }>(
      `SELECT pg_catalog.pg_terminate_backend(pid) AS ok FROM pg_catalog.pg_stat_activity
        WHERE usename = ANY($1) ORDER BY random() LIMIT 1`,
      [tenants],
    );
    if (rows[0]?.ok) killed++;
  }
  return killed;
}

describe('2,000 clients over 200 tenants', () => {
  it('no row lands in the wrong tenant, no acknowledged write is lost, errors come only from injected faults, and the proxy lets go of everything', async () => {
    const pid = proxy.child.pid!;
    const rssStart = rss(pid);
    let rssPeak = rssStart;
    const sampler = setInterval(() => proxy.exit || (rssPeak = Math.max(rssPeak, rss(pid))), 250);
    const out: Outcome = { transactions: 0, acked: new Set(), foreignSeen: 0, wrongIdentity: 0, injectedErrors: [], otherErrors: [], reconnects: 0 };
    try {
      const t0 = Date.now();
      const slots = tenants.flatMap((t) => Array.from({ length: CLIENTS_PER_TENANT }, (_, k) => ({ tenant: t, client: k })));
      const clients = new Map<(typeof slots)[number], pg.Client>();
      await inBatches(slots, 100, async (slot) => {
        clients.set(slot, await connectPg({ host: '127.0.0.1', port, user: slot.tenant, password: PASSWORD, database: db.name }));
      });
      const connectedMs = Date.now() - t0;
      console.log(`load: ${clients.size} clients connected in ${connectedMs} ms`);
      const rssConnected = rss(pid);
      const live = (await fetchJson(`${adminBase}/v1/connections`, { headers: { authorization: `Bearer ${TOKEN}` } })).json;
      expect(live.clients).toBe(TENANTS * CLIENTS_PER_TENANT);

      const deadline = SOAK_SECONDS > 0 ? Date.now() + SOAK_SECONDS * 1000 : 0;
      const done = deadline ? () => Date.now() >= deadline : (seq: number) => seq >= TRANSACTIONS_PER_CLIENT;
      let running = true;
      const loginsBefore = await serverLogins();
      const t1 = Date.now();
      const killing = killBackends(SOAK_SECONDS > 0 ? Number.MAX_SAFE_INTEGER : KILLS, 300, () => running);
      await Promise.all(slots.map((slot) => work(slot.tenant, slot.client, clients.get(slot)!, done, out)));
      running = false;
      const killed = await killing;
      const workMs = Date.now() - t1;
      const backendLogins = (await serverLogins()) - loginsBefore;

      // The proxy lets go: no client left, backends within the cap.
      let after: { clients: number; servers: number } = { clients: -1, servers: -1 };
      expect(
        await until(async () => {
          after = (await fetchJson(`${adminBase}/v1/connections`, { headers: { authorization: `Bearer ${TOKEN}` } })).json;
          return after.clients === 0;
        }, 20_000),
      ).toBe(true);
      expect(after.servers).toBeLessThanOrEqual(MAX_BACKENDS);
      const onServer = await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1)', [tenants]);
      expect(onServer.rows[0]!.n).toBeLessThanOrEqual(MAX_BACKENDS);
      await sleep(1000);
      const rssEnd = rss(pid);

      // Every tenant's table, read as the superuser: foreign rows and lost writes.
      let wrongTenantRows = 0;
      let lostWrites = 0;
      let unacknowledgedRows = 0;
      for (const t of tenants) {
        const { rows } = await admin.query<{ tenant: string; client: number; seq: number }>(`SELECT tenant, client, seq FROM ${quoteIdent(t)}.load_rows`);
        const present = new Set(rows.map((r) => `${r.tenant}/${r.client}/${r.seq}`));
        wrongTenantRows += rows.filter((r) => r.tenant !== t).length;
        for (const key of out.acked) if (key.startsWith(`${t}/`) && !present.has(key)) lostWrites++;
        unacknowledgedRows += [...present].filter((key) => !out.acked.has(key)).length;
      }

      const summary = {
        connections: TENANTS * CLIENTS_PER_TENANT,
        tenants: TENANTS,
        transactions: out.transactions,
        connectSeconds: connectedMs / 1000,
        workSeconds: workMs / 1000,
        tps: Math.round(out.transactions / (workMs / 1000)),
        backendLogins,
        backendsKilled: killed,
        clientErrorsFromKills: out.injectedErrors.length,
        clientErrorKinds: countBy(out.injectedErrors),
        reconnects: out.reconnects,
        otherErrors: out.otherErrors.length,
        wrongTenantRows,
        foreignRowsSeen: out.foreignSeen,
        wrongIdentity: out.wrongIdentity,
        lostWrites,
        unacknowledgedRows,
        rssMiB: { start: mib(rssStart), connected: mib(rssConnected), peak: mib(rssPeak), end: mib(rssEnd) },
      };
      console.log(`load: ${JSON.stringify(summary)}`);

      expect(countBy(out.otherErrors)).toEqual({});
      expect(wrongTenantRows).toBe(0);
      expect(out.foreignSeen).toBe(0);
      expect(out.wrongIdentity).toBe(0);
      expect(lostWrites).toBe(0);
      // A kill touches at most the one transaction on that backend; a row whose COMMIT answer was lost may be there.
      expect(out.injectedErrors.length).toBeLessThanOrEqual(killed);
      expect(unacknowledgedRows).toBeLessThanOrEqual(out.injectedErrors.length);
      if (!SOAK_SECONDS) expect(out.transactions + out.injectedErrors.length).toBe(TENANTS * CLIENTS_PER_TENANT * TRANSACTIONS_PER_CLIENT);
      expect(killed).toBeGreaterThan(0);
    } finally {
      clearInterval(sampler);
    }
  }, 600_000 + SOAK_SECONDS * 1000);
});
