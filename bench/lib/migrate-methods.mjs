// The compared methods, each with its own set of tenants in its own database, and the measured passes over them.
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { pgtenantMigrate } from './migrate-cli.mjs';
import { naiveMigrate } from './migrate-naive.mjs';
import pg from 'pg';
import { ignoreErrors, quoteIdent, settle, verifySet } from './migrate-setup.mjs';
import { isStopping } from './processes.mjs';

const log = (line) => process.stdout.write(line + '\n');

async function timed(fn) {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

/** Checks a set after a migration pass: every schema has the last column and every version is recorded. */
async function verify(m, files) {
  const v = await verifySet(m.url, m.kind, m.schemas);
  const want = m.kind === 'raw' ? null : m.schemas.length * files.length;
  if (v.migrated !== m.schemas.length || v.versions !== want) {
    throw new Error(`${m.kind} set after migrating: ${v.migrated}/${m.schemas.length} schemas have items.note, ${v.versions} versions recorded (expected ${want})`);
  }
}

/** The naive loop over its set; `pass` resolves with the wall time of one pass. */
export function naiveMethod(set, files) {
  return {
    ...set,
    method: 'naive loop',
    concurrency: 1,
    kind: 'naive',
    async pass(expectMigrated) {
      const r = await naiveMigrate(set.url, set.schemas, files, { isStopping });
      if (r.migrated !== expectMigrated) throw new Error(`naive loop migrated ${r.migrated}, expected ${expectMigrated}`);
      return { seconds: r.seconds };
    },
  };
}

/**
 * The ceiling: the three statements alone, one transaction per schema (BEGIN; SET LOCAL search_path; files;
 * COMMIT), `concurrency` connections, no version check or record. No migrator can do less work per tenant, so
 * this row shows what the machine allows. It has no no-op pass: it cannot tell what is pending.
 */
export function rawMethod(set, files, concurrency) {
  const sql = files.map((f) => f.sql).join('\n');
  return {
    ...set,
    method: 'statements alone',
    concurrency,
    kind: 'raw',
    async pass(expectMigrated) {
      if (expectMigrated === 0) return { seconds: null };
      const started = performance.now();
      const clients = await Promise.all(Array.from({ length: concurrency }, async () => {
        const c = ignoreErrors(new pg.Client({ connectionString: set.url }));
        await c.connect();
        return c;
      }));
      let next = 0;
      try {
        await Promise.all(
          clients.map(async (c) => {
            while (next < set.schemas.length) {
              if (isStopping()) throw new Error('stopped');
              await c.query(`BEGIN; SET LOCAL search_path TO ${quoteIdent(set.schemas[next++])}; ${sql}\nCOMMIT`);
            }
          }),
        );
      } finally {
        await Promise.all(clients.map((c) => c.end()));
      }
      return { seconds: (performance.now() - started) / 1000 };
    },
  };
}

/** `pgtenant migrate up` over its set; concurrency undefined leaves the CLI's default, read back from its summary. */
export function pgtenantMethod(set, repoRoot, dir, concurrency) {
  return {
    ...set,
    method: 'pgtenant migrate up',
    concurrency,
    kind: 'pgtenant',
    async pass(expectMigrated) {
      const r = await pgtenantMigrate(repoRoot, set.url, dir, { concurrency, tenants: set.schemas.length });
      const s = r.summary;
      const failed = Array.isArray(s.failed) ? s.failed.length : s.failed;
      if (!s.ok || r.exitCode !== 0 || failed || s.migrated !== expectMigrated || s.total !== set.schemas.length) {
        const stderr = r.stderr ? `\nstderr: ${r.stderr.slice(-800)}` : '';
        throw new Error(`pgtenant migrate up (exit ${r.exitCode}) summary: ${JSON.stringify(s).slice(0, 800)}${stderr}`);
      }
      this.concurrency = s.concurrency;
      // Per-tenant results would make the JSON tens of megabytes at 10,000 tenants; the counts say it all here.
      const { results, ...counts } = s;
      return { seconds: r.seconds, cliDurationMs: s.durationMs, summary: { ...counts, resultsListed: results?.length ?? 0 } };
    },
  };
}

/**
 * `runs` rounds; in each, every method gets a fresh set (rebuilt after the first round; not timed), migrates it,
 * checks it, and passes again with nothing pending. A failing method is reported and left out of later rounds.
 * Rows keep the order of `list` whatever order the passes ran in.
 */
export async function measure(list, runs, files) {
  const rows = list.map((m) => ({ method: m.method, concurrency: m.concurrency, tenants: m.schemas.length, database: m.database, runs: [] }));
  for (let run = 1; run <= runs; run++) {
    // Each round starts with the next method, so a slow spell of the machine does not always hit the same one.
    const order = list.map((_, i) => (i + run - 1) % list.length);
    for (const i of order) {
      const m = list[i];
      const row = rows[i];
      if (row.error) continue;
      if (isStopping()) throw new Error('stopped before the runs finished');
      try {
        const rebuildSeconds = run > 1 ? await timed(() => m.rebuild()) : 0;
        const settleSeconds = await timed(() => settle(m.url));
        // The machine may be shared: the load before each pass helps tell a slow method from a busy moment.
        const loadBefore = loadavg()[0];
        const up = await m.pass(m.schemas.length);
        await verify(m, files);
        const noop = await m.pass(0);
        row.concurrency = m.concurrency;
        const { summary, ...rest } = up;
        row.runs.push({ ...rest, noopSeconds: noop.seconds, noopCliDurationMs: noop.cliDurationMs, rebuildSeconds, settleSeconds, loadBefore, summary });
        const rate = (m.schemas.length / up.seconds).toFixed(0);
        const own = up.cliDurationMs != null ? `  (CLI's own durationMs ${up.cliDurationMs}, no-op ${noop.cliDurationMs})` : '';
        log(`  run ${run}  ${m.method.padEnd(19)}  c=${String(m.concurrency).padStart(2)}  ${up.seconds.toFixed(2).padStart(7)} s  ${rate.padStart(6)} tenants/s   no-op ${noop.seconds?.toFixed(2) ?? '-'} s  load ${loadBefore.toFixed(2)}${own}`);
      } catch (err) {
        if (isStopping()) throw err;
        row.error = err.message;
        log(`  run ${run}  ${m.method.padEnd(19)}  c=${String(m.concurrency ?? 'default')}  FAILED: ${err.message}`);
      }
    }
  }
  return rows;
}
