// Migration jobs for the admin API: the runner of `migrate up` in the background, one job at a time, kept for polling.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Logger } from '../logger.js';
import { DEFAULT_LOCK_TIMEOUT_MS } from '../migrate/apply.js';
import { requireTenants } from '../migrate/journal.js';
import { loadMigrations, type MigrationSet } from '../migrate/loader.js';
import { progressReporter } from '../migrate/progress.js';
import { failureInfo, runMigrations, type Progress, type RunSummary, type TenantResult, type TenantStatus } from '../migrate/runner.js';
import { migrationStatus, type MigrationStatus } from '../migrate/status.js';
import { withCheckedClient } from '../tenants/control-schema.js';
import { conflict } from './errors.js';
import type { LiveJobs } from './metrics.js';

export type JobState = 'running' | 'succeeded' | 'failed';

export interface MigrationJob {
  id: string;
  state: JobState;
  createdAt: Date;
  finishedAt: Date | null;
  /** The tenants asked for; null for all. */
  tenants: string[] | null;
  concurrency: number;
  progress: Progress;
  /** Per tenant that had work, in the order they finished; grows while the job runs. */
  results: TenantResult[];
  /** Counts once finished. */
  summary: Omit<RunSummary, 'results'> | null;
  /** Why the job could not run at all (the upstream went away, ...). */
  error: { code: string; message: string } | null;
}

export interface JobEvents {
  migrationTenantFinished(result: TenantStatus): void;
  migrationJobFinished(ok: boolean): void;
}

export interface MigrationServiceOptions {
  upstream: string;
  /** Folder with tenant/ and shared/; null: no migrations. */
  migrationsDir: string | null;
  connectTimeout: number;
  /** The management pool, for status queries. */
  pool: pg.Pool;
  log: Logger;
  events?: JobEvents;
}

/** Finished jobs kept for GET /v1/migrations/{job}. */
const KEEP_FINISHED = 50;
const DEFAULT_CONCURRENCY = 4;
const LOCK_RETRIES = 3;

export class MigrationService implements LiveJobs {
  private readonly jobs = new Map<string, MigrationJob>();
  private readonly stop = new AbortController();
  private current: { job: MigrationJob; done: Promise<void> } | null = null;
  private readonly log: Logger;

  constructor(private readonly opts: MigrationServiceOptions) {
    this.log = opts.log.child({ component: 'migration-jobs' });
  }

  private async files(): Promise<MigrationSet> {
    return this.opts.migrationsDir ? loadMigrations(this.opts.migrationsDir) : { tenant: [], shared: [] };
  }

  /** Where every tenant stands, as `migrate status --json` prints it. */
  async status(): Promise<MigrationStatus> {
    const files = await this.files();
    return withCheckedClient(this.opts.pool, (c) => migrationStatus(c, files));
  }

  /** Checks the request (files load, tenants exist), then runs the job in the background. */
  async start(req: { tenants?: string[]; concurrency?: number }): Promise<MigrationJob> {
    this.refuseIfRunning();
    const files = await this.files();
    const tenants = req.tenants?.length ? [...new Set(req.tenants)] : null;
    await withCheckedClient(this.opts.pool, async (c) => {
      if (tenants) await requireTenants(c, tenants);
    });
    // Checked again: two requests may have passed the first check while the files loaded.
    this.refuseIfRunning();
    const concurrency = req.concurrency ?? DEFAULT_CONCURRENCY;
    const job: MigrationJob = {
      id: randomBytes(9).toString('base64url'),
      state: 'running',
      createdAt: new Date(),
      finishedAt: null,
      tenants,
      concurrency,
      progress: { done: 0, total: 0, failed: 0, elapsedMs: 0 },
      results: [],
      summary: null,
      error: null,
    };
    this.jobs.set(job.id, job);
    this.trim();
    this.current = { job, done: this.run(job, files) };
    return job;
  }

  private refuseIfRunning(): void {
    if (this.current) throw conflict('migration_running', `migration job ${this.current.job.id} is still running`);
  }

  private async run(job: MigrationJob, files: MigrationSet): Promise<void> {
    const log = this.log.child({ job: job.id });
    const pool = new pg.Pool({
      connectionString: this.opts.upstream,
      max: job.concurrency + 1,
      application_name: 'pgtenant-migrate',
      connectionTimeoutMillis: this.opts.connectTimeout,
    });
    pool.on('error', (err) => log.debug({ err: err.message }, 'migration connection lost'));
    log.info({ tenants: job.tenants ?? 'all', concurrency: job.concurrency }, 'migration job started');
    const reporter = progressReporter(null, log);
    try {
      const { results: _all, ...summary } = await runMigrations(pool, {
        files,
        concurrency: job.concurrency,
        lockTimeoutMs: DEFAULT_LOCK_TIMEOUT_MS,
        lockRetries: LOCK_RETRIES,
        log,
        signal: this.stop.signal,
        onProgress: (p) => {
          job.progress = p;
          reporter.update(p);
        },
        onResult: (r) => {
          job.results.push(r);
          this.opts.events?.migrationTenantFinished(r.status);
        },
        ...(job.tenants ? { tenants: job.tenants } : {}),
      });
      reporter.finish();
      job.summary = summary;
      job.state = summary.ok ? 'succeeded' : 'failed';
    } catch (err) {
      const { code, message } = failureInfo(err);
      job.error = { code, message };
      job.state = 'failed';
      log.error({ err: job.error.message }, 'migration job failed');
    } finally {
      job.finishedAt = new Date();
      this.current = null;
      this.opts.events?.migrationJobFinished(job.state === 'succeeded');
      await pool.end().catch(() => undefined);
    }
    log.info({ state: job.state, ...job.progress }, 'migration job finished');
  }

  get(id: string): MigrationJob | undefined {
    return this.jobs.get(id);
  }

  running(): number {
    return this.current ? 1 : 0;
  }

  pendingTenants(): number {
    const p = this.current?.job.progress;
    return p ? p.total - p.done : 0;
  }

  /** Drops the oldest finished jobs beyond the ones kept. */
  private trim(): void {
    const finished = [...this.jobs.values()].filter((j) => j.state !== 'running');
    for (const j of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.jobs.delete(j.id);
  }

  /** No new tenant is started; the ones running finish (each is one transaction). */
  async close(): Promise<void> {
    this.stop.abort();
    await this.current?.done;
  }
}
