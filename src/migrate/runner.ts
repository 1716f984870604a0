// `migrate up`: the shared schema first, then every tenant with work, several at once on a bounded set of connections.
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { silentLogger, type Logger } from '../logger.js';
import { requireControlSchema } from '../tenants/control-schema.js';
import { TenantError } from '../tenants/errors.js';
import { MigrationError, migrateTarget, sqlstateOf, type AppliedFile, type MigrationTarget } from './apply.js';
import { planShared, planTenants, type TenantPlan } from './journal.js';
import type { MigrationSet } from './loader.js';

export interface RunOptions {
  files: MigrationSet;
  /** Only these tenants; all registered tenants when absent. */
  tenants?: readonly string[];
  concurrency: number;
  lockTimeoutMs: number;
  /** How many more times a tenant is tried after a lock timeout, deadlock or serialization failure. */
  lockRetries: number;
  log?: Logger;
  /** Called after every tenant that had work, with counts so far. */
  onProgress?: (progress: Progress) => void;
  /** Called with each tenant's result as it is known (up-to-date tenants are only counted). */
  onResult?: (result: TenantResult) => void;
  /** When aborted, no further tenant is started; the ones running finish. */
  signal?: AbortSignal;
}

export interface Progress {
  done: number;
  total: number;
  failed: number;
  elapsedMs: number;
}

export type TenantStatus = 'migrated' | 'up_to_date' | 'failed' | 'not_attempted';

export interface FailureInfo {
  /** pgtenant's error code: migration_failed, checksum_mismatch, ... */
  code: string;
  /** PostgreSQL's SQLSTATE when the server raised the error. */
  sqlstate: string | null;
  /** The file that failed, when one did. */
  version: string | null;
  message: string;
}

export interface TenantResult {
  tenant: string;
  status: TenantStatus;
  applied: AppliedFile[];
  attempts: number;
  durationMs: number;
  error?: FailureInfo;
}

export interface RunSummary {
  ok: boolean;
  /** Tenants considered. */
  total: number;
  migrated: number;
  upToDate: number;
  failed: number;
  notAttempted: number;
  filesApplied: number;
  shared: { applied: AppliedFile[]; error?: FailureInfo };
  concurrency: number;
  durationMs: number;
  /** Only tenants that had work or failed; up-to-date ones are counted, not listed. */
  results: TenantResult[];
}

/** SQLSTATEs worth another try: lock_not_available, deadlock_detected, serialization_failure. */
const RETRYABLE = new Set(['55P03', '40P01', '40001']);

/**
 * Tenants migrated at once when --concurrency is not given: DDL is mostly waiting on commits and catalog
 * locks, so two per core of this machine, within a quarter of the server's free connection slots.
 */
export async function defaultConcurrency(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ free: number }>(
    `SELECT pg_catalog.current_setting('max_connections')::int - pg_catalog.current_setting('superuser_reserved_connections')::int
            - (SELECT count(*) FROM pg_catalog.pg_stat_activity)::int AS free`,
  );
  return Math.max(1, Math.min(2 * availableParallelism(), 16, Math.floor((rows[0]?.free ?? 4) / 4)));
}

export function failureInfo(err: unknown): FailureInfo {
  if (err instanceof MigrationError) return { code: err.code, sqlstate: err.sqlstate, version: err.version, message: err.message };
  if (err instanceof TenantError) return { code: err.code, sqlstate: null, version: null, message: err.message };
  return { code: 'migration_failed', sqlstate: sqlstateOf(err), version: null, message: (err as Error).message ?? String(err) };
}

interface WorkItem {
  plan: TenantPlan;
  attempts: number;
  /** Set once another migrator was found holding the tenant: then wait for it instead of skipping. */
  wait: boolean;
  notBefore: number;
  started: number;
}

class WorkQueue {
  private readonly items: WorkItem[];
  constructor(plans: readonly TenantPlan[]) {
    this.items = plans.map((plan) => ({ plan, attempts: 0, wait: false, notBefore: 0, started: 0 }));
  }
  push(item: WorkItem): void {
    this.items.push(item);
  }
  /** The first item due now, or how long until one is; undefined when empty. */
  take(now: number): WorkItem | number | undefined {
    if (this.items.length === 0) return undefined;
    const i = this.items.findIndex((w) => w.notBefore <= now);
    if (i >= 0) return this.items.splice(i, 1)[0]!;
    return Math.min(...this.items.map((w) => w.notBefore)) - now;
  }
  drain(): WorkItem[] {
    return this.items.splice(0);
  }
}

function toTarget(plan: TenantPlan): MigrationTarget {
  return { id: plan.id, schema: plan.schema, role: plan.role };
}

/** A connection that failed outside a migration's own SQL may be broken: hand it back to be closed. */
function connectionSuspect(err: unknown): boolean {
  return !(err instanceof TenantError);
}

export async function runMigrations(pool: pg.Pool, opts: RunOptions): Promise<RunSummary> {
  const log = (opts.log ?? silentLogger).child({ component: 'migrate' });
  const started = performance.now();
  const elapsed = (): number => Math.round(performance.now() - started);
  const summary: RunSummary = {
    ok: true,
    total: 0,
    migrated: 0,
    upToDate: 0,
    failed: 0,
    notAttempted: 0,
    filesApplied: 0,
    shared: { applied: [] },
    concurrency: opts.concurrency,
    durationMs: 0,
    results: [],
  };
  const record = (r: TenantResult): void => {
    summary.results.push(r);
    opts.onResult?.(r);
    if (r.status === 'migrated') summary.migrated++;
    else if (r.status === 'up_to_date') summary.upToDate++;
    else if (r.status === 'failed') summary.failed++;
    else summary.notAttempted++;
    summary.filesApplied += r.applied.length;
  };

  const first = await pool.connect();
  let plans: TenantPlan[];
  try {
    await requireControlSchema(first);
    const shared = opts.files.shared.length ? await planShared(first, opts.files.shared) : null;
    // A changed shared file also goes through migrateTarget, which reports it under the lock.
    if (shared && shared.pending.length + shared.changed.length > 0) {
      try {
        const outcome = await migrateTarget(first, { id: null, schema: 'public', role: null }, opts.files.shared, {
          lockTimeoutMs: opts.lockTimeoutMs,
          waitForLock: true,
        });
        if (!outcome.busy) summary.shared.applied = outcome.applied;
        log.info({ applied: summary.shared.applied.map((f) => f.version) }, 'shared migrations applied');
      } catch (err) {
        // Tenant files may build on shared objects, so a failed shared migration stops the run here.
        summary.shared.error = failureInfo(err);
        summary.ok = false;
        log.error({ err: summary.shared.error.message }, 'shared migration failed; no tenant was migrated');
      }
    }
    plans = summary.ok ? await planTenants(first, opts.files.tenant, opts.tenants) : [];
  } finally {
    first.release();
  }

  summary.total = plans.length;
  const work: TenantPlan[] = [];
  for (const plan of plans) {
    if (plan.changed.length) {
      const message = `tenant ${plan.id}: migration ${plan.changed.join(', ')} was changed after it was applied (checksum differs); restore the file or add a new migration`;
      record({ tenant: plan.id, status: 'failed', applied: [], attempts: 0, durationMs: 0, error: { code: 'checksum_mismatch', sqlstate: null, version: plan.changed[0]!, message } });
    } else if (plan.pending.length) work.push(plan);
    else summary.upToDate++;
  }
  const total = work.length;
  let done = 0;
  if (summary.ok) log.info({ tenants: plans.length, pending: total, concurrency: opts.concurrency }, 'migration plan');
  const progress = (): void => opts.onProgress?.({ done, total, failed: summary.failed, elapsedMs: elapsed() });
  if (total) progress();

  const queue = new WorkQueue(work);
  const finish = (item: WorkItem, r: Omit<TenantResult, 'tenant' | 'attempts' | 'durationMs'>): void => {
    record({ tenant: item.plan.id, attempts: item.attempts, durationMs: Math.round(performance.now() - item.started), ...r });
    done++;
    progress();
  };

  const worker = async (): Promise<void> => {
    let client: pg.PoolClient | undefined;
    try {
      for (;;) {
        if (opts.signal?.aborted) return;
        const next = queue.take(Date.now());
        if (next === undefined) return;
        if (typeof next === 'number') {
          await sleep(next);
          continue;
        }
        const item = next;
        item.attempts++;
        if (item.started === 0) item.started = performance.now();
        try {
          if (!client) {
            client = await pool.connect();
            client.on('error', (err) => log.debug({ err: err.message }, 'migrator connection lost'));
          }
          const outcome = await migrateTarget(client, toTarget(item.plan), opts.files.tenant, { lockTimeoutMs: opts.lockTimeoutMs, waitForLock: item.wait });
          if (outcome.busy) {
            // Another migrator holds this tenant: do the others first, then wait for it and re-read the journal.
            log.debug({ tenant: item.plan.id }, 'tenant busy with another migrator; coming back to it');
            item.attempts--;
            queue.push({ ...item, wait: true });
            continue;
          }
          finish(item, { status: outcome.applied.length ? 'migrated' : 'up_to_date', applied: outcome.applied });
          log.debug({ tenant: item.plan.id, applied: outcome.applied.map((f) => f.version) }, 'tenant migrated');
        } catch (err) {
          if (client && connectionSuspect(err)) {
            client.release(err as Error);
            client = undefined;
          }
          const info = failureInfo(err);
          if (info.sqlstate && RETRYABLE.has(info.sqlstate) && item.attempts <= opts.lockRetries) {
            const delay = Math.min(opts.lockTimeoutMs || 1000, 2000) * item.attempts + Math.floor(Math.random() * 100);
            log.info({ tenant: item.plan.id, sqlstate: info.sqlstate, attempt: item.attempts, retryInMs: delay }, 'tenant migration will be retried');
            queue.push({ ...item, notBefore: Date.now() + delay });
            continue;
          }
          log.warn({ tenant: item.plan.id, sqlstate: info.sqlstate, version: info.version, err: info.message }, 'tenant migration failed');
          finish(item, { status: 'failed', applied: [], error: info });
        }
      }
    } finally {
      client?.release();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency, total)) }, worker));

  for (const item of queue.drain()) record({ tenant: item.plan.id, status: 'not_attempted', applied: [], attempts: item.attempts, durationMs: 0 });
  summary.ok = summary.ok && summary.failed === 0 && summary.notAttempted === 0;
  summary.durationMs = elapsed();
  log.info(
    { migrated: summary.migrated, upToDate: summary.upToDate, failed: summary.failed, notAttempted: summary.notAttempted, durationMs: summary.durationMs },
    'migration finished',
  );
  return summary;
}
