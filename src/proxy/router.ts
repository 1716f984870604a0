// Startup parameters -> tenant identity and the backend's startup parameters (pure, no I/O).
import { invalidAuthorization, featureNotSupported, protocolViolation } from './errors.js';
import { formatStartupOptions, parseStartupOptions } from './protocol/options.js';
import { quoteIdent } from '../tenants/ids.js';

export type Isolation = 'role' | 'schema';

/** Who the client says it is, before the tenant is looked up. */
export interface Identity {
  readonly tenantId: string;
  /** The role the backend logs in as; in role isolation it comes from the tenant record. */
  readonly loginRole: string | null;
}

/** Settings a client must never choose for itself: they would move it out of its tenant. */
const PROTECTED_SETTINGS = new Set(['search_path', 'role', 'session_authorization']);

/** Startup parameters that are not settings and are handled here rather than passed on. */
const NON_SETTING_PARAMETERS = new Set(['user', 'database', 'options', 'replication']);

/**
 * Reads the tenant from the startup packet: the user in role isolation; the user's
 * suffix (`app.acme`) or else `application_name` in schema isolation.
 */
export function identify(params: ReadonlyMap<string, string>, isolation: Isolation): Identity {
  const user = params.get('user') ?? '';
  if (params.has('replication') && params.get('replication') !== 'false' && params.get('replication') !== '0') {
    throw featureNotSupported('replication connections are not supported through pgtenant');
  }
  if (isolation === 'role') return { tenantId: user, loginRole: null };
  const dot = user.lastIndexOf('.');
  if (dot > 0 && dot < user.length - 1) {
    return { tenantId: user.slice(dot + 1), loginRole: user.slice(0, dot) };
  }
  const app = params.get('application_name');
  if (!app) {
    throw invalidAuthorization(
      `no tenant in startup packet: connect as user "${user}.<tenant>" or set application_name to the tenant`,
    );
  }
  return { tenantId: app, loginRole: user };
}


/** The client's `options` as name/value settings, minus the protected ones. */
function optionSettings(raw: string | undefined): Array<{ name: string; value: string }> {
  if (!raw) return [];
  try {
    return parseStartupOptions(raw).filter((o) => !PROTECTED_SETTINGS.has(o.name.toLowerCase()));
  } catch {
    throw protocolViolation(`invalid command-line options in startup packet: ${raw}`);
  }
}

const isClientSetting = (name: string): boolean =>
  // Protocol extensions (_pq_.*) are negotiated with the client by the proxy; the backend speaks plain 3.0.
  !NON_SETTING_PARAMETERS.has(name) && !PROTECTED_SETTINGS.has(name.toLowerCase()) && !name.startsWith('_pq_.');

/**
 * The backend's startup parameters: the client's own, minus anything that would
 * choose the schema or role, plus the tenant's search_path last in `options`.
 */
export function backendStartupParameters(
  client: ReadonlyMap<string, string>,
  loginRole: string,
  schema: string,
): Map<string, string> {
  const out = new Map<string, string>();
  out.set('user', loginRole);
  const database = client.get('database');
  if (database) out.set('database', database);
  for (const [name, value] of client) if (isClientSetting(name)) out.set(name, value);
  const options = optionSettings(client.get('options'));
  options.push({ name: 'search_path', value: quoteIdent(schema) });
  out.set('options', formatStartupOptions(options));
  return out;
}

/**
 * The settings a client asked for at startup (parameters, then `options`, which PostgreSQL applies last),
 * minus the protected ones: what a pooled backend, opened without them, is given with SET instead.
 */
export function clientSettings(client: ReadonlyMap<string, string>): Map<string, string> {
  const out = new Map<string, string>();
  for (const [name, value] of client) if (isClientSetting(name)) out.set(name, value);
  for (const { name, value } of optionSettings(client.get('options'))) out.set(name, value);
  return out;
}
