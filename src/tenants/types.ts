// The tenant record as the proxy, the CLI and the admin API see it.

/** The NOTIFY channel of tenant changes; the payload is the tenant id. */
export const TENANT_CHANNEL = 'pgtenant_tenants';
/** The NOTIFY channel that asks every proxy to end a tenant's open sessions; the payload is the tenant id. */
export const DISCONNECT_CHANNEL = 'pgtenant_disconnect';

export type TenantState = 'active' | 'suspended';
export type IsolationMode = 'role' | 'schema';

export interface TenantRecord {
  id: string;
  schema: string;
  /** The tenant's login role; null in schema isolation. */
  role: string | null;
  state: TenantState;
  /** Backends in this tenant's pools, overriding the proxy's --pool-size; null for the default. */
  poolSize: number | null;
  /** Client connections the tenant may hold at once on each proxy, overriding --max-tenant-clients (0: no cap); null for the default. */
  maxClients: number | null;
  /** Disconnects an operator asked for so far: a proxy ends the sessions that logged in before the latest. */
  disconnectEpoch: number;
  createdAt: Date;
  updatedAt: Date;
}

/** A row of pgtenant.tenants as node-postgres returns it. */
export interface TenantRow {
  id: string;
  schema_name: string;
  role_name: string | null;
  state: TenantState;
  max_connections: number | null;
  max_clients: number | null;
  disconnect_epoch: number;
  created_at: Date;
  updated_at: Date;
}

export const TENANT_COLUMNS = 'id, schema_name, role_name, state, max_connections, max_clients, disconnect_epoch, created_at, updated_at';

/** A tenant with what `show` adds: where its schema stands in the migration journal. */
export interface TenantDetails extends TenantRecord {
  /** The highest migration version applied, or null when none is. */
  schemaVersion: string | null;
  migrationsApplied: number;
}

export interface ListOptions {
  /** At most this many, in id order. */
  limit?: number;
  /** Only ids after this one (the `next` cursor of the previous page). */
  after?: string;
  state?: TenantState;
}

export function toRecord(row: TenantRow): TenantRecord {
  return {
    id: row.id,
    schema: row.schema_name,
    role: row.role_name,
    state: row.state,
    poolSize: row.max_connections,
    maxClients: row.max_clients,
    disconnectEpoch: row.disconnect_epoch,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}
