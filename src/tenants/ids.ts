// Tenant id and password rules, and identifier quoting: ids become role and schema names, so they are checked and always quoted.
import { TenantError } from './errors.js';

/** The shape of a tenant id, also published in the admin API's schemas (reserved names are checked apart). */
export const TENANT_ID_PATTERN = '^[a-z_][a-z0-9_]{0,62}$';
const TENANT_ID = new RegExp(TENANT_ID_PATTERN);

/** Names that already mean something to PostgreSQL or to pgtenant itself. */
const RESERVED = new Set([
  'public',
  'postgres',
  'pgtenant',
  'information_schema',
  'template0',
  'template1',
  'current_user',
  'current_role',
  'session_user',
  'user',
  'none',
  'all',
]);

export function validateTenantId(id: unknown): string {
  if (typeof id !== 'string' || !TENANT_ID.test(id)) {
    const shown = typeof id === 'string' ? `'${id.slice(0, 80)}'` : String(typeof id);
    throw new TenantError(
      'invalid_tenant_id',
      `invalid tenant id ${shown}: use 1-63 characters, lowercase letters, digits and _, not starting with a digit`,
    );
  }
  if (RESERVED.has(id) || id.startsWith('pg_')) {
    throw new TenantError('invalid_tenant_id', `invalid tenant id '${id}': the name is reserved`);
  }
  return id;
}

/** Like validateTenantId, but answers instead of throwing (for lookups of untrusted input). */
export function isValidTenantId(id: unknown): id is string {
  try {
    validateTenantId(id);
    return true;
  } catch {
    return false;
  }
}

/**
 * Printable ASCII only: SASLprep (RFC 4013) leaves such passwords unchanged, so the verifier we compute
 * matches what every client library sends, with or without SASLprep.
 */
export function validatePassword(password: unknown): string {
  if (typeof password !== 'string' || password.length < 8 || password.length > 1024 || !/^[\x20-\x7e]+$/.test(password)) {
    throw new TenantError('invalid_password', 'invalid password: use 8 to 1024 printable ASCII characters');
  }
  return password;
}

/** Always-quoted SQL identifier. */
export function quoteIdent(name: string): string {
  if (name.includes('\0')) throw new TenantError('invalid_tenant_id', 'identifier contains a NUL byte');
  return '"' + name.replace(/"/g, '""') + '"';
}

/** SQL string literal (standard_conforming_strings is on in every supported server). */
export function quoteLiteral(value: string): string {
  if (value.includes('\0')) throw new TenantError('invalid_password', 'value contains a NUL byte');
  return "'" + value.replace(/'/g, "''") + "'";
}
