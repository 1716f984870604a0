// `pgtenant demo`: an embedded PostgreSQL, two tenants with the example migrations, and the proxy, ready to try.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { resolveConfig } from '../../config.js';
import { startEmbeddedPostgres } from '../../embedded-postgres.js';
import { startProxy } from '../../proxy/server.js';
import { DEFAULT_LOCK_TIMEOUT_MS } from '../../migrate/apply.js';
import { loadMigrations } from '../../migrate/loader.js';
import { runMigrations } from '../../migrate/runner.js';
import { installControlSchema } from '../../tenants/control-schema.js';
import { TenantService } from '../../tenants/service.js';
import { EXIT_OK, type Command } from '../command.js';

const DEMO_TENANTS = ['acme', 'globex'] as const;
const EXAMPLES = resolve(dirname(fileURLToPath(import.meta.url)), '../../../examples/migrations');

/** Demo passwords are kept beside the data so a second `npm start` can print working lines again. */
async function demoPasswords(file: string): Promise<Record<string, string>> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Record<string, string>;
  } catch {
    return {};
  }
}

export const demoCommand: Command = {
  command: 'demo',
  describe: 'Start an embedded PostgreSQL, demo tenants and the proxy',
  options: [],
  builder: (y) =>
    y
      .option('data-dir', { type: 'string', default: '.pgtenant/demo', describe: 'Where the embedded PostgreSQL keeps its data' })
      .option('port', { type: 'number', default: 6432, describe: 'Proxy port' })
      .option('admin-port', { type: 'number', default: 6480, describe: 'Admin API port (the admin API is not part of this version yet)' }),
  async run(args, { log, out, stopped, config: base }) {
    const dataDir = resolve(String(args.dataDir));
    await mkdir(dirname(dataDir), { recursive: true });
    out('Starting embedded PostgreSQL...');
    const postgres = await startEmbeddedPostgres({ dataDir, persistent: true, log });
    const pool = new pg.Pool({ connectionString: postgres.url, max: 4 });
    let proxy: Awaited<ReturnType<typeof startProxy>> | null = null;
    try {
      const client = await pool.connect();
      try {
        await installControlSchema(client);
      } finally {
        client.release();
      }
      // Shared files first (tenant files may build on them), and tenants kept from an earlier run catch up.
      const migrated = await runMigrations(pool, {
        files: await loadMigrations(EXAMPLES),
        concurrency: 2,
        lockTimeoutMs: DEFAULT_LOCK_TIMEOUT_MS,
        lockRetries: 3,
        log,
      });
      if (!migrated.ok) {
        const first = migrated.shared.error ?? migrated.results.find((r) => r.error)?.error;
        throw new Error(`the example migrations failed: ${first?.message ?? 'see the log above'}`);
      }
      const service = new TenantService(pool, { isolation: 'role', migrationsDir: EXAMPLES, log });
      const passwordFile = join(dirname(dataDir), `${DEMO_TENANTS.join('-')}.passwords.json`);
      const passwords = await demoPasswords(passwordFile);
      const existing = new Set((await service.list()).map((t) => t.id));
      for (const id of DEMO_TENANTS) {
        if (existing.has(id) && passwords[id]) continue;
        if (existing.has(id)) await service.drop(id);
        const created = await service.create(id);
        passwords[id] = created.password!;
      }
      await writeFile(passwordFile, JSON.stringify(passwords, null, 2), { mode: 0o600 });
      const config = resolveConfig({
        flags: { upstream: postgres.url, listen: `127.0.0.1:${Number(args.port)}`, logLevel: base.logLevel },
        env: {},
      });
      proxy = await startProxy({ config, log });
      const { port } = proxy.address;
      out('');
      out(`pgtenant demo is running: proxy on 127.0.0.1:${port}, PostgreSQL on 127.0.0.1:${postgres.port}.`);
      out('Tenants (each a login role owning its own schema, with the example migrations applied):');
      for (const id of DEMO_TENANTS) out(`  ${id.padEnd(8)} password ${passwords[id]}`);
      out('');
      out('Try it (paste into another terminal):');
      for (const id of DEMO_TENANTS) {
        out(`  psql "postgresql://${id}:${passwords[id]}@127.0.0.1:${port}/postgres" -c "INSERT INTO notes (body) VALUES ('hello from ${id}')" -c "SELECT current_user, current_schema(), * FROM notes"`);
      }
      out(`  psql "postgresql://acme:${passwords.acme}@127.0.0.1:${port}/postgres" -c "SELECT * FROM globex.notes"   # refused: permission denied`);
      out(`  pgbench -i "postgresql://acme:${passwords.acme}@127.0.0.1:${port}/postgres" && pgbench -S -T 5 "postgresql://acme:${passwords.acme}@127.0.0.1:${port}/postgres"`);
      out(`  DATABASE_URL=${postgres.url} node bin/pgtenant.js tenants list`);
      out(`  DATABASE_URL=${postgres.url} node bin/pgtenant.js migrate status --dir examples/migrations`);
      out('');
      out('Press Ctrl-C to stop.');
      await stopped;
      out('Stopping...');
    } finally {
      await proxy?.close(2000);
      await pool.end();
      await postgres.stop();
    }
    return EXIT_OK;
  },
};
