// Adopting an existing database: registers schemas matching a LIKE pattern as tenants, each schema in its own transaction.
import { DEFAULT_LOCK_TIMEOUT_MS } from '../migrate/apply.js';
import type pg from 'pg';
import type { Logger } from '../logger.js';
import { quoteIdent, validateTenantId } from './ids.js';
import type { IsolationMode } from './types.js';

export interface ImportedTenant {
  id: string;
  schema: string;
  /** The tenant's new login role; null in schema isolation. */
  role: string | null;
  /** The role's generated password, returned once; null in schema isolation. */
  password: string | null;
}

export interface SkippedSchema {
  schema: string;
  reason: string;
}

export interface FailedSchema {
  schema: string;
  /** SQLSTATE (or pgtenant error code); null when the error carried none. */
  code: string | null;
  message: string;
}

export interface ImportResult {
  imported: ImportedTenant[];
  skipped: SkippedSchema[];
  failed: FailedSchema[];
}

/** What the lifecycle service lends the import, so role creation, transactions and NOTIFY live in one place. */
export interface ImportHost {
  readonly isolation: IsolationMode;
  readonly log: Logger;
  /** A connection with the control schema checked. */
  withClient<T>(fn: (c: pg.ClientBase) => Promise<T>): Promise<T>;
  /** One transaction with the control schema checked; rolled back when fn throws. */
  transaction<T>(fn: (c: pg.ClientBase) => Promise<T>): Promise<T>;
  /** Creates the tenant's login role the way `create` does, with a generated password, and returns that password. */
  createLoginRole(c: pg.ClientBase, id: string): Promise<string>;
  notify(c: pg.ClientBase, id: string): Promise<void>;
}

/** Thrown inside a schema's transaction: rolls it back and reports the schema as skipped. */
class Skip extends Error {}

/** Schemas that can never be tenants, and those already registered, never reach the per-schema step. */
const CANDIDATES = `
  SELECT n.nspname AS schema FROM pg_catalog.pg_namespace n
   WHERE n.nspname LIKE $1
     AND pg_catalog.left(n.nspname, 3) <> 'pg_'
     AND n.nspname NOT IN ('information_schema', 'public', 'pgtenant')
     AND NOT EXISTS (SELECT 1 FROM pgtenant.tenants t WHERE t.schema_name = n.nspname)
   ORDER BY n.nspname`;

/** Re-checked inside the schema's transaction: another import or a create may have won meanwhile. */
const STATE = `
  SELECT n.oid::int8::text AS oid,
         EXISTS (SELECT 1 FROM pgtenant.tenants t WHERE t.id = $1 OR t.schema_name = $1) AS registered,
         EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = $1) AS role_exists
    FROM pg_catalog.pg_namespace n WHERE n.nspname = $1`;

/**
 * Everything in the schema a tenant role must own to ALTER it later. Indexes and sequences owned by a column
 * follow their table; extension members stay with the extension; array and multirange types follow their element
 * and range types; a table's row type follows the table. Routines come as oid::regprocedure, which qualifies and
 * quotes them because the caller empties search_path first.
 */
const OBJECTS = `
  SELECT 'class:' || c.relkind::text AS kind, c.relname::text AS name
    FROM pg_catalog.pg_class c
   WHERE c.relnamespace = $1::oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                        AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i')
                             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass)))
  UNION ALL
  SELECT 'routine', p.oid::pg_catalog.regprocedure::text
    FROM pg_catalog.pg_proc p
   WHERE p.pronamespace = $1::oid
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e')
  UNION ALL
  SELECT 'type:' || t.typtype::text, t.typname::text
    FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
   WHERE t.typnamespace = $1::oid AND t.typtype IN ('e', 'd', 'r', 'c') AND (t.typtype <> 'c' OR c.relkind = 'c')
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = t.oid AND d.deptype = 'e')`;

/** The ALTER ... OWNER TO statement per object kind (pg_class.relkind, pg_type.typtype, routines). */
const ALTER_OWNER: Readonly<Record<string, string>> = {
  'class:r': 'TABLE',
  'class:p': 'TABLE',
  'class:v': 'VIEW',
  'class:m': 'MATERIALIZED VIEW',
  'class:f': 'FOREIGN TABLE',
  'class:S': 'SEQUENCE',
  routine: 'ROUTINE',
  'type:e': 'TYPE',
  'type:r': 'TYPE',
  'type:c': 'TYPE',
  'type:d': 'DOMAIN',
};

const codeOf = (err: unknown): string | null => {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : null;
};

/** Registers every unregistered schema matching schemaPattern (SQL LIKE) as a tenant whose id is the schema name. */
export async function importSchemas(host: ImportHost, schemaPattern: string): Promise<ImportResult> {
  const log = host.log.child({ op: 'import' });
  const schemas = await host.withClient(async (c) => (await c.query<{ schema: string }>(CANDIDATES, [schemaPattern])).rows.map((r) => r.schema));
  const result: ImportResult = { imported: [], skipped: [], failed: [] };
  for (const schema of schemas) {
    try {
      validateTenantId(schema);
    } catch (err) {
      result.skipped.push({ schema, reason: (err as Error).message });
      continue;
    }
    try {
      const imported = await host.transaction((c) => importOne(host, c, schema));
      result.imported.push(imported);
      log.info({ tenant: schema, isolation: host.isolation }, 'schema imported as tenant');
    } catch (err) {
      if (err instanceof Skip) {
        result.skipped.push({ schema, reason: err.message });
        log.info({ tenant: schema, reason: err.message }, 'schema skipped');
      } else {
        result.failed.push({ schema, code: codeOf(err), message: (err as Error).message });
        log.warn({ tenant: schema, code: codeOf(err), err: (err as Error).message }, 'schema import failed');
      }
    }
  }
  return result;
}

async function importOne(host: ImportHost, c: pg.ClientBase, schema: string): Promise<ImportedTenant> {
  const id = schema;
  const { rows } = await c.query<{ oid: string; registered: boolean; role_exists: boolean }>(STATE, [id]);
  const state = rows[0];
  if (!state) throw new Skip(`schema '${schema}' no longer exists`);
  if (state.registered) throw new Skip(`schema '${schema}' is already registered as a tenant`);
  const roleMode = host.isolation === 'role';
  if (roleMode && state.role_exists) {
    throw new Skip(`a role named '${id}' already exists on this server; pgtenant only hands a schema to a role it creates`);
  }
  // Re-owning takes ACCESS EXCLUSIVE locks on live tables: give up on a busy schema rather than queue the application behind us.
  await c.query(`SELECT pg_catalog.set_config('lock_timeout', $1, true) WHERE pg_catalog.current_setting('lock_timeout') = '0'`, [
    `${DEFAULT_LOCK_TIMEOUT_MS}ms`,
  ]);
  const name = quoteIdent(schema);
  let password: string | null = null;
  if (roleMode) {
    password = await host.createLoginRole(c, id);
    await c.query(`ALTER SCHEMA ${name} OWNER TO ${name}`);
    await reownObjects(c, schema, state.oid);
  }
  await c.query(`REVOKE ALL ON SCHEMA ${name} FROM PUBLIC`);
  await c.query('INSERT INTO pgtenant.tenants (id, schema_name, role_name, isolation) VALUES ($1, $1, $2, $3)', [
    id,
    roleMode ? id : null,
    host.isolation,
  ]);
  await host.notify(c, id);
  return { id, schema, role: roleMode ? id : null, password };
}

/** Hands every object in the schema to the tenant role, so migrations running as that role can ALTER and DROP them. */
async function reownObjects(c: pg.ClientBase, schema: string, schemaOid: string): Promise<void> {
  // An empty search_path makes regprocedure (and the types in its argument list) come out schema-qualified.
  await c.query(`SELECT pg_catalog.set_config('search_path', '', true)`);
  const { rows } = await c.query<{ kind: string; name: string }>(OBJECTS, [schemaOid]);
  const role = quoteIdent(schema);
  for (const { kind, name } of rows) {
    const keyword = ALTER_OWNER[kind];
    if (!keyword) throw new Error(`no ALTER statement known for object ${name} of kind ${kind}`);
    const target = kind === 'routine' ? name : `${quoteIdent(schema)}.${quoteIdent(name)}`;
    await c.query(`ALTER ${keyword} ${target} OWNER TO ${role}`);
  }
}
