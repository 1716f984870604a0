// The migrator's rules for files and locks: lock_timeout with retries, changed checksums, no-transaction files, new, stamp.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TenantService } from '../../src/tenants/service.js';
import { freshDatabase, runCli, uniqueTenantId, type TestDatabase } from '../support/db.js';
import { createFleet, journalByTenant, migrationDir, tablesIn, type MigrationDir } from '../support/migrations.js';
import { sleep } from '../support/proxy.js';

let db: TestDatabase;
let admin: pg.Pool;
let files: MigrationDir;
const cli = (...args: string[]) => runCli(['migrate', ...args, '--upstream', db.url, '--dir', files.dir]);
const journal = async () => {
  const c = await admin.connect();
  try {
    return await journalByTenant(c);
  } finally {
    c.release();
  }
};

interface Result {
  tenant: string;
  status: string;
  attempts: number;
  error?: { code: string; sqlstate: string | null; version: string | null; message: string };
}

beforeAll(async () => {
  db = await freshDatabase();
  admin = new pg.Pool({ connectionString: db.url, max: 3 });
});
afterAll(async () => {
  await admin?.end();
  await db?.drop();
});
beforeEach(async () => {
  files = await migrationDir({ tenant: { '20260101000001_create_items': 'CREATE TABLE items (id int PRIMARY KEY, note text);' } });
});
afterEach(async () => {
  await files.remove();
});

describe('lock_timeout', () => {
  let ids: string[];
  beforeAll(async () => {
    ids = await createFleet(db.url, 4, 'locked');
  }, 60_000);

  /** Holds an ACCESS EXCLUSIVE lock on the first tenant's items table until release() is called. */
  async function holdLock(): Promise<{ release: () => Promise<void> }> {
    const c = await admin.connect();
    await c.query('BEGIN');
    await c.query(`LOCK TABLE "${ids[0]}".items IN ACCESS EXCLUSIVE MODE`);
    return {
      release: async () => {
        await c.query('ROLLBACK');
        c.release();
      },
    };
  }

  it('a tenant whose table is locked fails with 55P03 after its retries; the others proceed', async () => {
    expect((await cli('up')).code).toBe(0);
    await files.write('tenant', '20260101000002_add_done', 'ALTER TABLE items ADD COLUMN done boolean;');
    const lock = await holdLock();
    try {
      const r = await cli('up', '--json', '--lock-timeout', '200', '--lock-retries', '2');
      expect(r.code, r.stderr).toBe(1);
      const s = JSON.parse(r.stdout) as { migrated: number; failed: number; results: Result[] };
      expect(s).toMatchObject({ migrated: 3, failed: 1 });
      const failed = s.results.find((x) => x.status === 'failed')!;
      expect(failed).toMatchObject({ tenant: ids[0], attempts: 3, error: { sqlstate: '55P03', version: '20260101000002', code: 'migration_failed' } });
      expect(failed.error!.message).toMatch(/lock timeout/);
      expect(r.stderr).toMatch(/"sqlstate":"55P03".*will be retried/);
    } finally {
      await lock.release();
    }
    const j = await journal();
    expect(j.get(ids[0]!)).toEqual(['20260101000001']);
    for (const id of ids.slice(1)) expect(j.get(id)).toEqual(['20260101000001', '20260101000002']);
  });

  it('a lock released while the tenant waits for its retry: the retry succeeds', async () => {
    await files.write('tenant', '20260101000002_add_done', 'ALTER TABLE items ADD COLUMN done boolean;');
    const lock = await holdLock();
    const run = cli('up', '--json', '--lock-timeout', '200', '--lock-retries', '10', '--tenant', ids[0]!);
    // Released only once the migrator is seen waiting and its 200 ms lock_timeout has surely run out: under
    // load the CLI may take longer than any fixed sleep to start.
    const waiting = async () =>
      (
        await admin.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'ALTER TABLE%'",
        )
      ).rows[0]!.n > 0;
    for (let i = 0; i < 300 && !(await waiting()); i++) await sleep(20);
    await sleep(400);
    await lock.release();
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as { total: number; results: Result[] };
    expect(s.total).toBe(1);
    expect(s.results[0]!.status).toBe('migrated');
    expect(s.results[0]!.attempts).toBeGreaterThan(1);
  });
});

describe('checksums', () => {
  it('an edited, already-applied file is reported for every tenant and nothing runs again', async () => {
    const ids = await createFleet(db.url, 3, 'checksum');
    expect((await cli('up', '--tenant', ids[0]!, '--tenant', ids[1]!, '--tenant', ids[2]!)).code).toBe(0);
    const before = await admin.query('SELECT count(*)::int AS n FROM pgtenant.migrations');
    await files.write('tenant', '20260101000001_create_items', 'CREATE TABLE items (id bigint PRIMARY KEY, note text);');
    await files.write('tenant', '20260101000002_more', 'CREATE TABLE more (id int);');

    const r = await cli('up', '--json', ...ids.flatMap((id) => ['--tenant', id]));
    expect(r.code).toBe(1);
    const s = JSON.parse(r.stdout) as { failed: number; results: Result[] };
    expect(s.failed).toBe(3);
    for (const x of s.results) {
      expect(x.error).toMatchObject({ code: 'checksum_mismatch', version: '20260101000001' });
      expect(x.error!.message).toMatch(/changed after it was applied/);
    }
    expect((await admin.query('SELECT count(*)::int AS n FROM pgtenant.migrations')).rows[0]).toEqual(before.rows[0]);
    const c = await admin.connect();
    try {
      expect([...(await tablesIn(c, ids, 'more')).values()]).toEqual([false, false, false]);
    } finally {
      c.release();
    }

    const st = await cli('status', ...ids.flatMap((id) => ['--tenant', id]));
    expect(st.code).toBe(1);
    expect(st.stdout).toContain('3 with changed files');
    expect(st.stdout).toMatch(new RegExp(`${ids[0]}\\s+active\\s+20260101000001\\s+1\\s+20260101000001`));
  });
});

describe('files that cannot run in a transaction', () => {
  it('CREATE INDEX CONCURRENTLY is refused before anything runs, with the marker to use', async () => {
    const [id] = await createFleet(db.url, 1, 'concurrent');
    await files.write('tenant', '20260101000002_index', '-- an index on a big table\nCREATE INDEX CONCURRENTLY items_note ON items (note);');
    const r = await cli('up', '--tenant', id!);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/20260101000002_index\.sql line 2: CREATE INDEX CONCURRENTLY cannot run inside a transaction/);
    expect(r.stderr).toContain('-- pgtenant:no-transaction');
    expect((await journal()).get(id!)).toBeUndefined();
  });

  it('BEGIN/COMMIT in a file is refused: the migrator owns the transaction', async () => {
    await files.write('tenant', '20260101000002_tx', 'BEGIN;\nCREATE TABLE x (id int);\nCOMMIT;');
    const r = await cli('status');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/line 1: BEGIN is transaction control/);
  });

  it('with the marker, the file runs outside a transaction after the ones before it, and is journaled', async () => {
    const ids = await createFleet(db.url, 2, 'marked');
    await files.write('tenant', '20260101000002_index', '-- pgtenant:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_note ON items (note);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_note ON items (id, note);');
    await files.write('tenant', '20260101000003_after', 'ALTER TABLE items ADD COLUMN done boolean;');
    const r = await cli('up', '--json', ...ids.flatMap((id) => ['--tenant', id]));
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ migrated: 2, filesApplied: 6 });
    const { rows } = await admin.query(
      `SELECT n.nspname, c.relname, i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) AND c.relname LIKE 'items_%note' ORDER BY 1, 2`,
      [ids],
    );
    expect(rows).toHaveLength(4);
    expect(rows.every((x) => x.indisvalid)).toBe(true);
    const j = await journal();
    for (const id of ids) expect(j.get(id)).toEqual(['20260101000001', '20260101000002', '20260101000003']);
    // The session settings of the no-transaction run do not outlive it (the pool reuses the connection).
    expect((await cli('up', '--json', ...ids.flatMap((id) => ['--tenant', id]))).code).toBe(0);
  });

  it('tenants create runs a no-transaction file after the creating transaction commits', async () => {
    await files.write('tenant', '20260101000002_index', '-- pgtenant:no-transaction\nCREATE INDEX CONCURRENTLY items_note ON items (note);');
    const id = uniqueTenantId('created');
    const svc = new TenantService(admin, { isolation: 'role', migrationsDir: files.dir });
    expect((await svc.create(id)).migrationsApplied).toBe(2);
    expect((await journal()).get(id)).toEqual(['20260101000001', '20260101000002']);
    const idx = await admin.query(`SELECT tableowner FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'items'`, [id]);
    expect(idx.rows[0].tableowner).toBe(id);
  });
});

describe('shared migrations', () => {
  it('a failing shared file stops the run before any tenant, exit 1', async () => {
    const [id] = await createFleet(db.url, 1, 'sharedfail');
    await files.write('shared', '20260101000000_broken', 'CREATE TABLE no_such_schema.t (id int);');
    const r = await cli('up', '--json', '--tenant', id!);
    expect(r.code).toBe(1);
    const s = JSON.parse(r.stdout);
    expect(s.shared.error).toMatchObject({ sqlstate: '3F000', version: '20260101000000' });
    expect(s.total).toBe(0);
    expect((await journal()).get(id!)).toBeUndefined();
    expect((await journal()).get('')).toBeUndefined();
  });
});

describe('migrate new', () => {
  it('writes timestamped files that order after the existing ones, tenant or shared', async () => {
    const a = await cli('new', 'add_invoices');
    const b = await cli('new', 'add-payments');
    const c = await cli('new', 'plans', '--shared');
    for (const r of [a, b, c]) expect(r.code, r.stderr).toBe(0);
    const tenant = (await readdir(path.join(files.dir, 'tenant'))).sort();
    expect(tenant).toHaveLength(3);
    expect(tenant[1]).toMatch(/^\d{14}_add_invoices\.sql$/);
    expect(tenant[2]).toMatch(/^\d{14}_add-payments\.sql$/);
    expect(a.stdout.trim()).toBe(path.join(files.dir, 'tenant', tenant[1]!));
    expect(await readFile(a.stdout.trim(), 'utf8')).toMatch(/^-- add_invoices: runs in every tenant schema/);
    expect(await readdir(path.join(files.dir, 'shared'))).toEqual([path.basename(c.stdout.trim())]);
    // The new (comment-only) files are valid migrations.
    expect((await cli('status')).code).toBe(0);
  });

  it('refuses a name with spaces or slashes (exit 2)', async () => {
    const r = await cli('new', '../evil name');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/letters, digits, _ and -/);
  });
});

describe('migrate stamp', () => {
  it('marks versions an adopted schema already has, so up applies only the rest', async () => {
    const ids = await createFleet(db.url, 2, 'stamped');
    await files.write('tenant', '20260101000002_add_done', 'ALTER TABLE items ADD COLUMN done boolean;');
    // The first tenant's schema already has items (it predates pgtenant).
    await admin.query(`CREATE TABLE "${ids[0]}".items (id int PRIMARY KEY, note text)`);
    await admin.query(`ALTER TABLE "${ids[0]}".items OWNER TO "${ids[0]}"`);
    const st = await cli('stamp', '--tenant', ids[0]!, '--version', '20260101000001');
    expect(st.code, st.stderr).toBe(0);
    expect(st.stdout).toContain('1 journal row(s) written');
    const again = await cli('stamp', '--tenant', ids[0]!, '--version', '20260101000001');
    expect(again.stdout).toContain('0 journal row(s) written');

    const r = await cli('up', '--json', ...ids.flatMap((id) => ['--tenant', id]));
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ migrated: 2, filesApplied: 3 });
    const j = await journal();
    for (const id of ids) expect(j.get(id)).toEqual(['20260101000001', '20260101000002']);
    const durations = await admin.query('SELECT duration_ms FROM pgtenant.migrations WHERE tenant_id = $1 ORDER BY version', [ids[0]]);
    expect(durations.rows[0].duration_ms).toBe(0);
  });

  it('refuses an unknown tenant, an unknown version and a missing scope', async () => {
    const unknown = await cli('stamp', '--tenant', 'no_such_tenant', '--version', '20260101000001');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/no such tenant: no_such_tenant/);
    const version = await cli('stamp', '--all', '--version', '20990101000000');
    expect(version.code).toBe(1);
    expect(version.stderr).toMatch(/no migration file has version 20990101000000/);
    const scope = await cli('stamp', '--version', '20260101000001');
    expect(scope.code).toBe(2);
  });
});

describe('up on named tenants', () => {
  it('an unknown --tenant is refused before anything runs', async () => {
    const [id] = await createFleet(db.url, 1, 'named');
    const r = await cli('up', '--tenant', id!, '--tenant', 'no_such_tenant');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no such tenant: no_such_tenant/);
    expect((await journal()).get(id!)).toBeUndefined();
  });

  it('logs progress lines when stderr is not a terminal', async () => {
    const ids = await createFleet(db.url, 3, 'progress');
    const r = await cli('up', ...ids.flatMap((id) => ['--tenant', id]));
    expect(r.code, r.stderr).toBe(0);
    const progress = r.stderr
      .split('\n')
      .filter((l) => l.includes('"migration progress"'))
      .map((l) => JSON.parse(l));
    expect(progress.at(-1)).toMatchObject({ done: 3, total: 3, failed: 0 });
    expect(r.stderr).not.toMatch(/\x1b\[/);
  });
});
