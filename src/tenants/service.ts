// Tenant lifecycle: create, list, show, suspend, resume and drop, each one transaction that ends with a NOTIFY.
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { silentLogger, type Logger } from '../logger.js';
import { applyTenantMigrations, DEFAULT_LOCK_TIMEOUT_MS, migrateTarget } from '../migrate/apply.js';
import { loadMigrations, type MigrationFile } from '../migrate/loader.js';
import { requireControlSchema, withCheckedClient } from './control-schema.js';
import { importSchemas, type ImportResult } from './import.js';
import { TenantError } from './errors.js';
import { quoteIdent, quoteLiteral, validatePassword, validateTenantId } from './ids.js';
import { scramVerifier } from './scram.js';
import {
  DISCONNECT_CHANNEL,
  TENANT_CHANNEL,
  TENANT_COLUMNS,
  toRecord,
  type IsolationMode,
  type ListOptions,
  type TenantDetails,
  type TenantRecord,
  type TenantRow,
  type TenantState,
} from './types.js';

/** The largest per-tenant pool size accepted (PostgreSQL's max_connections is rarely above a few thousand). */
export const MAX_POOL_SIZE = 10_000;
/** The largest per-tenant client cap accepted. */
export const MAX_TENANT_CLIENTS = 1_000_000;

/** A tenant's limits: its column, the range it takes and how it is named in errors and logs. */
const LIMITS = {
  poolSize: { column: 'max_connections', min: 1, max: MAX_POOL_SIZE, code: 'invalid_pool_size', what: 'pool size' },
  maxClients: { column: 'max_clients', min: 0, max: MAX_TENANT_CLIENTS, code: 'invalid_max_clients', what: 'client cap' },
} as const;

export { TENANT_CHANNEL };

export interface TenantServiceOptions {
  isolation: IsolationMode;
  /** Folder with tenant/ and shared/ migration files; null or undefined: no migrations. */
  migrationsDir?: string | null;
  log?: Logger;
}

export interface CreateTenantResult {
  tenant: TenantRecord;
  /** The generated password (role isolation, none given), shown once; null otherwise. */
  password: string | null;
  migrationsApplied: number;
}

/** SQLSTATEs that mean "something of that name is already there". */
const DUPLICATE = new Set(['42710', '42P06', '23505']);

const generatePassword = (): string => randomBytes(24).toString('base64url');

interface Management {
  superuser: boolean;
  serverVersion: number;
}

export class TenantService {
  private readonly log: Logger;
  private management: Management | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly opts: TenantServiceOptions,
  ) {
    this.log = (opts.log ?? silentLogger).child({ component: 'tenants' });
  }

  async create(id: string, opts: { password?: string } = {}): Promise<CreateTenantResult> {
    validateTenantId(id);
    const roleMode = this.opts.isolation === 'role';
    if (!roleMode && opts.password !== undefined) {
      throw new TenantError('invalid_password', 'a tenant password applies only in role isolation (schema isolation uses one shared login role)');
    }
    const password = roleMode ? (opts.password !== undefined ? validatePassword(opts.password) : generatePassword()) : null;
    const files = await this.tenantMigrations();
    // Files marked no-transaction cannot join the creating transaction: they and the files after them run once it commits.
    const outside = files.findIndex((f) => !f.transaction);
    const name = quoteIdent(id);
    try {
      let { record, applied } = await this.transaction(async (c) => {
        await this.refuseExisting(c, id, roleMode);
        if (password !== null) {
          await this.createLoginRole(c, id, password);
          await c.query(`CREATE SCHEMA ${name} AUTHORIZATION ${name}`);
        } else {
          await c.query(`CREATE SCHEMA ${name}`);
        }
        await c.query(`REVOKE ALL ON SCHEMA ${name} FROM PUBLIC`);
        const { rows } = await c.query<TenantRow>(
          `INSERT INTO pgtenant.tenants (id, schema_name, role_name, isolation) VALUES ($1, $1, $2, $3) RETURNING ${TENANT_COLUMNS}`,
          [id, roleMode ? id : null, this.opts.isolation],
        );
        const record = toRecord(rows[0]!);
        const applied = await applyTenantMigrations(c, record, outside < 0 ? files : files.slice(0, outside), { lockTimeoutMs: DEFAULT_LOCK_TIMEOUT_MS });
        await notify(c, id);
        return { record, applied };
      });
      if (outside >= 0) applied += await this.migrateAfterCreate(record, files);
      this.log.info({ tenant: id, isolation: this.opts.isolation, migrations: applied }, 'tenant created');
      return { tenant: record, password: opts.password === undefined ? password : null, migrationsApplied: applied };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code === 'string' && DUPLICATE.has(code)) {
        throw new TenantError('tenant_exists', `tenant '${id}' already exists`, { cause: err });
      }
      throw err;
    }
  }

  private async migrateAfterCreate(record: TenantRecord, files: readonly MigrationFile[]): Promise<number> {
    const c = await this.pool.connect();
    let broken: Error | undefined;
    try {
      const outcome = await migrateTarget(c, record, files, { lockTimeoutMs: DEFAULT_LOCK_TIMEOUT_MS, waitForLock: true });
      return outcome.busy ? 0 : outcome.applied.length;
    } catch (err) {
      broken = err as Error;
      throw new TenantError(
        'migration_failed',
        `tenant '${record.id}' was created, but ${(err as Error).message}; run 'pgtenant migrate up --tenant ${record.id}' to finish`,
        { cause: err },
      );
    } finally {
      c.release(broken);
    }
  }

  /** Registers existing schemas matching a SQL LIKE pattern as tenants (see import.ts). */
  import(schemaPattern: string): Promise<ImportResult> {
    return importSchemas(
      {
        isolation: this.opts.isolation,
        log: this.log,
        withClient: (fn) => this.withClient(fn),
        transaction: (fn) => this.transaction(fn),
        createLoginRole: async (c, id) => {
          const password = generatePassword();
          await this.createLoginRole(c, id, password);
          return password;
        },
        notify,
      },
      schemaPattern,
    );
  }

  /** Tenants in id order; `limit` and `after` page through them (keyset, so pages stay cheap at any depth). */
  async list(opts: ListOptions = {}): Promise<TenantRecord[]> {
    return this.withClient(async (c) => {
      const { rows } = await c.query<TenantRow>(
        `SELECT ${TENANT_COLUMNS} FROM pgtenant.tenants
          WHERE ($1::text IS NULL OR id > $1) AND ($2::text IS NULL OR state = $2)
          ORDER BY id LIMIT $3`,
        [opts.after ?? null, opts.state ?? null, opts.limit ?? null],
      );
      return rows.map(toRecord);
    });
  }

  async get(id: string): Promise<TenantRecord> {
    validateTenantId(id);
    return this.withClient(async (c) => toRecord(await findRow(c, id, false)));
  }

  /** The tenant with its place in the migration journal. */
  async details(id: string): Promise<TenantDetails> {
    validateTenantId(id);
    return this.withClient(async (c) => {
      const record = toRecord(await findRow(c, id, false));
      const { rows } = await c.query<{ version: string | null; applied: number }>(
        'SELECT max(version) AS version, count(*)::int AS applied FROM pgtenant.migrations WHERE tenant_id = $1',
        [id],
      );
      return { ...record, schemaVersion: rows[0]?.version ?? null, migrationsApplied: rows[0]?.applied ?? 0 };
    });
  }

  /** New sessions are refused at once; open ones carry on unless `disconnect` ends them too. */
  suspend(id: string, opts: { disconnect?: boolean } = {}): Promise<TenantRecord> {
    return this.setState(id, 'suspended', opts.disconnect === true);
  }

  resume(id: string): Promise<TenantRecord> {
    return this.setState(id, 'active', false);
  }

  /** Asks every proxy listening on this database to end the tenant's open sessions. */
  async disconnect(id: string): Promise<TenantRecord> {
    validateTenantId(id);
    const record = await this.transaction(async (c) => {
      await findRow(c, id, true);
      const row = await requestDisconnect(c, id);
      return toRecord(row);
    });
    this.log.info({ tenant: id }, 'tenant sessions disconnected');
    return record;
  }

  /**
   * Ends the tenant's sessions on every proxy first (so none holds a lock the drop would wait for), then
   * drops schema, role and rows in one transaction.
   */
  async drop(id: string): Promise<void> {
    await this.disconnect(id);
    await this.transaction(async (c) => {
      const row = await findRow(c, id, true);
      if (row.role_name) {
        // Open sessions would hold locks on the schema's objects and outlive their role.
        await c.query(
          `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
            WHERE usename = $1 AND datname = pg_catalog.current_database() AND pid <> pg_catalog.pg_backend_pid()`,
          [row.role_name],
        );
      }
      await c.query(`DROP SCHEMA IF EXISTS ${quoteIdent(row.schema_name)} CASCADE`);
      if (row.role_name) {
        const role = quoteIdent(row.role_name);
        await c.query(`DROP OWNED BY ${role}`);
        await c.query(`DROP ROLE IF EXISTS ${role}`);
      }
      await c.query('DELETE FROM pgtenant.migrations WHERE tenant_id = $1', [id]);
      await c.query('DELETE FROM pgtenant.tenants WHERE id = $1', [id]);
      await notify(c, id);
    });
    this.log.info({ tenant: id }, 'tenant dropped');
  }

  /**
   * Sets how many backends the tenant's pools may hold on each proxy (null: the proxy's --pool-size). New
   * sessions use it at once (NOTIFY); backends already open beyond it close as they come back.
   */
  setPoolSize(id: string, poolSize: number | null): Promise<TenantRecord> {
    return this.setLimit(id, 'poolSize', poolSize);
  }

  /**
   * Sets how many client connections the tenant may hold at once on each proxy (null: the proxy's
   * --max-tenant-clients; 0: no cap). Logins check it from the next one on; open sessions are left be.
   */
  setMaxClients(id: string, maxClients: number | null): Promise<TenantRecord> {
    return this.setLimit(id, 'maxClients', maxClients);
  }

  private async setLimit(id: string, limit: keyof typeof LIMITS, value: number | null): Promise<TenantRecord> {
    validateTenantId(id);
    const { column, min, max, code, what } = LIMITS[limit];
    if (value !== null && (!Number.isInteger(value) || value < min || value > max)) {
      throw new TenantError(code, `${what} must be a whole number from ${min} to ${max}, or the default`);
    }
    const record = await this.transaction(async (c) => {
      await findRow(c, id, true);
      const { rows } = await c.query<TenantRow>(
        `UPDATE pgtenant.tenants SET ${column} = $2, updated_at = now() WHERE id = $1 RETURNING ${TENANT_COLUMNS}`,
        [id, value],
      );
      await notify(c, id);
      return toRecord(rows[0]!);
    });
    this.log.info({ tenant: id, [limit]: value }, `tenant ${what} set`);
    return record;
  }

  private async setState(id: string, state: TenantState, disconnect: boolean): Promise<TenantRecord> {
    validateTenantId(id);
    const record = await this.transaction(async (c) => {
      const row = await findRow(c, id, true);
      if (row.role_name) await c.query(`ALTER ROLE ${quoteIdent(row.role_name)} ${state === 'active' ? 'LOGIN' : 'NOLOGIN'}`);
      const { rows } = await c.query<TenantRow>(
        `UPDATE pgtenant.tenants SET state = $2, updated_at = now() WHERE id = $1 RETURNING ${TENANT_COLUMNS}`,
        [id, state],
      );
      await notify(c, id);
      return toRecord(disconnect ? await requestDisconnect(c, id) : rows[0]!);
    });
    this.log.info({ tenant: id, state, disconnect }, state === 'active' ? 'tenant resumed' : 'tenant suspended');
    return record;
  }

  private async tenantMigrations(): Promise<MigrationFile[]> {
    if (!this.opts.migrationsDir) return [];
    return (await loadMigrations(this.opts.migrationsDir)).tenant;
  }

  private async refuseExisting(c: pg.ClientBase, id: string, roleMode: boolean): Promise<void> {
    const { rows } = await c.query<{ tenant: boolean; role: boolean; schema: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM pgtenant.tenants WHERE id = $1) AS tenant,
              EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1) AS role,
              EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1) AS schema`,
      [id],
    );
    const r = rows[0]!;
    if (r.tenant) throw new TenantError('tenant_exists', `tenant '${id}' already exists`);
    if (roleMode && r.role) throw new TenantError('tenant_exists', `a role named '${id}' already exists on this server`);
    if (r.schema) throw new TenantError('tenant_exists', `a schema named '${id}' already exists in this database`);
  }

  /** The tenant's LOGIN role, with no other attributes, and its schema as search_path in this database. */
  private async createLoginRole(c: pg.ClientBase, id: string, password: string): Promise<void> {
    const name = quoteIdent(id);
    // Only the verifier travels: the clear password never reaches the server, its logs or pg_stat_statements.
    await c.query(
      `CREATE ROLE ${name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS PASSWORD ${quoteLiteral(scramVerifier(password))}`,
    );
    await this.grantToManagement(c, name);
    // Per database: the schema exists only here, and other databases on the server may hold other tenants.
    const { rows } = await c.query<{ db: string }>('SELECT pg_catalog.current_database() AS db');
    await c.query(`ALTER ROLE ${name} IN DATABASE ${quoteIdent(rows[0]!.db)} SET search_path = ${name}`);
  }

  /**
   * A management role that is not a superuser needs the tenant's privileges to create its schema, run its
   * migrations as it (SET ROLE) and later drop what it owns; a superuser has them already.
   */
  private async grantToManagement(c: pg.ClientBase, role: string): Promise<void> {
    if (!this.management) {
      const { rows } = await c.query<{ superuser: boolean; version: number }>(
        `SELECT rolsuper AS superuser, pg_catalog.current_setting('server_version_num')::int AS version
           FROM pg_catalog.pg_roles WHERE rolname = current_user`,
      );
      this.management = { superuser: rows[0]?.superuser ?? false, serverVersion: rows[0]?.version ?? 0 };
    }
    if (this.management.superuser) return;
    const how = this.management.serverVersion >= 160000 ? ' WITH INHERIT TRUE, SET TRUE' : '';
    await c.query(`GRANT ${role} TO CURRENT_USER${how}`);
  }

  private withClient<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    return withCheckedClient(this.pool, fn);
  }

  private async transaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    let broken = false;
    try {
      await c.query('BEGIN');
      await requireControlSchema(c);
      const result = await fn(c);
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {
        broken = true;
      });
      throw err;
    } finally {
      c.release(broken);
    }
  }
}

async function findRow(c: pg.ClientBase, id: string, forUpdate: boolean): Promise<TenantRow> {
  const { rows } = await c.query<TenantRow>(
    `SELECT ${TENANT_COLUMNS} FROM pgtenant.tenants WHERE id = $1${forUpdate ? ' FOR UPDATE' : ''}`,
    [id],
  );
  if (!rows[0]) throw new TenantError('tenant_not_found', `tenant '${id}' not found`);
  return rows[0];
}

/** Counts a disconnect request in the tenant's row and tells the proxies to look at it (they act on the count, not the NOTIFY). */
async function requestDisconnect(c: pg.ClientBase, id: string): Promise<TenantRow> {
  const { rows } = await c.query<TenantRow>(
    `UPDATE pgtenant.tenants SET disconnect_epoch = disconnect_epoch + 1 WHERE id = $1 RETURNING ${TENANT_COLUMNS}`,
    [id],
  );
  await notify(c, id, DISCONNECT_CHANNEL);
  return rows[0]!;
}

/** Inside a transaction, delivered at COMMIT, so listeners never see a change that rolled back. */
async function notify(c: pg.ClientBase, id: string, channel = TENANT_CHANNEL): Promise<void> {
  await c.query('SELECT pg_catalog.pg_notify($1, $2)', [channel, id]);
}
