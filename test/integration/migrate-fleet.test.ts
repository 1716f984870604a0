// `pgtenant migrate up` over many tenants: all reach the latest version, failures stay local, races and kills are safe.
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bin, freshDatabase, runCli, withClient, type TestDatabase } from '../support/db.js';
import { createFleet, fleetFixture, journalByTenant, migrationDir, rowCounts, tablesIn, type MigrationDir } from '../support/migrations.js';
import { sleep } from '../support/proxy.js';

const TENANT_FILES = {
  '20260101000001_create_items': 'CREATE TABLE items (id bigserial PRIMARY KEY, plan_id int, note text);',
  '20260101000002_index_items': 'CREATE INDEX items_note_idx ON items (note);',
  // The INSERT shows how many times the file ran: exactly one row per tenant.
  '20260101000003_items_done': "ALTER TABLE items ADD COLUMN done boolean NOT NULL DEFAULT false;\nINSERT INTO items (note) VALUES ('migrated');",
};
const VERSIONS = Object.keys(TENANT_FILES).map((k) => k.slice(0, 14));
const SHARED_FILES = { '20260101000000_plans': "CREATE TABLE plans (id int PRIMARY KEY, name text);\nINSERT INTO plans VALUES (1, 'free');" };

interface Summary {
  ok: boolean;
  total: number;
  migrated: number;
  upToDate: number;
  failed: number;
  filesApplied: number;
  shared: { applied: { version: string }[] };
  results: { tenant: string; status: string; attempts: number; error?: { sqlstate: string | null; code: string; message: string } }[];
}

function parseSummary(stdout: string): Summary {
  return JSON.parse(stdout) as Summary;
}

/** Every tenant is either fully at `versions` (journal, table and one row) or untouched: never in between. */
async function expectWholeOrNothing(url: string, ids: readonly string[]): Promise<{ whole: number; none: number }> {
  return withClient(url, async (c) => {
    const journal = await journalByTenant(c);
    const tables = await tablesIn(c, ids, 'items');
    let whole = 0;
    let none = 0;
    for (const id of ids) {
      const versions = journal.get(id) ?? [];
      if (versions.length === 0) {
        expect(tables.get(id), id).toBe(false);
        none++;
      } else {
        expect(versions, id).toEqual(VERSIONS);
        expect(tables.get(id), id).toBe(true);
        whole++;
      }
    }
    const counts = await rowCounts(c, ids.filter((id) => tables.get(id)), 'items');
    for (const [schema, n] of counts) expect(n, schema).toBe(1);
    return { whole, none };
  });
}

describe('200 tenants, three tenant migrations and one shared', () => {
  const f = fleetFixture(200, 'fleet', { tenant: TENANT_FILES, shared: SHARED_FILES });

  it('status before: every tenant behind by three', async () => {
    const r = await f.cli('status', '--json');
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({ total: 200, upToDate: 0, behind: 200, changed: 0, latest: VERSIONS[2] });
    expect(s.shared.pending).toEqual(['20260101000000']);
    expect(s.tenants.every((t: { pending: string[] }) => t.pending.length === 3)).toBe(true);
  });

  it('up brings all to the latest version, applies the shared file once, and status agrees', async () => {
    const r = await f.cli('up', '--json');
    expect(r.code, r.stderr).toBe(0);
    const s = parseSummary(r.stdout);
    expect(s).toMatchObject({ ok: true, total: 200, migrated: 200, upToDate: 0, failed: 0, filesApplied: 600 });
    expect(s.shared.applied.map((f) => f.version)).toEqual(['20260101000000']);
    expect(await expectWholeOrNothing(f.db.url, f.ids)).toEqual({ whole: 200, none: 0 });
    await withClient(f.db.url, async (c) => {
      expect((await journalByTenant(c)).get('')).toEqual(['20260101000000']);
      const idx = await c.query(`SELECT count(*)::int AS n FROM pg_catalog.pg_indexes WHERE indexname = 'items_note_idx' AND schemaname = ANY($1)`, [f.ids]);
      expect(idx.rows[0].n).toBe(200);
      // Tenant migrations run as the tenant role: it owns what they create.
      const owners = await c.query(`SELECT count(*)::int AS n FROM pg_catalog.pg_tables WHERE tablename = 'items' AND tableowner = schemaname AND schemaname = ANY($1)`, [f.ids]);
      expect(owners.rows[0].n).toBe(200);
    });
    const st = await f.cli('status');
    expect(st.code, st.stderr).toBe(0);
    expect(st.stdout).toContain('tenants: 200 total, 200 up to date, 0 behind, 0 with changed files');
    expect(st.stdout).toMatch(/shared: +up to date \(at 20260101000000\)/);
  });

  it('a second up is a no-op: nothing runs, the journal is untouched', async () => {
    const before = await withClient(f.db.url, (c) => c.query('SELECT count(*)::int AS n, max(applied_at) AS last FROM pgtenant.migrations'));
    const r = await f.cli('up', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(parseSummary(r.stdout)).toMatchObject({ ok: true, total: 200, migrated: 0, upToDate: 200, filesApplied: 0, results: [] });
    const after = await withClient(f.db.url, (c) => c.query('SELECT count(*)::int AS n, max(applied_at) AS last FROM pgtenant.migrations'));
    expect(after.rows[0]).toEqual(before.rows[0]);
    expect(before.rows[0].n).toBe(601);
  });
});

describe('a failing tenant', () => {
  const f = fleetFixture(12, 'failing', { tenant: TENANT_FILES });

  it('does not stop the others; the summary names it with its SQLSTATE and the exit code is 1', async () => {
    const bad = f.ids[5]!;
    await withClient(f.db.url, (c) => c.query(`CREATE TABLE "${bad}".items (conflicting int)`));
    const r = await f.cli('up', '--concurrency', '3');
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toContain('12 tenant(s): 11 migrated (33 file(s)), 0 up to date, 1 failed');
    const line = r.stdout.split('\n').find((l) => l.includes(bad));
    expect(line).toMatch(/42P07/);
    expect(line).toMatch(/20260101000001_create_items/);
    expect(line).toMatch(/relation "items" already exists/);
    await withClient(f.db.url, async (c) => {
      const journal = await journalByTenant(c);
      expect(journal.get(bad)).toBeUndefined();
      for (const id of f.ids.filter((x) => x !== bad)) expect(journal.get(id), id).toEqual(VERSIONS);
      // Nothing of the failed tenant's transaction survived: its conflicting table is as it was.
      const cols = await c.query(`SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'items'`, [bad]);
      expect(cols.rows.map((x) => x.column_name)).toEqual(['conflicting']);
    });
  });

  it('after the fix, a rerun touches only that tenant', async () => {
    const bad = f.ids[5]!;
    await withClient(f.db.url, (c) => c.query(`DROP TABLE "${bad}".items`));
    const r = await f.cli('up', '--json');
    expect(r.code, r.stderr).toBe(0);
    const s = parseSummary(r.stdout);
    expect(s).toMatchObject({ ok: true, migrated: 1, upToDate: 11, failed: 0 });
    expect(s.results.map((x) => x.tenant)).toEqual([bad]);
    expect(await expectWholeOrNothing(f.db.url, f.ids)).toEqual({ whole: 12, none: 0 });
  });
});

describe('races and kills', () => {
  let db: TestDatabase;
  let ids: string[];
  let files: MigrationDir;

  beforeAll(async () => {
    db = await freshDatabase();
    ids = await createFleet(db.url, 40, 'race');
  }, 60_000);
  afterAll(async () => {
    await files?.remove();
    await db?.drop();
  });

  /** A little slower than TENANT_FILES, so the two migrators overlap. */
  const RACE_FILES = { ...TENANT_FILES, '20260101000002_index_items': 'SELECT pg_catalog.pg_sleep(0.02);\nCREATE INDEX items_note_idx ON items (note);' };

  function start(args: string[]): { done: Promise<{ code: number | null; stdout: string; stderr: string }>; kill: () => void } {
    const child = spawn(process.execPath, [bin(), 'migrate', 'up', '--upstream', db.url, '--dir', files.dir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
    return { done, kill: () => child.kill('SIGKILL') };
  }

  it('two migrators started together migrate every tenant exactly once, without errors', async () => {
    files = await migrationDir({ tenant: RACE_FILES });
    const [a, b] = [start(['--json', '--concurrency', '2']), start(['--json', '--concurrency', '2'])];
    const [ra, rb] = await Promise.all([a.done, b.done]);
    expect(ra.code, ra.stderr).toBe(0);
    expect(rb.code, rb.stderr).toBe(0);
    const sa = parseSummary(ra.stdout);
    const sb = parseSummary(rb.stdout);
    expect(sa.failed + sb.failed).toBe(0);
    // Each tenant was migrated by exactly one of them; the other found it done.
    expect(sa.migrated + sb.migrated).toBe(40);
    const migratedBy = [...sa.results, ...sb.results].filter((x) => x.status === 'migrated').map((x) => x.tenant).sort();
    expect(migratedBy).toEqual(ids);
    expect(await expectWholeOrNothing(db.url, ids)).toEqual({ whole: 40, none: 0 });
  }, 60_000);

  it('a migrator killed mid-run leaves no tenant half-migrated, and a rerun completes', async () => {
    await files.remove();
    // A second set of versions on the same tenants, each tenant taking ~0.1 s, so the kill lands mid-run.
    const next = {
      '20260201000001_create_more': 'CREATE TABLE more (id int);',
      '20260201000002_slow': 'SELECT pg_catalog.pg_sleep(0.1);\nINSERT INTO more VALUES (1);',
    };
    files = await migrationDir({ tenant: { ...RACE_FILES, ...next } });
    const run = start(['--concurrency', '2']);
    const journaled = () => withClient(db.url, async (c) => (await c.query(`SELECT count(DISTINCT tenant_id)::int AS n FROM pgtenant.migrations WHERE version = '20260201000002'`)).rows[0].n as number);
    const deadline = Date.now() + 30_000;
    while ((await journaled()) < 4 && Date.now() < deadline) await sleep(20);
    run.kill();
    const killed = await run.done;
    expect(killed.code, killed.stderr + killed.stdout).toBeNull();
    const partway = await journaled();
    expect(partway).toBeGreaterThanOrEqual(4);
    expect(partway).toBeLessThan(40);

    const check = () =>
      withClient(db.url, async (c) => {
        const journal = await journalByTenant(c);
        const tables = await tablesIn(c, ids, 'more');
        let whole = 0;
        for (const id of ids) {
          const has = (journal.get(id) ?? []).filter((v) => v.startsWith('202602'));
          // All of the second set or none of it: the table exists exactly when both files are journaled.
          expect([0, 2], id).toContain(has.length);
          expect(tables.get(id), id).toBe(has.length === 2);
          if (has.length === 2) whole++;
        }
        const counts = await rowCounts(c, ids.filter((id) => tables.get(id)), 'more');
        for (const [schema, n] of counts) expect(n, schema).toBe(1);
        return whole;
      });
    expect(await check()).toBeLessThan(40);

    const rerun = start(['--json']);
    const r = await rerun.done;
    expect(r.code, r.stderr).toBe(0);
    const s = parseSummary(r.stdout);
    expect(s.failed).toBe(0);
    expect(s.migrated + s.upToDate).toBe(40);
    expect(await check()).toBe(40);
  }, 90_000);
});
