// The control schema `pgtenant`: tenant registry and migration journal, installed and upgraded idempotently.
import type pg from 'pg';
import { TenantError } from './errors.js';

/** Advisory lock key (classid, objid) serialising installs: 'pgtn' and 1. */
const LOCK_CLASS = 0x7067746e;
const LOCK_INSTALL = 1;

/**
 * The auth query: the proxy verifies clients itself, so it needs a role's secret. SECURITY DEFINER lets the
 * installer (who can read pg_authid) lend exactly this read; search_path is pinned so nothing can shadow pg_authid.
 * Every init runs it again (it is idempotent), so init also repairs a dropped or altered function.
 */
const AUTH_FUNCTION = `
  CREATE OR REPLACE FUNCTION pgtenant.role_secret(role_name text)
    RETURNS TABLE (secret text, valid_until timestamptz, can_login boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
  AS $fn$
    SELECT a.rolpassword, a.rolvaliduntil, a.rolcanlogin FROM pg_catalog.pg_authid a WHERE a.rolname = role_name
  $fn$;
  REVOKE ALL ON FUNCTION pgtenant.role_secret(text) FROM PUBLIC;
`;

/** Upgrade steps, index i takes the schema from version i to i + 1. Never edit a shipped step; append. */
const STEPS: readonly string[] = [
  `
  CREATE TABLE IF NOT EXISTS pgtenant.tenants (
    id text PRIMARY KEY,
    schema_name text NOT NULL UNIQUE,
    role_name text UNIQUE,
    state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
    isolation text NOT NULL CHECK (isolation IN ('role', 'schema')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    max_connections integer CHECK (max_connections > 0)
  );
  CREATE TABLE IF NOT EXISTS pgtenant.migrations (
    tenant_id text REFERENCES pgtenant.tenants (id) ON DELETE CASCADE,
    version text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL DEFAULT 0
  );
  -- Two partial indexes rather than NULLS NOT DISTINCT, which needs PostgreSQL 15.
  CREATE UNIQUE INDEX IF NOT EXISTS migrations_tenant_version ON pgtenant.migrations (tenant_id, version) WHERE tenant_id IS NOT NULL;
  CREATE UNIQUE INDEX IF NOT EXISTS migrations_shared_version ON pgtenant.migrations (version) WHERE tenant_id IS NULL;
  `,
  AUTH_FUNCTION,
  // Disconnect requests are counted here, where tenants cannot write: a NOTIFY anyone may send only says "look".
  `ALTER TABLE pgtenant.tenants ADD COLUMN IF NOT EXISTS disconnect_epoch integer NOT NULL DEFAULT 0;`,
  // A tenant's own cap on its client connections (null: the proxy's --max-tenant-clients; 0: no cap).
  `ALTER TABLE pgtenant.tenants ADD COLUMN IF NOT EXISTS max_clients integer CHECK (max_clients >= 0);`,
];

export const CONTROL_SCHEMA_VERSION = STEPS.length;

/**
 * Creates or upgrades the control schema. Runs in its own transaction under an advisory lock, so concurrent
 * installers (several proxies starting at once) do not race on CREATE ... IF NOT EXISTS.
 */
export async function installControlSchema(client: pg.ClientBase): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_catalog.pg_advisory_xact_lock($1, $2)', [LOCK_CLASS, LOCK_INSTALL]);
    await client.query('CREATE SCHEMA IF NOT EXISTS pgtenant');
    await client.query('REVOKE ALL ON SCHEMA pgtenant FROM PUBLIC');
    await client.query(`CREATE TABLE IF NOT EXISTS pgtenant.meta (
      singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
      schema_version integer NOT NULL,
      installed_at timestamptz NOT NULL DEFAULT now(),
      upgraded_at timestamptz NOT NULL DEFAULT now()
    )`);
    const { rows } = await client.query<{ schema_version: number }>('SELECT schema_version FROM pgtenant.meta');
    const current = rows[0]?.schema_version ?? 0;
    if (current > CONTROL_SCHEMA_VERSION) {
      throw new TenantError(
        'not_initialized',
        `control schema pgtenant is at version ${current}, newer than this pgtenant (${CONTROL_SCHEMA_VERSION}); upgrade pgtenant`,
      );
    }
    for (let v = current; v < CONTROL_SCHEMA_VERSION; v++) await client.query(STEPS[v]!);
    await client.query(AUTH_FUNCTION);
    await client.query(
      `INSERT INTO pgtenant.meta (singleton, schema_version) VALUES (true, $1)
       ON CONFLICT (singleton) DO UPDATE SET schema_version = EXCLUDED.schema_version, upgraded_at = now()
       WHERE pgtenant.meta.schema_version <> EXCLUDED.schema_version`,
      [CONTROL_SCHEMA_VERSION],
    );
    await lockDownPublicSchema(client);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/**
 * Tenant roles must not create objects in `public` (PostgreSQL 15+ already revokes it). Only the schema's
 * owner can revoke, so a management role that is not the owner gets a clear error instead of a silent gap.
 */
async function lockDownPublicSchema(client: pg.ClientBase): Promise<void> {
  const { rows } = await client.query<{ public_create: boolean; can_revoke: boolean }>(
    `SELECT pg_catalog.has_schema_privilege('public', n.oid, 'CREATE') AS public_create,
            pg_catalog.pg_has_role(current_user, n.nspowner, 'USAGE') AS can_revoke
       FROM pg_catalog.pg_namespace n WHERE n.nspname = 'public'`,
  );
  const row = rows[0];
  if (!row?.public_create) return;
  if (!row.can_revoke) {
    throw new TenantError(
      'insufficient_privilege',
      'PUBLIC may create objects in schema public: run `REVOKE CREATE ON SCHEMA public FROM PUBLIC` as its owner, or run init as that owner',
    );
  }
  await client.query('REVOKE CREATE ON SCHEMA public FROM PUBLIC');
}

/** Throws not_initialized unless the control schema is installed at this code's version. */
export async function requireControlSchema(client: pg.ClientBase): Promise<void> {
  let version: number | undefined;
  try {
    const { rows } = await client.query<{ schema_version: number }>('SELECT schema_version FROM pgtenant.meta');
    version = rows[0]?.schema_version;
  } catch (err) {
    // undefined_table, invalid_schema_name: nothing installed here yet
    if (!['42P01', '3F000'].includes((err as { code?: string }).code ?? '')) throw err;
  }
  if (version === undefined) {
    throw new TenantError('not_initialized', "control schema pgtenant is not installed in this database: run 'pgtenant init' first");
  }
  if (version !== CONTROL_SCHEMA_VERSION) {
    throw new TenantError(
      'not_initialized',
      `control schema pgtenant is at version ${version}, this pgtenant expects ${CONTROL_SCHEMA_VERSION}: run 'pgtenant init'`,
    );
  }
}

/** Runs fn on a client from the pool once the control schema is checked, and always gives the client back. */
export async function withCheckedClient<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await requireControlSchema(client);
    return await fn(client);
  } finally {
    client.release();
  }
}
