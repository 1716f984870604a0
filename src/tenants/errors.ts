// Tenant lifecycle errors: a stable code for the CLI and the admin API, and a message a person understands.

export type TenantErrorCode =
  | 'invalid_tenant_id'
  | 'invalid_password'
  | 'invalid_pool_size'
  | 'invalid_max_clients'
  | 'tenant_exists'
  | 'tenant_not_found'
  | 'not_initialized'
  | 'insufficient_privilege'
  | 'migration_failed'
  | 'checksum_mismatch'
  | 'invalid_migration';

export class TenantError extends Error {
  override readonly name = 'TenantError';
  constructor(
    readonly code: TenantErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
