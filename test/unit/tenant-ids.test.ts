// Tenant id rules, password rules and identifier quoting, which guard every name that reaches SQL.
import { describe, expect, it } from 'vitest';
import { isValidTenantId, quoteIdent, quoteLiteral, validatePassword, validateTenantId } from '../../src/tenants/ids.js';

describe('validateTenantId', () => {
  it('accepts lowercase identifiers up to 63 characters', () => {
    for (const id of ['acme', '_acme', 'a', 'globex_2', 'x'.repeat(63), 'public_co', 'pgx']) expect(validateTenantId(id)).toBe(id);
  });

  it('refuses malformed ids with invalid_tenant_id', () => {
    for (const id of ['', 'Acme', '1acme', 'ac-me', 'ac me', 'acme"', 'x'.repeat(64), 'é', 'acme;drop', 7, null, undefined]) {
      expect(() => validateTenantId(id), String(id)).toThrow(expect.objectContaining({ code: 'invalid_tenant_id' }));
      expect(isValidTenantId(id)).toBe(false);
    }
  });

  it('refuses reserved names', () => {
    for (const id of ['public', 'postgres', 'pgtenant', 'information_schema', 'pg_catalog', 'pg_toast', 'pg_x', 'template0', 'template1', 'current_user', 'session_user', 'none']) {
      expect(() => validateTenantId(id), id).toThrow(/reserved/);
    }
  });
});

describe('validatePassword', () => {
  it('wants 8 to 1024 printable ASCII characters', () => {
    expect(validatePassword('correct horse')).toBe('correct horse');
    for (const pw of ['short', 'x'.repeat(1025), 'tab\there-long', 'ünïcödé-long', 42]) {
      expect(() => validatePassword(pw)).toThrow(expect.objectContaining({ code: 'invalid_password' }));
    }
  });
});

describe('quoting', () => {
  it('always quotes identifiers and doubles inner quotes', () => {
    expect(quoteIdent('acme')).toBe('"acme"');
    expect(quoteIdent('a"b')).toBe('"a""b"');
    expect(quoteLiteral("it's")).toBe("'it''s'");
    expect(() => quoteIdent('a\0b')).toThrow();
  });
});
