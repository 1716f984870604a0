// `npm run bench`: pgbench select-only through direct PostgreSQL, PgBouncer and pgtenant, in session and transaction pool modes, side by side.
import { cpus, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { findExecutable, pgbenchArgs, runSelectOnly } from './lib/pgbench.mjs';
import { ensurePgbouncer, pgbouncerVersion, startPgbouncer } from './lib/pgbouncer.mjs';
import { startPlainRelay } from './lib/plain-relay.mjs';
import { startProxy } from './lib/pgtenant.mjs';
import { installExitHandlers, isStopping, runCommand, runMain } from './lib/processes.mjs';
import { formatTable, median, ratio, wholeNumberFromEnv, writeJson } from './lib/report.mjs';
import { benchTenant } from './lib/server.mjs';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TENANT = 'bench';
const SCALE = 10;
/**
 * `pgtenant` is one process, `pgtenant-w2` runs --workers 2 (limits split between them), and `relay` is a plain
 * Node.js pipe (session workloads only): pgtenant over relay is the cost of routing, auth and pooling.
 */
const TARGETS = ['direct', 'pgbouncer', 'pgtenant', 'pgtenant-w2', 'relay'];
/** Ratios computed per row: [name, numerator, denominator]; the table shows them all. */
const RATIOS = [
  ['pgtenant/pgbouncer', 'pgtenant', 'pgbouncer'],
  ['w2/pgbouncer', 'pgtenant-w2', 'pgbouncer'],
  ['pgtenant/relay', 'pgtenant', 'relay'],
  ['pgtenant/direct', 'pgtenant', 'direct'],
];
/** Backends per pool in transaction mode, the same for PgBouncer and pgtenant. */
const TRANSACTION_POOL_SIZE = 20;
const WORKLOADS = [
  { pool: 'session', mode: 'simple', clients: 1, threads: 1 },
  { pool: 'session', mode: 'simple', clients: 20, threads: 2 },
  { pool: 'session', mode: 'extended', clients: 1, threads: 1 },
  { pool: 'session', mode: 'extended', clients: 20, threads: 2 },
  // Connection churn: a new connection (and login) per transaction.
  { pool: 'session', mode: 'simple', clients: 20, threads: 2, connect: true },
  { pool: 'transaction', mode: 'simple', clients: 20, threads: 2 },
  { pool: 'transaction', mode: 'simple', clients: 200, threads: 2 },
  { pool: 'transaction', mode: 'extended', clients: 20, threads: 2 },
  { pool: 'transaction', mode: 'extended', clients: 200, threads: 2 },
];
const POOL_MODES = [...new Set(WORKLOADS.map((w) => w.pool))];
const poolSizeFor = (pool) => (pool === 'transaction' ? TRANSACTION_POOL_SIZE : 30);

const log = (line) => process.stdout.write(line + '\n');

async function serverVersion(url) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query('SHOW server_version')).rows[0].server_version;
  } finally {
    await client.end();
  }
}

/**
 * Brings up PgBouncer and pgtenant once per pool mode: targets[pool][name]. A target that fails to start is
 * reported and left out, not fatal. Direct connections are the same in every mode.
 */
async function startTargets(serverPort, password, upstreamUrl) {
  const targets = {};
  const notes = {};
  const bin = await ensurePgbouncer(log);
  if (!bin) notes.pgbouncer = 'pgbouncer not available';
  for (const pool of POOL_MODES) {
    const set = (targets[pool] = { direct: { port: serverPort } });
    const poolSize = poolSizeFor(pool);
    if (bin) {
      try {
        set.pgbouncer = { ...(await startPgbouncer(bin, { serverPort, user: TENANT, password, poolMode: pool, poolSize })), version: pgbouncerVersion(bin) };
      } catch (err) {
        notes[`pgbouncer ${pool}`] = err.message;
        log(`PgBouncer (${pool}) column skipped: ${err.message}`);
      }
    }
    const starters = {
      pgtenant: () => startProxy(repoRoot, upstreamUrl, { poolMode: pool, poolSize }),
      'pgtenant-w2': () => startProxy(repoRoot, upstreamUrl, { poolMode: pool, poolSize, workers: 2 }),
      ...(pool === 'session' ? { relay: () => startPlainRelay(serverPort) } : {}),
    };
    for (const [name, start] of Object.entries(starters)) {
      try {
        set[name] = await start();
      } catch (err) {
        notes[`${name} ${pool}`] = err.message;
        log(`${name} (${pool}) column failed: ${err.message}`);
      }
    }
  }
  return { targets, notes };
}

/**
 * Each cell is the median of `runs` runs; the targets take turns within each round, so drift on a busy
 * machine (other load, thermal limits) falls on all of them alike rather than on whichever ran last.
 */
async function measure(pgbench, conn, targets, seconds, runs) {
  const rows = [];
  for (const w of WORKLOADS) {
    const label = `${w.pool} select-only ${w.mode}${w.connect ? ' -C' : ''}`;
    const row = {
      workload: label,
      pool: w.pool,
      mode: w.mode,
      clients: w.clients,
      threads: w.threads,
      connect: Boolean(w.connect),
      command: `pgbench ${pgbenchArgs({ ...w, seconds }).join(' ')}`,
      targets: {},
    };
    const samples = {};
    for (let run = 0; run < runs; run++) {
      for (const name of TARGETS) {
        const target = targets[w.pool][name];
        if (isStopping()) throw new Error('stopped before the runs finished');
        if (!target || row.targets[name]?.error) continue;
        try {
          const r = await runSelectOnly(pgbench, { ...conn, port: target.port }, { ...w, seconds });
          (samples[name] ??= []).push(r);
          log(`  ${label.padEnd(35)} c=${String(w.clients).padStart(3)}  ${name.padEnd(11)}  run ${run + 1}/${runs}  ${r.tps.toFixed(0).padStart(7)} tps  ${r.latencyMs.toFixed(3)} ms`);
        } catch (err) {
          if (isStopping()) throw err;
          const died = target.child && target.child.exitCode !== null ? `\n${name} exited; its output:\n${target.child.output.text.trim()}` : '';
          row.targets[name] = { error: err.message + died };
          log(`  ${label.padEnd(35)} c=${String(w.clients).padStart(3)}  ${name.padEnd(11)}  FAILED: ${err.message}${died}`);
        }
      }
    }
    for (const [name, rs] of Object.entries(samples)) {
      if (row.targets[name]?.error) continue;
      row.targets[name] = { tps: median(rs.map((r) => r.tps)), latencyMs: median(rs.map((r) => r.latencyMs)), runs: rs };
    }
    row.ratios = Object.fromEntries(RATIOS.map(([name, a, b]) => [name, ratio(row, a, b)]));
    rows.push(row);
  }
  return rows;
}

/** What a proxy adds to a one-client round trip, in microseconds: median latency minus direct's, per workload. */
function addedLatency(rows) {
  return rows
    .filter((r) => r.clients === 1 && r.targets.direct?.latencyMs != null)
    .map((r) => {
      const over = (name) => (r.targets[name]?.latencyMs != null ? Math.round((r.targets[name].latencyMs - r.targets.direct.latencyMs) * 1000) : null);
      return { workload: r.workload, pgbouncerUs: over('pgbouncer'), pgtenantUs: over('pgtenant'), relayUs: over('relay') };
    });
}

async function main() {
  const pgbench = findExecutable('pgbench');
  if (!pgbench) {
    process.stderr.write('bench: pgbench is not on PATH. Install it with: apt-get install postgresql-client\n');
    return 1;
  }
  const seconds = wholeNumberFromEnv('PGTENANT_BENCH_SECONDS', 5, 1, 300);
  const runs = wholeNumberFromEnv('PGTENANT_BENCH_RUNS', 3, 1, 15);
  installExitHandlers((600 + runs * TARGETS.length * WORKLOADS.length * (seconds + 30)) * 1000);
  const startedAt = new Date().toISOString();
  const load = loadavg()[0];

  const { server, port, password, conn } = await benchTenant(repoRoot, pgbench, { tenant: TENANT, scale: SCALE, log });

  const { targets, notes } = await startTargets(port, password, server.url);
  // One unrecorded run so the first measured target does not pay for a cold cache.
  await runSelectOnly(pgbench, { ...conn, port }, { mode: 'simple', clients: 4, threads: 2, seconds: Math.min(3, seconds) });

  log(`running ${WORKLOADS.length} workloads x ${TARGETS.length} targets x ${runs} runs, ${seconds} s each (transaction pool size ${TRANSACTION_POOL_SIZE})...`);
  const rows = await measure(pgbench, conn, targets, seconds, runs);
  const added = addedLatency(rows);
  const shown = TARGETS.filter((t) => POOL_MODES.some((p) => targets[p][t]) || t === 'pgtenant');
  log(`\nTPS, medians of ${runs} runs of ${seconds} s:\n` + formatTable(rows, shown, RATIOS.map(([name]) => name)));
  for (const a of added) {
    log(`added latency, ${a.workload}, 1 client: PgBouncer ${a.pgbouncerUs ?? '-'} us, pgtenant ${a.pgtenantUs ?? '-'} us, plain relay ${a.relayUs ?? '-'} us`);
  }
  for (const [name, note] of Object.entries(notes)) log(`note: ${name}: ${note.split('\n')[0]}`);

  const pgbenchVersion = (await runCommand(pgbench, ['--version'])).stdout.trim();
  const out = join(repoRoot, 'bench', 'results', 'latest.json');
  writeJson(out, {
    startedAt,
    seconds,
    runs,
    addedLatency: added,
    scale: SCALE,
    machine: { cpus: cpus().length, loadAverage1m: load, node: process.version },
    versions: { server: await serverVersion(server.url), pgbench: pgbenchVersion, pgbouncer: targets.session.pgbouncer?.version ?? null },
    transactionPoolSize: TRANSACTION_POOL_SIZE,
    server: server.embedded ? 'embedded' : 'PGTENANT_BENCH_DATABASE_URL',
    notes,
    rows,
  });
  log(`\nwrote ${out}`);
  const failed = POOL_MODES.some((p) => !targets[p].pgtenant) || rows.some((r) => Object.values(r.targets).some((t) => t.error));
  return failed ? 1 : 0;
}

await runMain(main);
