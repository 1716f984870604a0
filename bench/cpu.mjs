// `npm run bench:cpu`: CPU each proxy spends per transaction (user and system, read from /proc), pgbench -S with a fixed count.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuPerTransaction, treeTicks } from './lib/cpu.mjs';
import { findExecutable, libpqEnv } from './lib/pgbench.mjs';
import { ensurePgbouncer, startPgbouncer } from './lib/pgbouncer.mjs';
import { startPlainRelay } from './lib/plain-relay.mjs';
import { startProxy } from './lib/pgtenant.mjs';
import { installExitHandlers, runCommand, runMain, stopChild } from './lib/processes.mjs';
import { median, renderTable, wholeNumberFromEnv, writeJson } from './lib/report.mjs';
import { benchTenant } from './lib/server.mjs';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TENANT = 'bench';
const POOL_SIZE = 20;
const CLIENTS = 20;
const MODES = ['simple', 'extended', 'prepared'];
const log = (line) => process.stdout.write(line + '\n');

async function pgbench(bin, conn, mode, transactions) {
  const args = ['-S', '-n', '-M', mode, '-c', String(CLIENTS), '-j', '2', '-t', String(Math.ceil(transactions / CLIENTS))];
  const r = await runCommand(bin, args, { env: libpqEnv(conn), timeoutMs: 600_000 });
  const tps = /tps = ([\d.]+)/.exec(r.stdout);
  if (r.code !== 0 || !tps) throw new Error((r.stderr || r.stdout).trim().split('\n').slice(-2).join(' '));
  return Number(tps[1]);
}

async function main() {
  const bin = findExecutable('pgbench');
  if (!bin) throw new Error('pgbench is not on PATH. Install it with: apt-get install postgresql-client');
  const transactions = wholeNumberFromEnv('PGTENANT_BENCH_TRANSACTIONS', 60_000, 1000, 10_000_000);
  const runs = wholeNumberFromEnv('PGTENANT_BENCH_RUNS', 3, 1, 15);
  installExitHandlers(60 * 60 * 1000);
  const { server, port, password, conn } = await benchTenant(repoRoot, bin, { tenant: TENANT, scale: 10, log });

  const bouncer = await ensurePgbouncer(log);
  const starters = {
    'plain relay': () => startPlainRelay(port),
    ...(bouncer ? { 'pgbouncer session': () => startPgbouncer(bouncer, { serverPort: port, user: TENANT, password, poolMode: 'session', poolSize: 30 }) } : {}),
    'pgtenant session': () => startProxy(repoRoot, server.url, { poolMode: 'session', poolSize: 30 }),
    ...(bouncer ? { 'pgbouncer transaction': () => startPgbouncer(bouncer, { serverPort: port, user: TENANT, password, poolMode: 'transaction', poolSize: POOL_SIZE }) } : {}),
    'pgtenant transaction': () => startProxy(repoRoot, server.url, { poolMode: 'transaction', poolSize: POOL_SIZE }),
    'pgtenant transaction -w2': () => startProxy(repoRoot, server.url, { poolMode: 'transaction', poolSize: POOL_SIZE, workers: 2 }),
  };
  const targets = {};
  for (const [name, start] of Object.entries(starters)) targets[name] = await start();
  const samples = {};
  log(`${transactions} transactions per run, ${CLIENTS} clients, ${runs} runs, targets taking turns...`);
  for (let run = 0; run < runs; run++) {
    for (const mode of MODES) {
      for (const [name, target] of Object.entries(targets)) {
        const key = `${name}|${mode}`;
        const at = { ...conn, port: target.port };
        try {
          await pgbench(bin, at, mode, Math.min(2000, transactions)); // warm: backends open, code optimised
          const before = treeTicks(target.child.pid);
          const tps = await pgbench(bin, at, mode, transactions);
          const after = treeTicks(target.child.pid);
          const sample = { tps, ...cpuPerTransaction(before, after, transactions) };
          (samples[key] ??= []).push(sample);
          log(`  ${name.padEnd(26)} ${mode.padEnd(8)} run ${run + 1}: ${tps.toFixed(0)} tps, ${sample.userUs.toFixed(1)} µs user + ${sample.sysUs.toFixed(1)} µs system per transaction`);
        } catch (err) {
          samples[key] = { error: err.message };
          log(`  ${name.padEnd(26)} ${mode.padEnd(8)} failed: ${err.message}`);
        }
      }
    }
  }
  for (const target of Object.values(targets)) await stopChild(target.child);

  const rows = Object.entries(samples).map(([key, s]) => {
    const [target, mode] = key.split('|');
    if (!Array.isArray(s)) return { target, mode, error: s.error };
    return { target, mode, tps: median(s.map((x) => x.tps)), userUs: median(s.map((x) => x.userUs)), sysUs: median(s.map((x) => x.sysUs)), runs: s };
  });
  const fmt = (x) => (x == null ? '-' : x.toFixed(1));
  log(
    `\nCPU per transaction (µs), medians of ${runs} runs of ${transactions} transactions, ${CLIENTS} clients:\n` +
      renderTable(
        ['target', 'pgbench -M', 'tps', 'user', 'system', 'total'],
        rows.map((r) => [r.target, r.mode, r.error ? 'error' : r.tps.toFixed(0), fmt(r.userUs), fmt(r.sysUs), r.error ? '-' : fmt(r.userUs + r.sysUs)]),
        2,
      ),
  );
  const out = join(repoRoot, 'bench', 'results', 'cpu-latest.json');
  writeJson(out, { startedAt: new Date().toISOString(), transactions, clients: CLIENTS, runs, rows });
  log(`\nwrote ${out}`);
  return 0;
}

await runMain(main);
