// Migration jobs through the admin API: progress while running, per-tenant results, one job at a time, named tenants, failures, metrics.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminFixture, sampleValue, type AdminFixture, type Sample } from '../support/admin.js';
import { createFleet, journalByTenant, migrationDir, tablesIn, type MigrationDir } from '../support/migrations.js';
import { sleep } from '../support/proxy.js';

interface Job {
  id: string;
  state: 'running' | 'succeeded' | 'failed';
  createdAt: string;
  finishedAt: string | null;
  tenants: string[] | null;
  concurrency: number;
  progress: { done: number; total: number; failed: number; elapsedMs: number };
  results: {
    tenant: string;
    status: string;
    applied: { version: string; name: string; durationMs: number }[];
    attempts: number;
    durationMs: number;
    error?: { code: string; sqlstate: string | null; version: string | null; message: string };
  }[];
  summary: null | { ok: boolean; total: number; migrated: number; upToDate: number; failed: number; notAttempted: number; filesApplied: number };
  error: { code: string; message: string } | null;
}

/** A fixture whose migrations folder starts empty, with `n` tenants made directly (fast: no files to apply yet). */
async function fleetWithApi(n: number, prefix: string): Promise<{ fx: AdminFixture; files: MigrationDir; ids: string[] }> {
  const files = await migrationDir();
  const fx = await adminFixture({ migrationsDir: files.dir });
  const ids = await createFleet(fx.db.url, n, prefix);
  return { fx, files, ids };
}

async function startJob(fx: AdminFixture, body: Record<string, unknown>): Promise<Job> {
  const r = await fx.request('POST', '/v1/migrations', body);
  expect(r.status, r.text).toBe(202);
  expect(r.headers.get('location')).toBe(`/v1/migrations/${r.json.id}`);
  return r.json as Job;
}

async function getJob(fx: AdminFixture, id: string): Promise<Job> {
  const r = await fx.request('GET', `/v1/migrations/${id}`);
  expect(r.status, r.text).toBe(200);
  return r.json as Job;
}

/** Polls the job until it is no longer running. */
async function waitForJob(fx: AdminFixture, id: string, timeoutMs = 20_000): Promise<Job> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await getJob(fx, id);
    if (job.state !== 'running') return job;
    if (Date.now() > deadline) throw new Error(`job ${id} still running after ${timeoutMs} ms: ${JSON.stringify(job.progress)}`);
    await sleep(50);
  }
}

/** Runs fn on a superuser connection of the fixture. */
async function onAdmin<T>(fx: AdminFixture, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await fx.admin.connect();
  try {
    return await fn(c);
  } finally {
    c.release();
  }
}

const scrape = async (fx: AdminFixture): Promise<Sample[]> => (await fx.scrape()).samples;

describe('a job over 100 tenants', () => {
  let fx: AdminFixture;
  let files: MigrationDir;
  let ids: string[];

  beforeAll(async () => {
    ({ fx, files, ids } = await fleetWithApi(100, 'mjob'));
  });
  afterAll(async () => {
    await fx?.close();
    await files?.remove();
  });

  it('reports progress while it runs, per-tenant results when done, and the metrics follow', async () => {
    // The sleep stretches the job to a couple of seconds at concurrency 2, long enough to watch it run.
    await files.write('tenant', '20260301000001_create_widgets', 'SELECT pg_catalog.pg_sleep(0.03);\nCREATE TABLE widgets (id int PRIMARY KEY);');
    const before = await scrape(fx);
    expect(sampleValue(before, 'pgtenant_migration_jobs_running')).toBe(0);

    const started = await startJob(fx, { concurrency: 2 });
    expect(started).toMatchObject({ state: 'running', tenants: null, concurrency: 2, finishedAt: null, summary: null, error: null });

    let sawRunning = false;
    let sawRunningGauge = false;
    let sawPending = false;
    let lastDone = 0;
    let job: Job;
    for (;;) {
      job = await getJob(fx, started.id);
      expect(job.progress.done, 'progress.done never goes back').toBeGreaterThanOrEqual(lastDone);
      lastDone = job.progress.done;
      if (job.state !== 'running') break;
      if (job.progress.done > 0 && job.progress.done < job.progress.total) {
        sawRunning = true;
        expect(job.progress.total).toBe(100);
        // Results grow while the job runs, one per finished tenant.
        expect(job.results.length).toBe(job.progress.done);
        const m = await scrape(fx);
        if (sampleValue(m, 'pgtenant_migration_jobs_running') === 1) sawRunningGauge = true;
        if (sampleValue(m, 'pgtenant_migration_pending_tenants') > 0) sawPending = true;
      }
      await sleep(50);
    }
    expect(sawRunning, 'saw state running with 0 < done < total').toBe(true);
    expect(sawRunningGauge, 'pgtenant_migration_jobs_running was 1 during the run').toBe(true);
    expect(sawPending, 'pgtenant_migration_pending_tenants > 0 during the run').toBe(true);

    expect(job.state).toBe('succeeded');
    expect(job.error).toBeNull();
    expect(job.finishedAt).not.toBeNull();
    expect(job.progress).toMatchObject({ done: 100, total: 100, failed: 0 });
    expect(job.summary).toMatchObject({ ok: true, total: 100, migrated: 100, upToDate: 0, failed: 0, notAttempted: 0, filesApplied: 100 });
    expect(job.results).toHaveLength(100);
    expect(job.results.map((r) => r.tenant).sort()).toEqual(ids);
    for (const r of job.results) {
      expect(r, r.tenant).toMatchObject({ status: 'migrated', attempts: 1 });
      expect(r.applied.map((a) => [a.version, a.name]), r.tenant).toEqual([['20260301000001', 'create_widgets']]);
      expect(r.error).toBeUndefined();
    }

    const tables = await onAdmin(fx, (c) => tablesIn(c, ids, 'widgets'));
    expect([...tables.values()].filter(Boolean)).toHaveLength(100);

    const after = await scrape(fx);
    expect(sampleValue(after, 'pgtenant_migration_tenants_total', { result: 'migrated' })).toBeGreaterThanOrEqual(100);
    expect(sampleValue(after, 'pgtenant_migration_jobs_total', { outcome: 'succeeded' })).toBe(1);
    expect(sampleValue(after, 'pgtenant_migration_jobs_total', { outcome: 'failed' })).toBe(0);
    expect(sampleValue(after, 'pgtenant_migration_jobs_running')).toBe(0);
    expect(sampleValue(after, 'pgtenant_migration_pending_tenants')).toBe(0);

    // The finished job stays readable.
    expect((await getJob(fx, started.id)).state).toBe('succeeded');
  });
});

describe('one job at a time, named tenants, status', () => {
  let fx: AdminFixture;
  let files: MigrationDir;
  let ids: string[];

  beforeAll(async () => {
    ({ fx, files, ids } = await fleetWithApi(8, 'mnamed'));
    // A gate the test opens: a migration blocked on it keeps its job running for as long as the test needs.
    await fx.admin.query('CREATE TABLE public.gate (open boolean NOT NULL); GRANT SELECT ON public.gate TO PUBLIC');
  });
  afterAll(async () => {
    await fx?.close();
    await files?.remove();
  });

  it('refuses a second POST while a job runs with 409 migration_running, and takes one again once it finished', async () => {
    await files.write(
      'tenant',
      '20260301000001_gated',
      'DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.gate WHERE open) LOOP PERFORM pg_catalog.pg_sleep(0.01); END LOOP; END $$;\nCREATE TABLE gated (id int);',
    );
    const first = await startJob(fx, { tenants: [ids[0]!], concurrency: 1 });
    const second = await fx.request('POST', '/v1/migrations', { tenants: [ids[1]!] });
    expect(second.status, second.text).toBe(409);
    expect(second.json.error.code).toBe('migration_running');
    expect(second.json.error.message).toContain(first.id);
    // Every shape of request is refused, not just one naming the same tenants.
    expect((await fx.request('POST', '/v1/migrations', {})).json?.error?.code).toBe('migration_running');
    expect((await getJob(fx, first.id)).state).toBe('running');

    await fx.admin.query('INSERT INTO public.gate VALUES (true)');
    const done = await waitForJob(fx, first.id);
    expect(done.state).toBe('succeeded');
    expect(done.results.map((r) => [r.tenant, r.status])).toEqual([[ids[0], 'migrated']]);

    const again = await startJob(fx, { tenants: [ids[1]!] });
    expect((await waitForJob(fx, again.id)).state).toBe('succeeded');
  });

  it('a job limited to named tenants touches only them, and /v1/migrations/status agrees with the journal', async () => {
    // ids[0] and ids[1] are at 20260301000001 from the test above; the new file makes every tenant behind.
    await files.write('tenant', '20260301000002_add_note', 'ALTER TABLE gated ADD COLUMN note text;');
    const named = [ids[2]!, ids[5]!];
    const job = await waitForJob(fx, (await startJob(fx, { tenants: named })).id);
    expect(job.state).toBe('succeeded');
    expect(job.tenants).toEqual(named);
    expect(job.summary).toMatchObject({ ok: true, total: 2, migrated: 2, failed: 0 });
    expect(job.results.map((r) => r.tenant).sort()).toEqual([...named].sort());
    for (const r of job.results) expect(r.applied.map((a) => a.version)).toEqual(['20260301000001', '20260301000002']);

    await onAdmin(fx, async (c) => {
      const journal = await journalByTenant(c);
      const expected = new Map<string, string[]>([
        [ids[0]!, ['20260301000001']],
        [ids[1]!, ['20260301000001']],
        [ids[2]!, ['20260301000001', '20260301000002']],
        [ids[5]!, ['20260301000001', '20260301000002']],
      ]);
      for (const id of ids) expect(journal.get(id) ?? [], id).toEqual(expected.get(id) ?? []);
      const tables = await tablesIn(c, ids, 'gated');
      for (const id of ids) expect(tables.get(id), id).toBe(expected.has(id));

      const status = await fx.request('GET', '/v1/migrations/status');
      expect(status.status, status.text).toBe(200);
      const s = status.json;
      expect(s).toMatchObject({ latest: '20260301000002', tenantFiles: 2, sharedFiles: 0, total: 8, upToDate: 2, behind: 6, changed: 0 });
      const upToDate = s.tenants.filter((t: { pending: string[] }) => t.pending.length === 0).map((t: { id: string }) => t.id).sort();
      expect(upToDate).toEqual([...named].sort());
      for (const t of s.tenants as { id: string; pending: string[] }[]) {
        const applied = journal.get(t.id) ?? [];
        expect(t.pending, t.id).toEqual(['20260301000001', '20260301000002'].filter((v) => !applied.includes(v)));
      }
    });
  });

  it('an unknown tenant in the list is 404 tenant_not_found and starts nothing', async () => {
    const r = await fx.request('POST', '/v1/migrations', { tenants: [ids[3]!, 'no_such_tenant_zz'] });
    expect(r.status, r.text).toBe(404);
    expect(r.json.error.code).toBe('tenant_not_found');
    const s = (await fx.request('GET', '/v1/migrations/status')).json;
    expect(s).toMatchObject({ upToDate: 2, behind: 6 });
  });

  it('GET /v1/migrations/{unknown job} is 404 not_found', async () => {
    const r = await fx.request('GET', '/v1/migrations/unknownjob');
    expect(r.status, r.text).toBe(404);
    expect(r.json.error.code).toBe('not_found');
  });
});

describe('a failing tenant', () => {
  let fx: AdminFixture;
  let files: MigrationDir;
  let ids: string[];

  beforeAll(async () => {
    ({ fx, files, ids } = await fleetWithApi(6, 'mfail'));
  });
  afterAll(async () => {
    await fx?.close();
    await files?.remove();
  });

  it('fails the job and names the tenant with SQLSTATE 42P07 and the version; the others are migrated', async () => {
    const bad = ids[3]!;
    await fx.admin.query(`CREATE TABLE "${bad}".things (conflicting int)`);
    await files.write('tenant', '20260301000001_create_things', 'CREATE TABLE things (id int PRIMARY KEY);');
    const job = await waitForJob(fx, (await startJob(fx, { concurrency: 2 })).id);
    expect(job.state).toBe('failed');
    expect(job.error).toBeNull();
    expect(job.progress).toMatchObject({ done: 6, total: 6, failed: 1 });
    expect(job.summary).toMatchObject({ ok: false, total: 6, migrated: 5, failed: 1 });
    expect(job.results).toHaveLength(6);
    const failed = job.results.find((r) => r.tenant === bad)!;
    expect(failed).toMatchObject({ status: 'failed', applied: [] });
    expect(failed.error).toMatchObject({ sqlstate: '42P07', version: '20260301000001' });
    expect(failed.error!.message).toMatch(/relation "things" already exists/);
    for (const r of job.results.filter((x) => x.tenant !== bad)) {
      expect(r.status, r.tenant).toBe('migrated');
      expect(r.applied.map((a) => a.version)).toEqual(['20260301000001']);
    }
    const journal = await onAdmin(fx, journalByTenant);
    expect(journal.get(bad)).toBeUndefined();

    const m = await scrape(fx);
    expect(sampleValue(m, 'pgtenant_migration_jobs_total', { outcome: 'failed' })).toBe(1);
    expect(sampleValue(m, 'pgtenant_migration_jobs_total', { outcome: 'succeeded' })).toBe(0);
    expect(sampleValue(m, 'pgtenant_migration_tenants_total', { result: 'failed' })).toBe(1);
    expect(sampleValue(m, 'pgtenant_migration_tenants_total', { result: 'migrated' })).toBe(5);
  });
});
