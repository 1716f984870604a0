// The proxy and its admin API as one unit: management pool, tenant service, metrics and migration jobs, closed together.
import cluster from 'node:cluster';
import pg from 'pg';
import { adminToken } from './admin/auth.js';
import { AdminError, unavailable } from './admin/errors.js';
import { Metrics } from './admin/metrics.js';
import { MigrationService } from './admin/migrations.js';
import { startAdminServer, type AdminServer } from './admin/server.js';
import { migrationsDirFor, reloadedConfig, requireUpstream, type Config } from './config.js';
import type { Logger } from './logger.js';
import { startWorkers } from './cluster/primary.js';
import { startWorker } from './cluster/worker.js';
import type { ProxyControl } from './proxy/activity.js';
import { startProxy } from './proxy/server.js';
import { TenantService } from './tenants/service.js';

export interface Runtime {
  /** The proxy in this process, or with --workers the worker processes this one started. */
  readonly proxy: ProxyControl;
  /** null with --admin-listen off. */
  readonly admin: AdminServer | null;
  /** The admin token, and whether it was generated for this process. */
  readonly adminToken: { token: string; generated: boolean } | null;
  readonly metrics: Metrics;
  /** Drains the proxy (the admin API answers /readyz 503 meanwhile), then stops everything. */
  close(graceMs?: number): Promise<void>;
  /** Takes what can change while running from a freshly read configuration (SIGHUP); logs what needs a restart. */
  reload(next: Config): void;
}

type ProxyPart = { proxy: ProxyControl; close(graceMs?: number): Promise<void>; reload(config: Config): void };

/** A reload for the proxy part: merges the reloadable options into the running configuration. */
function reloader(config: Config, log: Logger, apply: (config: Config) => void): (next: Config) => void {
  let current = config;
  return (next) => {
    const { config: merged, needRestart } = reloadedConfig(current, next);
    if (needRestart.length > 0) log.warn({ options: needRestart }, 'changed options that only a restart applies: kept as they were');
    apply(merged);
    current = merged;
  };
}

/** Resolves when `p` does, or rejects after `ms`: a blackholed upstream must not hang /readyz. */
async function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('timeout')), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The proxy part: in this process, or with --workers in worker processes whose metrics are summed into ours. */
async function startProxyPart(config: Config, log: Logger, metrics: Metrics): Promise<ProxyPart> {
  if (config.workers > 1) {
    const workers = await startWorkers({ config, log });
    metrics.attachWorkers(() => workers.metrics());
    // Each worker reads the configuration again itself, as on its own SIGHUP.
    return { proxy: workers, close: (grace) => workers.close(grace), reload: () => workers.reload() };
  }
  const server = await startProxy({ config, log, observer: metrics });
  metrics.attachProxy(server);
  return { proxy: server.control, close: (grace) => server.close(grace), reload: reloader(config, log, (c) => server.reload(c)) };
}

export async function startRuntime({ config, log }: { config: Config; log: Logger }): Promise<Runtime> {
  const upstream = requireUpstream(config);
  if (cluster.isWorker) {
    // A worker of `--workers N`: only the proxy; the primary runs the admin API for all of them.
    const worker = await startWorker({ config, log });
    const reload = reloader(config, log, (c) => worker.proxy.reload(c));
    return { proxy: worker.proxy.control, admin: null, adminToken: null, metrics: worker.metrics, close: (grace) => worker.close(grace), reload };
  }
  // Decided before anything listens: a public admin address without a token is a configuration error.
  const token = config.adminListen ? adminToken(config.adminListen, config.adminToken) : null;
  const metrics = new Metrics({ tenantLimit: config.metricsTenantLimit });
  const { proxy, close: closeProxy, reload } = await startProxyPart(config, log, metrics);
  if (!config.adminListen || !token) {
    return { proxy, admin: null, adminToken: null, metrics, close: closeProxy, reload };
  }

  const pool = new pg.Pool({ connectionString: upstream, max: 4, application_name: 'pgtenant-admin', connectionTimeoutMillis: config.connectTimeout });
  pool.on('error', (err) => log.warn({ err: err.message }, 'idle admin connection lost'));
  const migrationsDir = migrationsDirFor(config);
  const tenants = new TenantService(pool, { isolation: config.isolation, migrationsDir, log });
  const migrations = new MigrationService({ upstream, migrationsDir, connectTimeout: config.connectTimeout, pool, log, events: metrics });
  metrics.attachJobs(migrations);
  const ready = async (): Promise<void> => {
    if (proxy.closing) throw unavailable('shutting_down', 'the proxy is shutting down');
    try {
      await within(pool.query('SELECT 1'), config.connectTimeout);
    } catch (err) {
      if (err instanceof AdminError) throw err;
      throw unavailable('upstream_unavailable', `the upstream PostgreSQL server cannot be reached: ${(err as Error).message}`);
    }
  };

  let admin: AdminServer;
  try {
    admin = await startAdminServer({ listen: config.adminListen, token: token.token, log, context: { tenants, proxy, migrations, metrics, ready } });
  } catch (err) {
    await closeProxy(0);
    await pool.end();
    throw err;
  }
  if (token.generated) {
    log.warn({ adminToken: token.token }, 'no --admin-token given: generated one for this process (set PGTENANT_ADMIN_TOKEN to choose it)');
  }
  return {
    proxy,
    admin,
    adminToken: token,
    metrics,
    reload,
    async close(graceMs) {
      await Promise.all([closeProxy(graceMs), migrations.close()]);
      await admin.close();
      await pool.end();
    },
  };
}
