// `npm run bench:tenants`: many busy tenants over fewer backends than tenants, in transaction mode: throughput and backend logins.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pg from 'pg';
import { startProxy } from './lib/pgtenant.mjs';
import { installExitHandlers, isStopping, runMain, stopChild } from './lib/processes.mjs';
import { median, renderTable, wholeNumberFromEnv } from './lib/report.mjs';
import { describeUrl, startServer } from './lib/server.mjs';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TENANTS = wholeNumberFromEnv('PGTENANT_BENCH_TENANTS', 50, 1, 1000);
const CLIENTS = wholeNumberFromEnv('PGTENANT_BENCH_CLIENTS', 10, 1, 100);
const BACKENDS = wholeNumberFromEnv('PGTENANT_BENCH_BACKENDS', 20, 1, 250);
const TRANSACTIONS = wholeNumberFromEnv('PGTENANT_BENCH_TRANSACTIONS', 6, 1, 1000);
const RUNS = wholeNumberFromEnv('PGTENANT_BENCH_RUNS', 3, 1, 20);
const PASSWORD = 'bench-tenants-1';
const log = (line) => process.stdout.write(line + '\n');

/** Sessions the server has started so far (pg_stat_database.sessions, PostgreSQL 14 and later). */
async function serverLogins(admin, database) {
  const { rows } = await admin.query('SELECT sessions::int AS n FROM pg_catalog.pg_stat_database WHERE datname = $1', [database]);
  return rows[0].n;
}

/** Every client logs in, then all run their transactions at once: BEGIN, two statements, COMMIT. */
async function runOnce(port, database, ids) {
  const clients = [];
  for (const id of ids) for (let k = 0; k < CLIENTS; k++) clients.push(new pg.Client({ host: '127.0.0.1', port, user: id, password: PASSWORD, database }));
  for (let i = 0; i < clients.length; i += 100) await Promise.all(clients.slice(i, i + 100).map((c) => c.connect()));
  const started = performance.now();
  await Promise.all(
    clients.map(async (c) => {
      for (let n = 0; n < TRANSACTIONS && !isStopping(); n++) {
        await c.query('BEGIN');
        await c.query('SELECT current_user');
        await c.query('SELECT 1');
        await c.query('COMMIT');
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  await Promise.all(clients.map((c) => c.end()));
  return { seconds, transactions: clients.length * TRANSACTIONS };
}

async function main() {
  installExitHandlers(20 * 60_000);
  log('starting PostgreSQL...');
  const server = await startServer(repoRoot);
  const { database } = describeUrl(server.url);
  const admin = new pg.Pool({ connectionString: server.url, max: 4 });
  const dist = (file) => import(pathToFileURL(join(repoRoot, 'dist', file)).href);
  const { installControlSchema } = await dist('tenants/control-schema.js');
  const { TenantService } = await dist('tenants/service.js');
  const c = await admin.connect();
  await installControlSchema(c);
  c.release();
  log(`creating ${TENANTS} tenants...`);
  const service = new TenantService(admin, { isolation: 'role', migrationsDir: null });
  const ids = Array.from({ length: TENANTS }, (_, i) => `bt${String(i).padStart(4, '0')}`);
  for (let i = 0; i < ids.length; i += 4) await Promise.all(ids.slice(i, i + 4).map((id) => service.create(id, { password: PASSWORD })));

  const proxy = await startProxy(repoRoot, server.url, { poolMode: 'transaction', poolSize: 4, extraArgs: ['--max-backends', String(BACKENDS)] });
  const rows = [];
  try {
    for (let run = 1; run <= RUNS; run++) {
      const before = await serverLogins(admin, database);
      const r = await runOnce(proxy.port, database, ids);
      const logins = (await serverLogins(admin, database)) - before;
      rows.push({ tps: r.transactions / r.seconds, logins, transactions: r.transactions });
      log(`run ${run}: ${Math.round(r.transactions / r.seconds)} tps, ${logins} backend logins for ${r.transactions} transactions and ${TENANTS * CLIENTS} client logins`);
    }
  } finally {
    await stopChild(proxy.child);
    await admin.end();
  }
  log('');
  log(`${TENANTS} tenants x ${CLIENTS} clients, --max-backends ${BACKENDS}, --pool-size 4, transaction mode, ${TRANSACTIONS} transactions per client (4 statements each); median of ${RUNS}:`);
  log(
    renderTable(
      ['tps', 'backend logins', 'per 100 transactions'],
      [[String(Math.round(median(rows.map((r) => r.tps)))), String(median(rows.map((r) => r.logins))), (100 * median(rows.map((r) => r.logins / r.transactions))).toFixed(1)]],
    ),
  );
  return 0;
}

runMain(main);
