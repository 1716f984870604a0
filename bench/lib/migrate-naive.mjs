// The naive baseline: django-tenants' standard executor / the Flask-Alembic recipe, one connection looping over schemas.
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { ignoreErrors, quoteIdent } from './migrate-setup.mjs';

/** What the loop does per schema, printed with the results so the comparison can be checked. */
export const NAIVE_DESCRIPTION = [
  'one connection as the management user; for each schema:',
  '  SET search_path TO "schema"',
  '  CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY)',
  '  SELECT version FROM schema_migrations',
  '  for each pending file: BEGIN; <file>; INSERT INTO schema_migrations (version) VALUES ($1); COMMIT',
];

/**
 * Runs the loop over `schemas` with `files` ({version, sql}); the wall time includes connecting, like a fresh
 * management command would. Stops at the first failing schema, as those tools do.
 */
export async function naiveMigrate(url, schemas, files, { isStopping = () => false } = {}) {
  const started = performance.now();
  const client = ignoreErrors(new pg.Client({ connectionString: url }));
  await client.connect();
  let migrated = 0;
  let upToDate = 0;
  try {
    for (const schema of schemas) {
      if (isStopping()) throw new Error('stopped');
      await client.query(`SET search_path TO ${quoteIdent(schema)}`);
      await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY)');
      const { rows } = await client.query('SELECT version FROM schema_migrations');
      const applied = new Set(rows.map((r) => r.version));
      const pending = files.filter((f) => !applied.has(f.version));
      if (pending.length === 0) {
        upToDate++;
        continue;
      }
      for (const file of pending) {
        await client.query('BEGIN');
        try {
          await client.query(file.sql);
          await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [file.version]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw new Error(`naive loop: ${file.version} failed in schema ${schema}: ${err.message}`);
        }
      }
      migrated++;
    }
  } finally {
    await client.end();
  }
  return { seconds: (performance.now() - started) / 1000, migrated, upToDate, total: schemas.length };
}
