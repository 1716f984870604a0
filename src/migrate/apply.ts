// Applies one target's pending migrations (a tenant schema, or the shared schema) under its advisory lock, and journals them.
import type pg from 'pg';
import { performance } from 'node:perf_hooks';
import { TenantError } from '../tenants/errors.js';
import { quoteIdent, quoteLiteral } from '../tenants/ids.js';
import { compareJournal } from './journal.js';
import type { MigrationFile } from './loader.js';
import { splitStatements } from './sql.js';

export interface MigrationTarget {
  /** The tenant id, or null for the shared schema. */
  id: string | null;
  schema: string;
  /** Set in role isolation: migrations run as this role, so what they create belongs to the tenant. */
  role: string | null;
}

export interface ApplyOptions {
  /** lock_timeout for the files' statements, in milliseconds; 0 waits forever. */
  lockTimeoutMs?: number;
  /** When another migrator holds the target: wait for it (true) or give up at once and report busy (false). */
  waitForLock?: boolean;
}

export interface AppliedFile {
  version: string;
  name: string;
  durationMs: number;
}

export type TargetOutcome = { busy: true } | { busy: false; applied: AppliedFile[] };

/** A migration file that failed: which file, and the SQLSTATE PostgreSQL gave. */
export class MigrationError extends TenantError {
  constructor(
    readonly version: string | null,
    readonly sqlstate: string | null,
    message: string,
    cause?: unknown,
  ) {
    super('migration_failed', message, { cause });
  }
}

/** lock_timeout when none is configured: long enough for a busy table's short locks, short enough not to stall its queries. */
export const DEFAULT_LOCK_TIMEOUT_MS = 5000;

/** Advisory lock classes: 'pgtm' with hashtext(tenant id), and 'pgts' with 0 for the shared schema. */
const TENANT_LOCK_CLASS = 0x7067746d;
const SHARED_LOCK_CLASS = 0x70677473;

function lockKey(target: MigrationTarget): string {
  return target.id === null ? `${SHARED_LOCK_CLASS}, 0` : `${TENANT_LOCK_CLASS}, pg_catalog.hashtext(${quoteLiteral(target.id)})`;
}

function journalFilter(target: MigrationTarget): string {
  return target.id === null ? 'tenant_id IS NULL' : `tenant_id = ${quoteLiteral(target.id)}`;
}

const label = (f: MigrationFile): string => `${f.version}_${f.name}`;
/** The SQLSTATE of a server error, or null for anything else (a socket error's code such as ECONNRESET is not one). */
export const sqlstateOf = (err: unknown): string | null => {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : null;
};

/** node-postgres answers a multi-statement simple query with an array of results, a single one with one. */
function resultList(r: pg.QueryResult | pg.QueryResult[]): pg.QueryResult[] {
  return Array.isArray(r) ? r : [r];
}

/**
 * Takes the target's lock and reads its journal in one round trip. The journal read is a statement after the
 * lock's, so under READ COMMITTED it sees everything a migrator that held the lock before us committed.
 */
async function lockAndPlan(
  client: pg.ClientBase,
  target: MigrationTarget,
  files: readonly MigrationFile[],
  how: { prefix: string; scope: 'xact' | 'session'; wait: boolean },
): Promise<MigrationFile[] | null> {
  const fn = `pg_catalog.pg_${how.wait ? '' : 'try_'}advisory_${how.scope === 'xact' ? 'xact_' : ''}lock`;
  const results = resultList(
    await client.query(
      `${how.prefix}SELECT ${fn}(${lockKey(target)}) AS locked; ` +
        `SELECT version, checksum FROM pgtenant.migrations WHERE ${journalFilter(target)}`,
    ),
  );
  const [locked, journal] = results.slice(-2) as [pg.QueryResult, pg.QueryResult];
  // pg_advisory_lock returns void: reaching here means we hold it.
  if (!how.wait && locked.rows[0]?.locked !== true) return null;
  const { pending, changed: [changed] } = compareJournal(files, new Map(journal.rows.map((r: { version: string; checksum: string }) => [r.version, r.checksum])));
  if (changed) {
    throw new TenantError(
      'checksum_mismatch',
      `migration ${label(changed)} was changed after it was applied to ${describeTarget(target)} (checksum differs)`,
    );
  }
  return pending;
}

function describeTarget(target: MigrationTarget): string {
  return target.id === null ? 'the shared schema' : `tenant ${target.id}`;
}

function settings(target: MigrationTarget, opts: ApplyOptions, local: boolean): string {
  const set = local ? 'SET LOCAL' : 'SET';
  return (
    `${set} lock_timeout = ${Math.max(0, Math.trunc(opts.lockTimeoutMs ?? 0))}; ${set} search_path TO ${quoteIdent(target.schema)}; ` +
    (target.role ? `${set} ROLE ${quoteIdent(target.role)}; ` : '')
  );
}

async function runFile(client: pg.ClientBase, target: MigrationTarget, file: MigrationFile, sql: string): Promise<void> {
  try {
    await client.query(sql);
  } catch (err) {
    const state = sqlstateOf(err);
    throw new MigrationError(
      file.version,
      state,
      `migration ${label(file)} failed for ${describeTarget(target)}: ${state ? state + ' ' : ''}${(err as Error).message}`,
      err,
    );
  }
}

/**
 * Checks the files left the role alone, switches back to the management identity and journals the files, in
 * one round trip. The role switch guards against mistakes, not hostile SQL: migration files are the operator's.
 */
async function journal(client: pg.ClientBase, target: MigrationTarget, done: readonly { file: MigrationFile; ms: number }[], reset: string): Promise<void> {
  const rows = done.map(
    ({ file, ms }) =>
      `(${target.id === null ? 'NULL' : quoteLiteral(target.id)}, ${quoteLiteral(file.version)}, ${quoteLiteral(file.name)}, ${quoteLiteral(file.checksum)}, ${Math.round(ms)})`,
  );
  const results = resultList(
    await client.query(
      `SELECT current_user AS u; ${reset}` +
        `INSERT INTO pgtenant.migrations (tenant_id, version, name, checksum, duration_ms) VALUES ${rows.join(', ')}`,
    ),
  );
  const user = results[0]?.rows[0]?.u as string | undefined;
  if (target.role && user !== target.role) {
    const last = done[done.length - 1]!.file;
    throw new MigrationError(last.version, null, `migrations for ${describeTarget(target)} changed the role to ${user ?? '?'}; migrations must not SET ROLE`);
  }
}

/** Runs files inside the caller's open transaction, whose lock is already held. */
async function runInTransaction(
  client: pg.ClientBase,
  target: MigrationTarget,
  files: readonly MigrationFile[],
  opts: ApplyOptions,
  begin = '',
): Promise<AppliedFile[]> {
  const done: { file: MigrationFile; ms: number }[] = [];
  let prefix = begin + settings(target, opts, true);
  for (const file of files) {
    const started = performance.now();
    await runFile(client, target, file, prefix + file.sql);
    prefix = '';
    done.push({ file, ms: performance.now() - started });
  }
  // Leave the caller's transaction as it was: its own statements should not resolve names in the tenant schema.
  await journal(client, target, done, 'SET LOCAL ROLE NONE; SET LOCAL search_path TO DEFAULT; SET LOCAL lock_timeout TO DEFAULT; ');
  return done.map(({ file, ms }) => ({ version: file.version, name: file.name, durationMs: Math.round(ms) }));
}

/** A file marked no-transaction: each statement commits on its own, so a failure can leave earlier ones applied. */
async function runOutsideTransaction(client: pg.ClientBase, target: MigrationTarget, file: MigrationFile, opts: ApplyOptions): Promise<AppliedFile> {
  const started = performance.now();
  const reset = 'RESET ROLE; RESET search_path; RESET lock_timeout; ';
  await client.query(settings(target, opts, false));
  try {
    for (const statement of splitStatements(file.sql)) await runFile(client, target, file, statement.text);
    const ms = performance.now() - started;
    await journal(client, target, [{ file, ms }], reset);
    return { version: file.version, name: file.name, durationMs: Math.round(ms) };
  } catch (err) {
    await client.query(reset);
    throw err;
  }
}

/**
 * Applies the pending files inside the caller's transaction (tenant creation), waiting for the lock.
 * Every file must be transactional. Returns how many ran.
 */
export async function applyTenantMigrations(
  client: pg.ClientBase,
  target: MigrationTarget,
  files: readonly MigrationFile[],
  opts: ApplyOptions = {},
): Promise<number> {
  const pending = await lockAndPlan(client, target, files, { prefix: '', scope: 'xact', wait: true });
  if (!pending?.length) return 0;
  return (await runInTransaction(client, target, pending, opts)).length;
}

async function transaction<T>(client: pg.ClientBase, fn: () => Promise<T>): Promise<T> {
  try {
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  }
}

/**
 * Brings one target up to date on a connection outside any transaction. Transactional files all run in one
 * transaction under a transaction-level lock, so a killed migrator leaves nothing half-applied; a file marked
 * no-transaction splits the run, which then holds a session-level lock for its whole length.
 * A failure to roll back or unlock propagates: the caller must then discard the connection.
 */
export async function migrateTarget(
  client: pg.ClientBase,
  target: MigrationTarget,
  files: readonly MigrationFile[],
  opts: ApplyOptions = {},
): Promise<TargetOutcome> {
  const wait = opts.waitForLock ?? true;
  if (files.every((f) => f.transaction)) {
    return transaction(client, async () => {
      const pending = await lockAndPlan(client, target, files, { prefix: 'BEGIN; ', scope: 'xact', wait });
      if (pending === null) return { busy: true as const };
      return { busy: false as const, applied: pending.length ? await runInTransaction(client, target, pending, opts) : [] };
    });
  }
  // Unlocking a lock we failed to take only warns, so the finally block need not know how far we got.
  let held = true;
  try {
    const pending = await lockAndPlan(client, target, files, { prefix: '', scope: 'session', wait });
    if (pending === null) {
      held = false;
      return { busy: true };
    }
    const applied: AppliedFile[] = [];
    for (let i = 0; i < pending.length; ) {
      const file = pending[i]!;
      if (!file.transaction) {
        applied.push(await runOutsideTransaction(client, target, file, opts));
        i++;
        continue;
      }
      let end = i;
      while (end < pending.length && pending[end]!.transaction) end++;
      const run = pending.slice(i, end);
      applied.push(...(await transaction(client, () => runInTransaction(client, target, run, opts, 'BEGIN; '))));
      i = end;
    }
    return { busy: false, applied };
  } finally {
    if (held) await client.query(`SELECT pg_catalog.pg_advisory_unlock(${lockKey(target)})`);
  }
}
