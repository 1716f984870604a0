// The migration journal: what every tenant has and lacks in one query, the shared schema's state, and stamping.
import type pg from 'pg';
import { TenantError } from '../tenants/errors.js';
import type { TenantState } from '../tenants/types.js';
import type { MigrationFile } from './loader.js';

export interface TenantPlan {
  id: string;
  schema: string;
  role: string | null;
  state: TenantState;
  /** The highest version journaled for the tenant, or null when none is. */
  current: string | null;
  /** Versions of files not yet applied, in order. */
  pending: string[];
  /** Applied versions whose file has changed since (checksum differs). */
  changed: string[];
  /** Applied versions that no file has any more. */
  unknown: number;
}

interface PlanRow {
  id: string;
  schema_name: string;
  role_name: string | null;
  state: TenantState;
  current: string | null;
  unknown: number;
  changed: string[];
  /** Only for tenants that lack a file, so an up-to-date fleet sends back no arrays at all. */
  applied: string[] | null;
}

/**
 * One query for all tenants (or the ones named): the comparison with the files happens in the server, so a
 * fleet of 10,000 tenants with nothing to do costs one round trip and a few bytes per tenant.
 */
export async function planTenants(client: pg.ClientBase, files: readonly MigrationFile[], only?: readonly string[]): Promise<TenantPlan[]> {
  const { rows } = await client.query<PlanRow>(
    `WITH f (version, checksum) AS (SELECT * FROM unnest($1::text[], $2::text[]))
     SELECT t.id, t.schema_name, t.role_name, t.state,
            max(m.version) AS current,
            (count(m.version) - count(f.version))::int AS unknown,
            coalesce(array_agg(m.version ORDER BY m.version) FILTER (WHERE f.checksum <> m.checksum), '{}') AS changed,
            CASE WHEN count(f.version) < $3 THEN coalesce(array_agg(f.version) FILTER (WHERE f.version IS NOT NULL), '{}') END AS applied
       FROM pgtenant.tenants t
       LEFT JOIN pgtenant.migrations m ON m.tenant_id = t.id
       LEFT JOIN f ON f.version = m.version
      WHERE $4::text[] IS NULL OR t.id = ANY ($4::text[])
      GROUP BY t.id
      ORDER BY t.id`,
    [files.map((f) => f.version), files.map((f) => f.checksum), files.length, only ?? null],
  );
  if (only) {
    const found = new Set(rows.map((r) => r.id));
    const missing = only.filter((id) => !found.has(id));
    if (missing.length) throw new TenantError('tenant_not_found', `no such tenant: ${missing.join(', ')}`);
  }
  return rows.map((r) => {
    const applied = r.applied ? new Set(r.applied) : null;
    return {
      id: r.id,
      schema: r.schema_name,
      role: r.role_name,
      state: r.state,
      current: r.current,
      pending: applied ? files.filter((f) => !applied.has(f.version)).map((f) => f.version) : [],
      changed: r.changed,
      unknown: r.unknown,
    };
  });
}

/** Splits files against journaled (version -> checksum): not yet applied, and applied but changed since. */
export function compareJournal(files: readonly MigrationFile[], applied: ReadonlyMap<string, string>): { pending: MigrationFile[]; changed: MigrationFile[] } {
  return {
    pending: files.filter((f) => !applied.has(f.version)),
    changed: files.filter((f) => applied.has(f.version) && applied.get(f.version) !== f.checksum),
  };
}

export interface SharedPlan {
  current: string | null;
  pending: string[];
  changed: string[];
}

export async function planShared(client: pg.ClientBase, files: readonly MigrationFile[]): Promise<SharedPlan> {
  const { rows } = await client.query<{ version: string; checksum: string }>(
    'SELECT version, checksum FROM pgtenant.migrations WHERE tenant_id IS NULL ORDER BY version',
  );
  const { pending, changed } = compareJournal(files, new Map(rows.map((r) => [r.version, r.checksum])));
  return {
    current: rows.length ? rows[rows.length - 1]!.version : null,
    pending: pending.map((f) => f.version),
    changed: changed.map((f) => f.version),
  };
}

/** Throws tenant_not_found naming every id that is not a registered tenant. */
export async function requireTenants(client: pg.ClientBase, ids: readonly string[]): Promise<void> {
  const { rows } = await client.query<{ id: string }>(
    'SELECT id FROM unnest($1::text[]) AS u (id) WHERE NOT EXISTS (SELECT 1 FROM pgtenant.tenants t WHERE t.id = u.id)',
    [ids],
  );
  if (rows.length) throw new TenantError('tenant_not_found', `no such tenant: ${rows.map((r) => r.id).join(', ')}`);
}

/** Who to stamp: named tenants, every registered tenant, or the shared schema. */
export type StampScope = { tenants: readonly string[] } | { allTenants: true } | { shared: true };

/**
 * Records every file up to and including `version` as applied without running it, for schemas that already
 * have those objects. Versions already journaled are left as they are. Returns the number of rows written.
 */
export async function stamp(client: pg.ClientBase, files: readonly MigrationFile[], version: string, scope: StampScope): Promise<number> {
  if (!files.some((f) => f.version === version)) {
    throw new TenantError('invalid_migration', `no migration file has version ${version}`);
  }
  const upTo = files.filter((f) => f.version <= version);
  const columns = [upTo.map((f) => f.version), upTo.map((f) => f.name), upTo.map((f) => f.checksum)];
  if ('shared' in scope) {
    const { rowCount } = await client.query(
      `INSERT INTO pgtenant.migrations (tenant_id, version, name, checksum)
       SELECT NULL, f.version, f.name, f.checksum FROM unnest($1::text[], $2::text[], $3::text[]) AS f (version, name, checksum)
       ON CONFLICT DO NOTHING`,
      columns,
    );
    return rowCount ?? 0;
  }
  const only = 'tenants' in scope ? scope.tenants : null;
  if (only) await requireTenants(client, only);
  const { rowCount } = await client.query(
    `INSERT INTO pgtenant.migrations (tenant_id, version, name, checksum)
     SELECT t.id, f.version, f.name, f.checksum
       FROM pgtenant.tenants t CROSS JOIN unnest($1::text[], $2::text[], $3::text[]) AS f (version, name, checksum)
      WHERE $4::text[] IS NULL OR t.id = ANY ($4::text[])
     ON CONFLICT DO NOTHING`,
    [...columns, only],
  );
  return rowCount ?? 0;
}
