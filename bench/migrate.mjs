// `npm run bench:migrate`: pgtenant's migrator against the naive one-connection loop over schemas, side by side.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { migrateArgs, showCommand } from './lib/migrate-cli.mjs';
import { measure, naiveMethod, pgtenantMethod, rawMethod } from './lib/migrate-methods.mjs';
import { NAIVE_DESCRIPTION } from './lib/migrate-naive.mjs';
import { formatMigrateTable, summarise } from './lib/migrate-report.mjs';
import { createDatabase, createNaiveSet, createPgtenantSet, createRawSet, dropSet, names, writeMigrations } from './lib/migrate-setup.mjs';
import { installExitHandlers, onCleanup, runMain } from './lib/processes.mjs';
import { writeJson } from './lib/report.mjs';
import { startServer } from './lib/server.mjs';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const log = (line) => process.stdout.write(line + '\n');
// Output piped into `head` must not kill the run before cleanup stops the server.
process.stdout.on('error', () => undefined);

function wholeNumber(raw, what, min, max) {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${what} must be a whole number from ${min} to ${max}, got '${raw}'`);
  return n;
}

function options() {
  const { values } = parseArgs({ options: { tenants: { type: 'string' }, runs: { type: 'string' }, fast: { type: 'boolean' } } });
  return {
    tenants: wholeNumber(values.tenants ?? process.env.PGTENANT_BENCH_TENANTS ?? '1000', '--tenants / PGTENANT_BENCH_TENANTS', 1, 100_000),
    runs: wholeNumber(values.runs ?? process.env.PGTENANT_BENCH_RUNS ?? '1', '--runs / PGTENANT_BENCH_RUNS', 1, 9),
    fast: values.fast ?? process.env.PGTENANT_BENCH_FAST === '1',
  };
}

async function timed(fn) {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

/** Creates one set in its own new database; the naive one as plain schemas, pgtenant's through TenantService. */
async function buildSet(adminUrl, set, progress) {
  await createDatabase(adminUrl, set.database);
  if (set.kind === 'naive') return createNaiveSet(set.url, set.schemas);
  if (set.kind === 'raw') return createRawSet(set.url, set.schemas);
  const onProgress = progress ? (n) => log(`  ${n} tenants created`) : undefined;
  return createPgtenantSet(repoRoot, set.url, set.schemas, { parallel: 4, onProgress });
}

/**
 * One set per method, each in its own database with the same number of schemas: a migration pass changes its
 * set, and DROP/CREATE leaves traces in the catalog that slow later passes, so every measured pass gets a set
 * nothing has run on yet; `rebuild` drops and recreates it for the next round.
 */
async function setUp(adminUrl, tenants, withPgtenant) {
  const specs = [
    { key: 'naive', kind: 'naive', prefix: 'naive' },
    { key: 'raw1', kind: 'raw', prefix: 'raw1' },
    { key: 'raw2', kind: 'raw', prefix: 'raw2' },
  ];
  if (withPgtenant) specs.push({ key: 'serial', kind: 'pgtenant', prefix: 'pgtc1' }, { key: 'default', kind: 'pgtenant', prefix: 'pgtcd' });
  const sets = {};
  const seconds = {};
  for (const { key, kind, prefix } of specs) {
    const database = `bench_${key}`;
    const u = new URL(adminUrl);
    u.pathname = `/${database}`;
    const set = { key, kind, database, url: u.toString(), schemas: names(prefix, tenants) };
    set.rebuild = async () => {
      await dropSet(adminUrl, set);
      await buildSet(adminUrl, set, false);
    };
    const what = kind === 'naive' ? 'plain schemas with a schema_migrations table' : kind === 'raw' ? 'plain schemas with an accounts table' : 'pgtenant tenants (role isolation, TenantService, 4 at a time) with an accounts table each';
    log(`setup: ${tenants} ${what}, in database ${database}...`);
    seconds[key] = await timed(() => buildSet(adminUrl, set, true));
    sets[key] = set;
  }
  const shown = Object.entries(seconds).map(([k, s]) => `${k} ${s.toFixed(1)} s`).join(', ');
  log(`setup took ${Object.values(seconds).reduce((a, b) => a + b, 0).toFixed(1)} s (${shown}); not a measured figure`);
  return { sets, seconds };
}

async function main() {
  const { tenants, runs, fast } = options();
  if (process.env.PGTENANT_BENCH_DATABASE_URL) {
    throw new Error('bench:migrate creates thousands of roles and runs on its own embedded PostgreSQL only; unset PGTENANT_BENCH_DATABASE_URL');
  }
  installExitHandlers((900 + tenants * runs * 0.4) * 1000);
  const startedAt = new Date().toISOString();
  const load = loadavg()[0];
  const cliBuilt = existsSync(join(repoRoot, 'dist', 'cli', 'commands', 'migrate.js'));
  const notes = cliBuilt ? [] : ['dist/cli/commands/migrate.js is missing (pgtenant migrate up not built): pgtenant rows skipped'];

  log('starting PostgreSQL...');
  const server = await startServer(repoRoot, { durable: !fast });
  const dir = mkdtempSync(join(tmpdir(), 'pgtenant-bench-migrations-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const files = writeMigrations(dir);
  const { sets, seconds: setupSeconds } = await setUp(server.url, tenants, cliBuilt);

  const list = [naiveMethod(sets.naive, files), rawMethod(sets.raw1, files, 1), rawMethod(sets.raw2, files, 2)];
  if (cliBuilt) list.push(pgtenantMethod(sets.serial, repoRoot, dir, 1), pgtenantMethod(sets.default, repoRoot, dir, undefined));
  const fresh = runs > 1 ? 'each round on sets dropped and created afresh, ' : '';
  log(`measuring ${runs} run(s), ${fresh}VACUUM ANALYZE and CHECKPOINT before every migration pass (not timed)...`);
  const rows = summarise(await measure(list, runs, files));

  log('\n' + formatMigrateTable(rows));
  log(`\nseconds: wall time of one pass over ${tenants} tenants with 3 pending files (CREATE TABLE, CREATE INDEX, ALTER TABLE ADD COLUMN);`);
  log('  pgtenant rows include starting the CLI process; no-op s: the same pass again with nothing pending; no-op speedup: naive no-op s / this.');
  log(`  each method has its own set of ${tenants} in its own database; ${runs === 1 ? 'one run per figure (--runs 3 for medians)' : `median of ${runs} runs, each on sets created afresh, the method order rotated`}.`);
  const durability = fast ? 'fsync=off, synchronous_commit=off (--fast)' : 'default fsync=on, synchronous_commit=on';
  log(`  server: embedded PostgreSQL 17, ${durability}, same for every method; ${cpus().length} cores, load ${load.toFixed(2)} at start.`);
  for (const note of notes) log(`note: ${note}`);
  for (const row of rows) if (row.error) log(`note: ${row.method} c=${row.concurrency ?? 'default'}: ${row.error.split('\n')[0]}`);

  log('\ncommands:');
  for (const line of NAIVE_DESCRIPTION) log(`  naive loop: ${line}`);
  log('  statements alone: per schema BEGIN; SET LOCAL search_path TO "schema"; <the three files>; COMMIT, on 1 or 2 connections');
  for (const m of list.filter((x) => x.kind === 'pgtenant')) log(`  ${showCommand(migrateArgs(repoRoot, m.url, dir, m.key === 'serial' ? 1 : undefined), m.url)}`);

  const out = join(repoRoot, 'bench', 'results', 'migrate-latest.json');
  writeJson(out, {
    startedAt,
    tenants,
    runs,
    server: fast ? { fsync: 'off', synchronous_commit: 'off' } : { fsync: 'on', synchronous_commit: 'on' },
    machine: { cpus: cpus().length, loadAverage1m: load, node: process.version },
    setupSeconds,
    migrations: files.map(({ version, name, sql }) => ({ version, name, sql })),
    naiveLoop: NAIVE_DESCRIPTION,
    notes,
    rows,
  });
  log(`\nwrote ${out}`);
  return !cliBuilt || rows.some((r) => r.error) ? 1 : 0;
}

await runMain(main);
