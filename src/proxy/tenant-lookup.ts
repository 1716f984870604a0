// What sessions ask of the tenant registry, and the client-facing errors when the registry cannot answer.
import type { Logger } from '../logger.js';
import type { RoleSecret } from '../tenants/directory.js';
import type { TenantRecord } from '../tenants/types.js';
import { cannotConnectNow } from './errors.js';

export interface TenantLookup {
  lookup(id: string): Promise<TenantRecord | null>;
  /** The auth query: a role's secret and login rules (proxy-side authentication only). */
  roleSecret(role: string): Promise<RoleSecret | null>;
}

/** A failed lookup says nothing about the tenant: it is the proxy that cannot reach its control schema. */
export async function lookupTenant(tenants: TenantLookup, id: string, log: Logger): Promise<TenantRecord | null> {
  try {
    return await tenants.lookup(id);
  } catch (err) {
    log.error({ err: (err as Error).message }, 'tenant lookup failed');
    throw cannotConnectNow('pgtenant cannot read its tenant registry right now', 'Try again shortly.');
  }
}

export async function lookupRoleSecret(tenants: TenantLookup, role: string, log: Logger): Promise<RoleSecret | null> {
  try {
    return await tenants.roleSecret(role);
  } catch (err) {
    log.error({ err: (err as Error).message }, 'auth query failed');
    const code = (err as { code?: string }).code;
    if (code === 'not_initialized' || code === 'insufficient_privilege') {
      throw cannotConnectNow('pgtenant cannot check passwords: its auth query is not usable', "An operator must run 'pgtenant init' (see the proxy's log).");
    }
    throw cannotConnectNow('pgtenant cannot check passwords right now', 'Try again shortly.');
  }
}
