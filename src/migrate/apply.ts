// Applies pending tenant migrations inside the caller's transaction, as the tenant, and journals them.
import type pg from 'pg';
import { performance } from 'node:perf_hooks';
import { TenantError } from '../tenants/errors.js';
import { quoteIdent } from '../tenants/ids.js';
import type { MigrationFile } from './loader.js';

export interface MigrationTarget {
  id: string;
  schema: string;
  /** Set in role isolation: migrations run as this role, so what they create belongs to the tenant. */
  role: string | null;
}

/** Advisory lock class for per-tenant migration locks ('pgtm'); the object id is hashtext(tenant id). */
const LOCK_CLASS = 0x7067746d;

/**
 * Runs the files not yet journaled for this tenant, in version order, and returns how many ran.
 * Must be called inside a transaction: the lock, the role switch and search_path are transaction-local, and
 * a failure leaves nothing behind once the caller rolls back. Files must not contain BEGIN/COMMIT.
 * The role switch guards against mistakes, not hostile SQL: migration files are the operator's own code.
 */
export async function applyTenantMigrations(client: pg.ClientBase, tenant: MigrationTarget, files: readonly MigrationFile[]): Promise<number> {
  await client.query('SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))', [LOCK_CLASS, tenant.id]);
  const { rows } = await client.query<{ version: string; checksum: string }>(
    'SELECT version, checksum FROM pgtenant.migrations WHERE tenant_id = $1',
    [tenant.id],
  );
  const applied = new Map(rows.map((r) => [r.version, r.checksum]));
  const { rows: saved } = await client.query<{ path: string }>("SELECT pg_catalog.current_setting('search_path') AS path");
  let count = 0;
  for (const file of files) {
    const previous = applied.get(file.version);
    if (previous !== undefined) {
      if (previous !== file.checksum) {
        throw new TenantError(
          'checksum_mismatch',
          `migration ${file.version}_${file.name} was changed after it was applied to tenant ${tenant.id} (checksum differs)`,
        );
      }
      continue;
    }
    const started = performance.now();
    await client.query(`SET LOCAL search_path TO ${quoteIdent(tenant.schema)}`);
    if (tenant.role) await client.query(`SET LOCAL ROLE ${quoteIdent(tenant.role)}`);
    try {
      await client.query(file.sql);
      if (tenant.role) {
        const { rows: who } = await client.query<{ u: string }>('SELECT current_user AS u');
        if (who[0]?.u !== tenant.role) throw new Error(`it changed the role to ${who[0]?.u ?? '?'}; migrations must not SET ROLE`);
      }
    } catch (err) {
      throw new TenantError('migration_failed', `migration ${file.version}_${file.name} failed for tenant ${tenant.id}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    // The journal lives in the control schema, which the tenant role cannot write.
    await client.query('SET LOCAL ROLE NONE');
    await client.query(
      'INSERT INTO pgtenant.migrations (tenant_id, version, name, checksum, duration_ms) VALUES ($1, $2, $3, $4, $5)',
      [tenant.id, file.version, file.name, file.checksum, Math.round(performance.now() - started)],
    );
    count++;
  }
  // Leave the caller's transaction as it was: its own statements should not resolve names in the tenant schema.
  if (count > 0) await client.query("SELECT pg_catalog.set_config('search_path', $1, true)", [saved[0]?.path ?? '']);
  return count;
}
