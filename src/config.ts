// One schema for every option: flags, PGTENANT_* environment and --config file; validated once, then frozen.
import { existsSync, readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';

type Kind = 'string' | 'number';

interface OptionSpec {
  kind: Kind;
  describe: string;
  default?: string | number;
  choices?: readonly string[];
}

/** The option table: yargs flags, env names and file keys are all derived from it. */
export const OPTIONS = {
  upstream: { kind: 'string', describe: 'Upstream PostgreSQL URL, the management identity (fallback: DATABASE_URL)' },
  listen: { kind: 'string', default: '127.0.0.1:6432', describe: 'Address the proxy listens on (host:port)' },
  adminListen: { kind: 'string', default: '127.0.0.1:6480', describe: "Admin API address (host:port), or 'off'" },
  adminToken: { kind: 'string', describe: 'Bearer token for the admin API (generated and logged when none is given on a loopback address)' },
  metricsTenantLimit: { kind: 'number', default: 100, describe: 'Tenants with their own metric series; the rest are summed as tenant="_other"' },
  isolation: { kind: 'string', default: 'role', choices: ['role', 'schema'], describe: 'Tenant isolation mode' },
  poolMode: { kind: 'string', default: 'session', choices: ['session', 'transaction'], describe: 'Pool mode' },
  auth: { kind: 'string', default: 'proxy', choices: ['proxy', 'relay'], describe: "Who checks passwords: the proxy (auth query, backends reused) or the server ('relay', one backend per client)" },
  poolSize: { kind: 'number', default: 20, describe: 'Backend connections per (tenant, role, database) pool' },
  maxBackends: { kind: 'number', default: 80, describe: 'Backend connections in all pools together (0: no cap)' },
  workers: { kind: 'number', default: 1, describe: 'Proxy processes sharing the listener (pool sizes and --max-backends are split among them)' },
  poolMinIdle: { kind: 'number', default: 0, describe: 'Idle backends a pool with clients keeps ready' },
  poolWaitTimeout: { kind: 'number', default: 30000, describe: 'Milliseconds a client waits for a backend before 53300' },
  serverIdleTimeout: { kind: 'number', default: 60000, describe: 'Milliseconds an idle backend is kept' },
  serverLifetime: { kind: 'number', default: 3600000, describe: 'Milliseconds after which a backend is closed once released' },
  tlsCert: { kind: 'string', describe: 'PEM certificate for client TLS' },
  tlsKey: { kind: 'string', describe: 'PEM private key for client TLS' },
  clientTls: { kind: 'string', default: 'allow', choices: ['disable', 'allow', 'require'], describe: 'Client TLS policy' },
  connectTimeout: { kind: 'number', default: 5000, describe: 'Milliseconds to wait for an upstream connection' },
  shutdownTimeout: { kind: 'number', default: 30000, describe: 'Milliseconds sessions get to finish on SIGTERM' },
  maxClientConnections: { kind: 'number', default: 10000, describe: 'Client connections the proxy accepts at once; more get 53300 (0: no cap)' },
  maxTenantClients: { kind: 'number', default: 0, describe: 'Client connections one tenant may hold at once; more get 53300 (0: no cap)' },
  startupTimeout: { kind: 'number', default: 60000, describe: 'Milliseconds a client has from connecting to proving its password (0: no limit)' },
  idleTransactionTimeout: {
    kind: 'number', default: 0, describe: 'Milliseconds a client may sit idle inside a transaction before it is closed with 25P03 (0: no limit)',
  },
  tenantCacheTtl: { kind: 'number', default: 60000, describe: 'Milliseconds a tenant lookup is cached (NOTIFY drops it sooner)' },
  migrationsDir: { kind: 'string', default: 'migrations', describe: 'Folder with tenant/ and shared/ migration files' },
  logLevel: { kind: 'string', default: 'info', choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], describe: 'Log level' },
} as const satisfies Record<string, OptionSpec>;

/** Cancel keys carry the worker in their low byte (see proxy/cancel.ts). */
export const MAX_WORKERS = 64;

export type OptionName = keyof typeof OPTIONS;

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export interface Config {
  readonly upstream: string | undefined;
  readonly listen: HostPort;
  readonly adminListen: HostPort | null;
  readonly adminToken: string | undefined;
  readonly metricsTenantLimit: number;
  readonly isolation: 'role' | 'schema';
  readonly poolMode: 'session' | 'transaction';
  readonly auth: 'proxy' | 'relay';
  readonly poolSize: number;
  readonly maxBackends: number;
  /** Proxy worker processes; 1 runs the proxy in this process. */
  readonly workers: number;
  readonly poolMinIdle: number;
  readonly poolWaitTimeout: number;
  readonly serverIdleTimeout: number;
  readonly serverLifetime: number;
  readonly tlsCert: string | undefined;
  readonly tlsKey: string | undefined;
  readonly clientTls: 'disable' | 'allow' | 'require';
  readonly connectTimeout: number;
  readonly shutdownTimeout: number;
  readonly maxClientConnections: number;
  readonly maxTenantClients: number;
  readonly startupTimeout: number;
  readonly idleTransactionTimeout: number;
  readonly tenantCacheTtl: number;
  readonly migrationsDir: string;
  readonly logLevel: string;
}

/** A bad option value: the CLI turns it into exit code 2. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export function envName(option: string): string {
  return 'PGTENANT_' + option.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
}

export function flagName(option: string): string {
  return option.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

export function parseHostPort(value: string, what: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`${what}: expected host:port, got '${value}'`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`--config: cannot read ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError(`--config: ${path} is not valid JSON or YAML: ${(err as Error).message}`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigError(`--config: ${path} must hold an object of options`);
  }
  return data as Record<string, unknown>;
}

function coerce(name: OptionName, raw: unknown, source: string): string | number {
  const spec: OptionSpec = OPTIONS[name];
  let value: string | number;
  if (spec.kind === 'number') {
    value = typeof raw === 'number' ? raw : Number(String(raw).trim());
    if (!Number.isFinite(value) || value < 0) throw new ConfigError(`${source}: expected a non-negative number, got '${String(raw)}'`);
  } else {
    if (typeof raw !== 'string' && typeof raw !== 'number') throw new ConfigError(`${source}: expected a string`);
    value = String(raw);
  }
  if (spec.choices && !spec.choices.includes(String(value))) {
    throw new ConfigError(`${source}: expected one of ${spec.choices.join(', ')}, got '${String(value)}'`);
  }
  return value;
}

export interface ConfigSources {
  /** Options given on the command line (camelCase keys, undefined when absent). */
  flags?: Partial<Record<string, unknown>>;
  env?: NodeJS.ProcessEnv;
  /** Contents of the --config file, if any. */
  file?: Record<string, unknown>;
}

/** Merges defaults < file < environment < flags, validates, and freezes. */
export function resolveConfig(sources: ConfigSources): Config {
  const env = sources.env ?? {};
  const file = sources.file ?? {};
  for (const key of Object.keys(file)) {
    if (!(key in OPTIONS) && key !== 'config') throw new ConfigError(`--config: unknown option '${key}'`);
  }
  const merged: Partial<Record<OptionName, string | number>> = {};
  for (const name of Object.keys(OPTIONS) as OptionName[]) {
    const spec: OptionSpec = OPTIONS[name];
    const flag = sources.flags?.[name];
    const fromEnv = env[envName(name)];
    if (flag !== undefined) merged[name] = coerce(name, flag, `--${flagName(name)}`);
    else if (fromEnv !== undefined && fromEnv !== '') merged[name] = coerce(name, fromEnv, envName(name));
    else if (file[name] !== undefined) merged[name] = coerce(name, file[name], `--config ${name}`);
    else if (spec.default !== undefined) merged[name] = spec.default;
  }
  const upstream = (merged.upstream as string | undefined) ?? (env.DATABASE_URL || undefined);
  const adminListen = String(merged.adminListen);
  const config: Config = {
    upstream,
    listen: parseHostPort(String(merged.listen), '--listen'),
    adminListen: adminListen === 'off' ? null : parseHostPort(adminListen, '--admin-listen'),
    adminToken: merged.adminToken as string | undefined,
    metricsTenantLimit: merged.metricsTenantLimit as number,
    isolation: merged.isolation as Config['isolation'],
    poolMode: merged.poolMode as Config['poolMode'],
    auth: merged.auth as Config['auth'],
    poolSize: merged.poolSize as number,
    maxBackends: merged.maxBackends as number,
    workers: merged.workers as number,
    poolMinIdle: merged.poolMinIdle as number,
    poolWaitTimeout: merged.poolWaitTimeout as number,
    serverIdleTimeout: merged.serverIdleTimeout as number,
    serverLifetime: merged.serverLifetime as number,
    tlsCert: merged.tlsCert as string | undefined,
    tlsKey: merged.tlsKey as string | undefined,
    clientTls: merged.clientTls as Config['clientTls'],
    connectTimeout: merged.connectTimeout as number,
    shutdownTimeout: merged.shutdownTimeout as number,
    maxClientConnections: merged.maxClientConnections as number,
    maxTenantClients: merged.maxTenantClients as number,
    startupTimeout: merged.startupTimeout as number,
    idleTransactionTimeout: merged.idleTransactionTimeout as number,
    tenantCacheTtl: merged.tenantCacheTtl as number,
    migrationsDir: merged.migrationsDir as string,
    logLevel: merged.logLevel as string,
  };
  if (Boolean(config.tlsCert) !== Boolean(config.tlsKey)) {
    throw new ConfigError('--tls-cert and --tls-key go together');
  }
  if (!Number.isInteger(config.poolSize) || config.poolSize < 1) throw new ConfigError('--pool-size: expected a whole number of at least 1');
  if (!Number.isInteger(config.workers) || config.workers < 1 || config.workers > MAX_WORKERS) {
    throw new ConfigError(`--workers: expected a whole number from 1 to ${MAX_WORKERS}`);
  }
  if (config.auth === 'relay' && config.poolMode === 'transaction') {
    throw new ConfigError('--pool-mode transaction needs --auth proxy: relayed logins cannot share backends');
  }
  if (config.clientTls === 'require' && !config.tlsCert) {
    throw new ConfigError('--client-tls require needs --tls-cert and --tls-key');
  }
  return Object.freeze(config);
}

/** What SIGHUP can change in a running proxy; everything else is read once, at start. */
export const RELOADABLE: readonly OptionName[] = [
  'poolSize', 'maxBackends', 'poolMinIdle', 'poolWaitTimeout', 'serverIdleTimeout', 'serverLifetime', 'tlsCert', 'tlsKey', 'clientTls',
  'connectTimeout', 'shutdownTimeout', 'maxClientConnections', 'maxTenantClients', 'startupTimeout', 'idleTransactionTimeout',
];

/**
 * The configuration a reload leads to: `next`'s reloadable options over `current`'s others, and the names
 * of options that changed but need a restart (they keep their current value).
 */
export function reloadedConfig(current: Config, next: Config): { config: Config; needRestart: string[] } {
  const merged: Record<string, unknown> = { ...current };
  const needRestart: string[] = [];
  for (const name of Object.keys(next) as (keyof Config)[]) {
    if ((RELOADABLE as readonly string[]).includes(name)) merged[name] = next[name];
    else if (JSON.stringify(next[name]) !== JSON.stringify(current[name])) needRestart.push(flagName(name));
  }
  return { config: Object.freeze(merged as unknown as Config), needRestart };
}

/** The upstream URL, or a ConfigError naming the ways to give it. */
export function requireUpstream(config: Config): string {
  if (!config.upstream) throw new ConfigError('no upstream: pass --upstream URL, or set PGTENANT_UPSTREAM or DATABASE_URL');
  return config.upstream;
}

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable upstream URL)';
  }
}

/**
 * The migrations folder to use: the configured one, except that a missing folder under the default
 * name means "no migrations" (a project without any), while a folder named explicitly must exist.
 */
export function migrationsDirFor(config: Config): string | null {
  if (config.migrationsDir === OPTIONS.migrationsDir.default && !existsSync(config.migrationsDir)) return null;
  return config.migrationsDir;
}
