// `npm run bench:idle`: memory per idle client connection, and active clients' throughput while thousands sit idle.
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuPerTransaction, treeTicks } from './lib/cpu.mjs';
import { findExecutable, runSelectOnly } from './lib/pgbench.mjs';
import { ensurePgbouncer, pgbouncerVersion, startPgbouncer } from './lib/pgbouncer.mjs';
import { startProxy } from './lib/pgtenant.mjs';
import { installExitHandlers, isStopping, runMain, stopChild } from './lib/processes.mjs';
import { median, renderTable, wholeNumberFromEnv, writeJson } from './lib/report.mjs';
import { login } from './lib/scram-client.mjs';
import { benchTenant } from './lib/server.mjs';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TENANT = 'bench';
const POOL_SIZE = 20;
const ACTIVE = { mode: 'simple', clients: 20, threads: 2, seconds: 5 };
const log = (line) => process.stdout.write(line + '\n');

/** Resident memory of a process, in KiB, from /proc. */
function rssKiB(pid) {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Opens `n` logged-in connections, `batch` at a time. */
async function openIdle(n, conn, batch = 100) {
  const sockets = [];
  while (sockets.length < n) {
    if (isStopping()) throw new Error('stopped');
    const k = Math.min(batch, n - sockets.length);
    sockets.push(...(await Promise.all(Array.from({ length: k }, () => login(conn)))));
  }
  return sockets;
}

async function measureTarget(name, target, conn, pgbench, idle) {
  const at = { ...conn, port: target.port };
  // Warm up first, unmeasured: what is measured is the cost of idle connections, not of the first ones.
  await runSelectOnly(pgbench, at, { ...ACTIVE, seconds: 2 });
  /** TPS, and the target's CPU per transaction: a steadier signal than TPS on a shared machine. */
  const active = async () => {
    const t0 = treeTicks(target.child.pid);
    const r = await runSelectOnly(pgbench, at, ACTIVE);
    return { tps: r.tps, ...cpuPerTransaction(t0, treeTicks(target.child.pid), r.transactions) };
  };
  const before = await active();
  await sleep(1000);
  const rssBefore = rssKiB(target.child.pid);
  const started = Date.now();
  const sockets = await openIdle(idle, at);
  const openedInMs = Date.now() - started;
  await sleep(2000);
  const rssHeld = rssKiB(target.child.pid);
  const during = await active();
  for (const s of sockets) s.destroy();
  const row = {
    target: name,
    idle,
    openedInMs,
    rssBeforeKiB: rssBefore,
    rssHeldKiB: rssHeld,
    perConnectionKiB: (rssHeld - rssBefore) / idle,
    tpsBefore: before.tps,
    tpsWhileHeld: during.tps,
    cpuUsBefore: before.userUs + before.sysUs,
    cpuUsWhileHeld: during.userUs + during.sysUs,
  };
  log(
    `  ${name.padEnd(9)} ${idle} idle: RSS ${rssBefore} -> ${rssHeld} KiB (${row.perConnectionKiB.toFixed(2)} KiB each, opened in ${openedInMs} ms); ` +
      `pgbench -S c=${ACTIVE.clients}: ${before.tps.toFixed(0)} tps before, ${during.tps.toFixed(0)} while held; ` +
      `CPU per transaction ${row.cpuUsBefore.toFixed(1)} µs before, ${row.cpuUsWhileHeld.toFixed(1)} while held`,
  );
  await sleep(1000);
  return row;
}

async function main() {
  const pgbench = findExecutable('pgbench');
  if (!pgbench) {
    process.stderr.write('bench: pgbench is not on PATH. Install it with: apt-get install postgresql-client\n');
    return 1;
  }
  const idle = wholeNumberFromEnv('PGTENANT_BENCH_IDLE', 10_000, 1, 15_000);
  installExitHandlers(30 * 60 * 1000);
  const { server, port, password, conn } = await benchTenant(repoRoot, pgbench, { tenant: TENANT, scale: 1, log });

  // Each run gets fresh processes: RSS does not shrink when connections close, so a second run on the same
  // process would measure nothing.
  const bin = await ensurePgbouncer(log);
  const starters = {};
  if (bin) {
    starters.pgbouncer = async () => ({
      ...(await startPgbouncer(bin, { serverPort: port, user: TENANT, password, poolMode: 'transaction', poolSize: POOL_SIZE, maxClientConn: idle + 100 })),
      version: pgbouncerVersion(bin),
    });
  }
  starters.pgtenant = () => startProxy(repoRoot, server.url, { poolMode: 'transaction', poolSize: POOL_SIZE });

  const runs = wholeNumberFromEnv('PGTENANT_BENCH_RUNS', 3, 1, 15);
  log(`holding ${idle} idle client connections per target (transaction mode, pool size ${POOL_SIZE}), ${runs} runs...`);
  const samples = {};
  // Targets take turns within each round, as in `npm run bench`.
  for (let run = 0; run < runs; run++) {
    for (const [name, start] of Object.entries(starters)) {
      const target = await start();
      try {
        (samples[name] ??= []).push(await measureTarget(name, target, conn, pgbench, idle));
      } finally {
        await stopChild(target.child);
      }
    }
  }
  const rows = Object.entries(samples).map(([name, rs]) => ({
    target: name,
    idle,
    rssBeforeKiB: median(rs.map((r) => r.rssBeforeKiB)),
    rssHeldKiB: median(rs.map((r) => r.rssHeldKiB)),
    perConnectionKiB: median(rs.map((r) => r.perConnectionKiB)),
    tpsBefore: median(rs.map((r) => r.tpsBefore)),
    tpsWhileHeld: median(rs.map((r) => r.tpsWhileHeld)),
    cpuUsBefore: median(rs.map((r) => r.cpuUsBefore)),
    cpuUsWhileHeld: median(rs.map((r) => r.cpuUsWhileHeld)),
    runs: rs,
  }));

  log(
    `\nmedians of ${runs} runs:\n` +
      renderTable(
        ['target', 'idle clients', 'RSS before KiB', 'RSS held KiB', 'KiB per idle client', 'tps before', 'tps while held', 'CPU µs/tx before', 'CPU µs/tx held'],
        rows.map((r) => [
          r.target,
          String(r.idle),
          String(r.rssBeforeKiB),
          String(r.rssHeldKiB),
          r.perConnectionKiB.toFixed(2),
          r.tpsBefore.toFixed(0),
          r.tpsWhileHeld.toFixed(0),
          r.cpuUsBefore.toFixed(1),
          r.cpuUsWhileHeld.toFixed(1),
        ]),
      ),
  );
  const out = join(repoRoot, 'bench', 'results', 'idle-latest.json');
  writeJson(out, { startedAt: new Date().toISOString(), poolSize: POOL_SIZE, active: ACTIVE, runs, pgbouncer: bin ? pgbouncerVersion(bin) : null, rows });
  log(`\nwrote ${out}`);
  return 0;
}

await runMain(main);
