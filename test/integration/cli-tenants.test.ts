// `pgtenant init` and `pgtenant tenants ...` as a user runs them: the built CLI against a real server, exit codes and output.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, runCli, uniqueTenantId, type TestDatabase } from '../support/db.js';

let db: TestDatabase;
const up = () => ['--upstream', db.url];
const MIGRATIONS = ['--migrations-dir', 'examples/migrations'];

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db?.drop();
});

/** stderr of a failed command: exactly one line, no stack trace. */
function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split('\n');
  expect(lines, stderr).toHaveLength(1);
  return lines[0]!;
}

describe('before init', () => {
  it('tenants list fails with a hint to run init', async () => {
    const r = await runCli(['tenants', 'list', ...up()]);
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/pgtenant init/);
  });
});

describe('init and the tenant lifecycle', () => {
  const id = uniqueTenantId('cli');
  const given = uniqueTenantId('given');
  let password = '';

  it('init installs the control schema and is idempotent', async () => {
    for (let i = 0; i < 2; i++) {
      const r = await runCli(['init', ...up()]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/control schema pgtenant is ready/);
      expect(r.stdout).not.toContain(new URL(db.url).password);
    }
  });

  it('create prints the generated password once, and the tenant can log in with it', async () => {
    const r = await runCli(['tenants', 'create', id, ...up(), ...MIGRATIONS]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`created tenant ${id} .*3 migration`));
    const m = /^password: (\S+)/m.exec(r.stdout);
    expect(m).not.toBeNull();
    password = m![1]!;
    expect(r.stdout.split(password)).toHaveLength(2);
    const u = new URL(db.url);
    u.username = id;
    u.password = encodeURIComponent(password);
    const c = new pg.Client({ connectionString: u.toString() });
    await c.connect();
    const { rows } = await c.query('SELECT current_user AS u, current_schema() AS s, count(*)::int AS n FROM notes');
    await c.end();
    expect(rows[0]).toEqual({ u: id, s: id, n: 0 });
  });

  it('create with --password prints no password; PGTENANT_UPSTREAM works instead of the flag', async () => {
    const r = await runCli(['tenants', 'create', given, '--password', 'a given password'], { PGTENANT_UPSTREAM: db.url });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/password:/);
  });

  it('create refuses a duplicate and an invalid id with exit 1 and one line', async () => {
    const dup = await runCli(['tenants', 'create', id, ...up()]);
    expect(dup.code).toBe(1);
    expect(oneLine(dup.stderr)).toMatch(/already exists/);
    const bad = await runCli(['tenants', 'create', 'Bad-Id', ...up()]);
    expect(bad.code).toBe(1);
    expect(oneLine(bad.stderr)).toMatch(/invalid tenant id/);
  });

  it('list --json and show --json print the records', async () => {
    const r = await runCli(['tenants', 'list', '--json', ...up()]);
    expect(r.code, r.stderr).toBe(0);
    const list = JSON.parse(r.stdout) as { id: string; state: string; schema: string; role: string | null; createdAt: string }[];
    expect(list.map((t) => t.id).sort()).toEqual([id, given].sort());
    expect(list.find((t) => t.id === id)).toMatchObject({ id, schema: id, role: id, state: 'active' });
    expect(Number.isNaN(Date.parse(list[0]!.createdAt))).toBe(false);

    const show = await runCli(['tenants', 'show', id, '--json', ...up()]);
    expect(show.code, show.stderr).toBe(0);
    expect(JSON.parse(show.stdout)).toMatchObject({ id, state: 'active', schemaVersion: '20260103000000', migrationsApplied: 3 });
    expect((await runCli(['tenants', 'show', id, ...up()])).stdout).toMatch(/^version: +20260103000000 \(3 applied\)$/m);
    const text = await runCli(['tenants', 'list', ...up()]);
    expect(text.stdout).toMatch(new RegExp(`^${id}\\s+active\\s+${id}\\s+${id}\\s`, 'm'));
  });

  it('set --pool-size gives the tenant its own pool size, default takes it back; a bad value is exit 2', async () => {
    const r = await runCli(['tenants', 'set', id, '--pool-size', '7', ...up()]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('pool size 7');
    expect(JSON.parse((await runCli(['tenants', 'show', id, '--json', ...up()])).stdout).poolSize).toBe(7);
    expect((await runCli(['tenants', 'show', id, ...up()])).stdout).toMatch(/^pool: +7$/m);
    const back = await runCli(['tenants', 'set', id, '--pool-size', 'default', ...up()]);
    expect(back.code, back.stderr).toBe(0);
    expect(JSON.parse((await runCli(['tenants', 'show', id, '--json', ...up()])).stdout).poolSize).toBeNull();
    const bad = await runCli(['tenants', 'set', id, '--pool-size', 'lots', ...up()]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--pool-size');
  });

  it('set --max-clients gives the tenant its own client cap (0: none), default takes it back; a bad value, or no option, is exit 2 and changes nothing', async () => {
    const r = await runCli(['tenants', 'set', id, '--max-clients', '5', ...up()]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('clients at most 5');
    expect(JSON.parse((await runCli(['tenants', 'show', id, '--json', ...up()])).stdout).maxClients).toBe(5);
    expect((await runCli(['tenants', 'show', id, ...up()])).stdout).toMatch(/^clients: +at most 5$/m);
    const none = await runCli(['tenants', 'set', id, '--max-clients', '0', '--pool-size', '3', ...up()]);
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toContain('clients no cap');
    expect(none.stdout).toContain('pool size 3');
    // A bad value in either option: exit 2 before anything is set.
    const bad = await runCli(['tenants', 'set', id, '--pool-size', '4', '--max-clients', 'many', ...up()]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--max-clients');
    expect(JSON.parse((await runCli(['tenants', 'show', id, '--json', ...up()])).stdout)).toMatchObject({ maxClients: 0, poolSize: 3 });
    const neither = await runCli(['tenants', 'set', id, ...up()]);
    expect(neither.code).toBe(2);
    expect(neither.stderr).toContain('--max-clients');
    const back = await runCli(['tenants', 'set', id, '--max-clients', 'default', '--pool-size', 'default', ...up()]);
    expect(back.code, back.stderr).toBe(0);
    expect(JSON.parse((await runCli(['tenants', 'show', id, '--json', ...up()])).stdout)).toMatchObject({ maxClients: null, poolSize: null });
  });

  it('suspend and resume change the state', async () => {
    const s = await runCli(['tenants', 'suspend', id, ...up()]);
    expect(s.code, s.stderr).toBe(0);
    expect(JSON.parse((await runCli(['tenants', 'show', id, '--json', ...up()])).stdout).state).toBe('suspended');
    const r = await runCli(['tenants', 'resume', id, ...up()]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse((await runCli(['tenants', 'show', id, '--json', ...up()])).stdout).state).toBe('active');
  });

  it('suspend --disconnect and disconnect ask every proxy to end the sessions (NOTIFY pgtenant_disconnect)', async () => {
    const listener = new pg.Client({ connectionString: db.url });
    await listener.connect();
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(`${n.channel}:${n.payload}`));
    await listener.query('LISTEN pgtenant_disconnect');
    try {
      const d = await runCli(['tenants', 'disconnect', id, ...up()]);
      expect(d.code, d.stderr).toBe(0);
      const plain = await runCli(['tenants', 'suspend', id, ...up()]);
      expect(plain.code, plain.stderr).toBe(0);
      const s = await runCli(['tenants', 'suspend', id, '--disconnect', ...up()]);
      expect(s.code, s.stderr).toBe(0);
      expect(s.stdout).toMatch(/suspended, open sessions disconnected/);
      await listener.query('SELECT 1'); // notifications sent before this round trip have arrived
      expect(heard).toEqual([`pgtenant_disconnect:${id}`, `pgtenant_disconnect:${id}`]);
      expect((await runCli(['tenants', 'resume', id, ...up()])).code).toBe(0);
    } finally {
      await listener.end();
    }
  });

  it('drop needs --yes (exit 2), then removes the tenant; an unknown tenant is exit 1', async () => {
    const refused = await runCli(['tenants', 'drop', id, ...up()]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--yes/);
    expect((await runCli(['tenants', 'show', id, ...up()])).code).toBe(0);

    const dropped = await runCli(['tenants', 'drop', id, '--yes', ...up()]);
    expect(dropped.code, dropped.stderr).toBe(0);
    for (const args of [['show', id], ['suspend', id], ['disconnect', id], ['drop', id, '--yes']]) {
      const r = await runCli(['tenants', ...args, ...up()]);
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe(`pgtenant: tenant '${id}' not found`);
    }
  });
});

describe('bad setup', () => {
  it('without an upstream is a usage error (exit 2)', async () => {
    const r = await runCli(['tenants', 'list']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/upstream/);
  });

  it('an explicit --migrations-dir that does not exist fails create', async () => {
    const r = await runCli(['tenants', 'create', uniqueTenantId('nomig'), ...up(), '--migrations-dir', 'no/such/folder']);
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/no\/such\/folder/);
  });

  it('proxy refuses to serve the admin API on a non-loopback address without a token (exit 2, nothing listens)', async () => {
    const r = await runCli(['proxy', ...up(), '--listen', '127.0.0.1:0', '--admin-listen', '0.0.0.0:0']);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/refusing to serve the admin API on 0\.0\.0\.0:0 without a token: set --admin-token/);
  });

  it('an unreachable upstream is one line naming it, without its password (exit 1)', async () => {
    const r = await runCli(['init', '--upstream', 'postgres://postgres:hunter2-secret@127.0.0.1:1/postgres']);
    expect(r.code).toBe(1);
    const line = oneLine(r.stderr);
    expect(line).toMatch(/cannot connect to upstream postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/postgres/);
    expect(line).not.toContain('hunter2');
  });
});
