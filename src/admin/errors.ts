// Admin API errors: every failure leaves as {"error":{"code","message"}} with a fitting status, through toAdminError.
import type { TenantErrorCode } from '../tenants/errors.js';
import { TenantError } from '../tenants/errors.js';

export class AdminError extends Error {
  override readonly name = 'AdminError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** The request field at fault, for validation errors. */
    readonly field?: string,
  ) {
    super(message);
  }
}

export const notFound = (message: string) => new AdminError(404, 'not_found', message);
export const unauthorized = () => new AdminError(401, 'unauthorized', 'missing or invalid bearer token');
export const conflict = (code: string, message: string) => new AdminError(409, code, message);
export const badRequest = (code: string, message: string, field?: string) => new AdminError(400, code, message, field);
export const unavailable = (code: string, message: string) => new AdminError(503, code, message);

const TENANT_STATUS: Record<TenantErrorCode, number> = {
  invalid_tenant_id: 400,
  invalid_password: 400,
  invalid_pool_size: 400,
  invalid_max_clients: 400,
  tenant_exists: 409,
  tenant_not_found: 404,
  not_initialized: 503,
  insufficient_privilege: 500,
  migration_failed: 500,
  checksum_mismatch: 409,
  invalid_migration: 409,
};

/** Fastify's own request errors, by their code. */
const FASTIFY_ERRORS: Record<string, [number, string]> = {
  FST_ERR_CTP_INVALID_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, 'unsupported_media_type'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'invalid_request'],
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'body_too_large'],
};

/** A bad value in these fields carries the same code the lifecycle service uses for it, and back. */
const FIELD_CODES: Record<string, string> = { id: 'invalid_tenant_id', password: 'invalid_password', poolSize: 'invalid_pool_size', maxClients: 'invalid_max_clients' };
const CODE_FIELDS: Record<string, string> = Object.fromEntries(Object.entries(FIELD_CODES).map(([f, c]) => [c, f]));

interface ValidationIssue {
  instancePath: string;
  params: Record<string, unknown>;
}

/** Server-side conditions meaning "PostgreSQL cannot be reached or is going away", not a bug. */
const UPSTREAM_DOWN = /^(08|57P0[1-3])|^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|EPIPE)$/;

function fromValidation(err: { message: string; validation: ValidationIssue[]; validationContext?: string }): AdminError {
  const issue = err.validation[0];
  const path = issue?.instancePath.replace(/^\//, '').replace(/\//g, '.') ?? '';
  // A missing or unknown property is reported on its parent: name the property itself.
  const named = issue?.params.missingProperty ?? issue?.params.additionalProperty;
  const field = [path, typeof named === 'string' ? named : ''].filter(Boolean).join('.') || err.validationContext || '';
  const top = field.split('.')[0]!;
  const message = issue?.params.additionalProperty !== undefined ? `${err.message}: '${field}'` : err.message;
  return new AdminError(400, FIELD_CODES[top] ?? 'invalid_request', message, field || undefined);
}

function isUpstreamDown(err: unknown): boolean {
  const e = err as { code?: unknown; errors?: { code?: unknown }[]; message?: string };
  if (typeof e.code === 'string' && UPSTREAM_DOWN.test(e.code)) return true;
  if (e.errors?.some((x) => typeof x.code === 'string' && UPSTREAM_DOWN.test(x.code))) return true;
  return /timeout exceeded when trying to connect|Connection terminated/.test(e.message ?? '');
}

/** Any error to the one shape the API answers with; `internal` is true when it is a bug worth logging. */
export function toAdminError(err: unknown): { error: AdminError; internal: boolean } {
  if (err instanceof AdminError) return { error: err, internal: false };
  if (err instanceof TenantError) {
    const status = TENANT_STATUS[err.code] ?? 500;
    return { error: new AdminError(status, err.code, err.message, CODE_FIELDS[err.code]), internal: status === 500 };
  }
  // `throw null` and rejections with nothing still leave as an internal error, not as a TypeError here.
  const e = (typeof err === 'object' && err !== null ? err : {}) as { code?: string; validation?: ValidationIssue[]; statusCode?: number; message?: string };
  if (Array.isArray(e.validation)) return { error: fromValidation(e as never), internal: false };
  const known = e.code ? FASTIFY_ERRORS[e.code] : undefined;
  if (known) return { error: new AdminError(known[0], known[1], e.message ?? known[1]), internal: false };
  if (isUpstreamDown(e)) return { error: unavailable('upstream_unavailable', 'the upstream PostgreSQL server cannot be reached'), internal: false };
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return { error: new AdminError(e.statusCode, 'invalid_request', e.message ?? 'invalid request'), internal: false };
  }
  return { error: new AdminError(500, 'internal_error', 'internal error in pgtenant (see its log)'), internal: true };
}

export function errorBody(err: AdminError): { error: { code: string; message: string; field?: string } } {
  return { error: { code: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) } };
}
