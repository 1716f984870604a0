// `pgtenant migrate up|status|new|stamp`: the migrator from the command line.
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Argv } from 'yargs';
import type { OptionName } from '../../config.js';
import { DEFAULT_LOCK_TIMEOUT_MS } from '../../migrate/apply.js';
import { stamp, type StampScope, type TenantPlan } from '../../migrate/journal.js';
import { loadMigrations } from '../../migrate/loader.js';
import { progressReporter } from '../../migrate/progress.js';
import { defaultConcurrency, runMigrations, type RunSummary } from '../../migrate/runner.js';
import { migrationStatus } from '../../migrate/status.js';
import { columns, EXIT_FAILURE, EXIT_OK, UsageError, type Command } from '../command.js';
import { withControlSchema, withUpstream } from '../upstream.js';

const OPTIONS: readonly OptionName[] = ['upstream', 'migrationsDir'];
/** Tenants listed by a plain `status`; --json lists them all. */
const STATUS_ROWS = 50;
const MAX_CONCURRENCY = 64;

const dirAlias = (y: Argv): Argv => y.alias('migrations-dir', 'dir');
const tenantOption = (y: Argv, describe: string): Argv => y.option('tenant', { type: 'string', array: true, describe });
const jsonFlag = (y: Argv): Argv => y.option('json', { type: 'boolean', describe: 'Print JSON' });

function tenantList(args: Record<string, unknown>): string[] | undefined {
  const list = args.tenant as string[] | undefined;
  return list?.length ? [...new Set(list)] : undefined;
}

function wholeNumber(value: unknown, flag: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${flag} must be a whole number from ${min} to ${max}`);
  return n;
}

function failureLines(summary: RunSummary): string[] {
  const failed = summary.results.filter((r) => r.status === 'failed');
  const lines = failed.map((r) => `  ${r.tenant}  ${r.error?.sqlstate ?? r.error?.code ?? ''}  ${r.error?.message ?? ''}`);
  return failed.length ? [`failed tenants (${failed.length}):`, ...lines] : [];
}

function summaryLines(s: RunSummary): string[] {
  const lines: string[] = [];
  if (s.shared.error) lines.push(`shared migration failed: ${s.shared.error.sqlstate ?? s.shared.error.code} ${s.shared.error.message}`);
  else if (s.shared.applied.length) lines.push(`shared: applied ${s.shared.applied.map((f) => `${f.version}_${f.name}`).join(', ')}`);
  const seconds = s.durationMs / 1000;
  const rate = seconds > 0 ? Math.round((s.migrated + s.failed) / seconds) : 0;
  lines.push(
    `${s.total} tenant(s): ${s.migrated} migrated (${s.filesApplied} file(s)), ${s.upToDate} up to date, ${s.failed} failed` +
      (s.notAttempted ? `, ${s.notAttempted} not attempted (interrupted)` : '') +
      ` in ${seconds.toFixed(1)}s (${rate} tenants/s, concurrency ${s.concurrency})`,
  );
  return [...lines, ...failureLines(s)];
}

const up: Command = {
  command: 'up',
  describe: 'Apply pending migrations: shared ones once, then tenant ones in every tenant schema',
  options: OPTIONS,
  builder: (y) =>
    jsonFlag(tenantOption(dirAlias(y), 'Only this tenant (repeat for several)'))
      .option('concurrency', { type: 'number', describe: 'Tenants migrated at once (default: 2 per core, within the server\'s free connections)' })
      .option('lock-timeout', { type: 'number', default: DEFAULT_LOCK_TIMEOUT_MS, describe: 'lock_timeout in milliseconds for migration statements' })
      .option('lock-retries', { type: 'number', default: 3, describe: 'Retries of a tenant after a lock timeout or deadlock' }),
  async run(args, ctx) {
    const files = await loadMigrations(ctx.config.migrationsDir);
    const concurrency = wholeNumber(args.concurrency, 'concurrency', 1, MAX_CONCURRENCY);
    const lockTimeoutMs = wholeNumber(args.lockTimeout, 'lock-timeout', 0, 3_600_000)!;
    const lockRetries = wholeNumber(args.lockRetries, 'lock-retries', 0, 100)!;
    const tenants = tenantList(args);
    const stop = new AbortController();
    void ctx.stopped.then((sig) => {
      ctx.log.warn({ signal: sig }, 'stopping: no new tenant is started, the running ones finish (send it again to abort them)');
      stop.abort();
    });
    const reporter = progressReporter(process.stderr, ctx.log);
    const summary = await withUpstream(
      ctx.config,
      ctx.log,
      async (pool) => {
        return runMigrations(pool, {
          files,
          concurrency: concurrency ?? (await defaultConcurrency(pool)),
          lockTimeoutMs,
          lockRetries,
          log: ctx.log,
          onProgress: (p) => reporter.update(p),
          signal: stop.signal,
          ...(tenants ? { tenants } : {}),
        });
      },
      { max: (concurrency ?? MAX_CONCURRENCY) + 1 },
    );
    reporter.finish();
    if (args.json) ctx.out(JSON.stringify(summary));
    else summaryLines(summary).forEach((line) => ctx.out(line));
    return summary.ok ? EXIT_OK : EXIT_FAILURE;
  },
};

function statusRows(plans: readonly TenantPlan[]): string[] {
  const behind = plans.filter((p) => p.pending.length || p.changed.length);
  const rows = [
    ['TENANT', 'STATE', 'VERSION', 'PENDING', 'CHANGED'],
    ...behind.slice(0, STATUS_ROWS).map((p) => [p.id, p.state, p.current ?? '-', String(p.pending.length), p.changed.join(',') || '-']),
  ];
  const lines = columns(rows, '  ');
  if (behind.length > STATUS_ROWS) lines.push(`  ... and ${behind.length - STATUS_ROWS} more (use --json for all)`);
  return behind.length ? lines : [];
}

const status: Command = {
  command: 'status',
  describe: 'Show which tenants are behind, in one query over the journal (exit 1 if an applied file changed)',
  options: OPTIONS,
  builder: (y) => jsonFlag(tenantOption(dirAlias(y), 'Only this tenant (repeat for several)')),
  async run(args, ctx) {
    const files = await loadMigrations(ctx.config.migrationsDir);
    const status = await withControlSchema(ctx.config, ctx.log, (c) => migrationStatus(c, files, tenantList(args)));
    const { shared, tenants, latest } = status;
    if (args.json) {
      ctx.out(JSON.stringify(status));
    } else {
      ctx.out(`migrations: ${status.tenantFiles} tenant file(s)${latest ? `, latest ${latest}` : ''}; ${status.sharedFiles} shared file(s)`);
      const sharedState = shared.changed.length ? `changed after applying: ${shared.changed.join(', ')}` : shared.pending.length ? `${shared.pending.length} pending` : 'up to date';
      ctx.out(`shared:  ${sharedState}${shared.current ? ` (at ${shared.current})` : ''}`);
      ctx.out(`tenants: ${status.total} total, ${status.upToDate} up to date, ${status.behind} behind, ${tenants.filter((t) => t.changed.length).length} with changed files`);
      statusRows(tenants).forEach((line) => ctx.out(line));
    }
    return status.changed ? EXIT_FAILURE : EXIT_OK;
  },
};

/** UTC `YYYYMMDDHHMMSS`, bumped past the newest existing version so two files made in one second still order. */
async function nextVersion(dir: string, now: Date): Promise<string> {
  const stampNow = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  const existing = (await readdir(dir).catch(() => [] as string[])).map((f) => /^([0-9]+)_/.exec(f)?.[1]).filter((v): v is string => !!v);
  const newest = existing.filter((v) => v.length === stampNow.length).sort().at(-1);
  return newest && newest >= stampNow ? (BigInt(newest) + 1n).toString() : stampNow;
}

const create: Command = {
  command: 'new <name>',
  describe: 'Write a new, empty, timestamped migration file',
  options: ['migrationsDir'],
  builder: (y) =>
    dirAlias(y)
      .positional('name', { type: 'string', describe: 'What it does, e.g. add_invoices (letters, digits, _ and -)' })
      .option('shared', { type: 'boolean', describe: 'A shared migration (runs once, in schema public) instead of a tenant one' }),
  async run(args, ctx) {
    const name = String(args.name);
    if (!/^[A-Za-z0-9_-]{1,100}$/.test(name)) throw new UsageError(`migration name '${name}': use letters, digits, _ and - only`);
    const kind = args.shared ? 'shared' : 'tenant';
    const dir = path.join(ctx.config.migrationsDir, kind);
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, `${await nextVersion(dir, new Date())}_${name}.sql`);
    const where = kind === 'shared' ? 'once, in the shared schema public' : "in every tenant schema, with search_path set to that tenant's schema";
    await writeFile(
      file,
      `-- ${name}: runs ${where}, inside one transaction (no BEGIN/COMMIT here).\n` +
        `-- For CREATE INDEX CONCURRENTLY and the like, make the first line: -- pgtenant:no-transaction\n\n`,
      { flag: 'wx' },
    );
    ctx.out(file);
    return EXIT_OK;
  },
};

function stampScope(args: Record<string, unknown>): StampScope {
  const tenants = tenantList(args);
  const chosen = [tenants !== undefined, args.all === true, args.shared === true].filter(Boolean).length;
  if (chosen !== 1) throw new UsageError('stamp: give --tenant ID (repeatable), --all or --shared');
  return tenants ? { tenants } : args.all ? { allTenants: true } : { shared: true };
}

const stampCommand: Command = {
  command: 'stamp',
  describe: 'Record migrations up to a version as applied without running them (for schemas that already have them)',
  options: OPTIONS,
  builder: (y) =>
    tenantOption(dirAlias(y), 'Tenant to stamp (repeat for several)')
      .option('version', { type: 'string', demandOption: true, describe: 'Last version the schemas already have' })
      .option('all', { type: 'boolean', describe: 'Stamp every registered tenant' })
      .option('shared', { type: 'boolean', describe: 'Stamp the shared migrations instead' }),
  async run(args, ctx) {
    const scope = stampScope(args);
    const files = await loadMigrations(ctx.config.migrationsDir);
    const version = String(args.version);
    const written = await withControlSchema(ctx.config, ctx.log, (c) => stamp(c, 'shared' in scope ? files.shared : files.tenant, version, scope));
    const who = 'shared' in scope ? 'the shared schema' : 'tenants' in scope ? `tenant(s) ${scope.tenants.join(', ')}` : 'every tenant';
    ctx.out(`stamped ${who} up to ${version}: ${written} journal row(s) written`);
    return EXIT_OK;
  },
};

export const migrateCommand: Command = {
  command: 'migrate',
  describe: 'Run, inspect, write and stamp migrations',
  options: OPTIONS,
  subcommands: [up, status, create, stampCommand],
};
