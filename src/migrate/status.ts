// Where every tenant and the shared schema stand against the migration files: one query, for the CLI and the admin API.
import type pg from 'pg';
import { planShared, planTenants, type SharedPlan, type TenantPlan } from './journal.js';
import type { MigrationSet } from './loader.js';

export interface MigrationStatus {
  /** The newest tenant file's version, or null when there is none. */
  latest: string | null;
  tenantFiles: number;
  sharedFiles: number;
  total: number;
  upToDate: number;
  behind: number;
  /** Targets (tenants, plus the shared schema) with an applied file that has changed since. */
  changed: number;
  shared: SharedPlan;
  tenants: TenantPlan[];
}

export async function migrationStatus(client: pg.ClientBase, files: MigrationSet, only?: readonly string[]): Promise<MigrationStatus> {
  const shared = await planShared(client, files.shared);
  const tenants = await planTenants(client, files.tenant, only);
  const upToDate = tenants.filter((t) => !t.pending.length && !t.changed.length).length;
  return {
    latest: files.tenant.at(-1)?.version ?? null,
    tenantFiles: files.tenant.length,
    sharedFiles: files.shared.length,
    total: tenants.length,
    upToDate,
    behind: tenants.length - upToDate,
    changed: tenants.filter((t) => t.changed.length).length + (shared.changed.length ? 1 : 0),
    shared,
    tenants,
  };
}
