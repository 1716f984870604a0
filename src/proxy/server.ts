// The proxy listener: accepts clients, runs their sessions, reacts to tenant changes, and shuts down gracefully.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { redactUrl, type Config } from '../config.js';
import type { Logger } from '../logger.js';
import { TenantDirectory } from '../tenants/directory.js';
import { emptyConnections, NO_OBSERVER, type ProxyControl, type ProxyObserver, type TenantConnections } from './activity.js';
import { tlsServerEndPoint } from './auth/channel-binding.js';
import { CancelRegistry } from './cancel.js';
import { adminShutdown } from './errors.js';
import { IdleTransactionWatch, TenantClients, connectionRefusal } from './limits.js';
import { BackendPool, TURN_TRANSACTIONS, type PoolLimits } from './pool.js';
import { Session, type SessionDeps } from './session.js';
import type { TenantLookup } from './tenant-lookup.js';
import { upstreamTarget } from './upstream.js';

export interface ProxyServer {
  readonly address: { host: string; port: number };
  /** The same proxy as the admin API sees it. */
  readonly control: ProxyControl;
  readonly pool: BackendPool;
  /** Live sessions, each with the promise of its end (for the admin API and tests). */
  sessions(): ReadonlyMap<Session, Promise<unknown>>;
  /** Client and server connections by tenant and state, counted now. */
  connections(): TenantConnections[];
  /** Ends every session of a tenant with a FATAL the client can read. */
  disconnectTenant(id: string, reason: string): number;
  /** True once close() was called. */
  readonly closing: boolean;
  /** Stops accepting, lets sessions finish for up to `graceMs`, then ends the rest. */
  close(graceMs?: number): Promise<void>;
  /** Takes a reloaded configuration (SIGHUP): limits, timeouts and the TLS certificate; open sessions stay. */
  reload(config: Config): void;
}

export interface ProxyOptions {
  readonly config: Config;
  readonly log: Logger;
  /** Tenant lookups; by default a TenantDirectory on the upstream, closed with the server. */
  readonly tenants?: TenantLookup;
  /** Told of session events, for metrics. */
  readonly observer?: ProxyObserver;
  /** Cancel keys; a worker's registry names its slot and forwards other slots' cancels. */
  readonly cancels?: CancelRegistry;
}

/** The client TLS context and the certificate's channel-binding data, when a certificate is configured. */
function loadTls(config: Config): { secureContext: tls.SecureContext | null; tlsEndPoint: Buffer | null } {
  if (!config.tlsCert || !config.tlsKey) return { secureContext: null, tlsEndPoint: null };
  const cert = readFileSync(config.tlsCert);
  return { secureContext: tls.createSecureContext({ cert, key: readFileSync(config.tlsKey) }), tlsEndPoint: tlsServerEndPoint(cert) };
}

function poolLimits(config: Config): PoolLimits {
  return {
    size: config.poolSize,
    maxBackends: config.maxBackends,
    workers: config.workers,
    minIdle: config.poolMinIdle,
    waitTimeout: config.poolWaitTimeout,
    idleTimeout: config.serverIdleTimeout,
    lifetime: config.serverLifetime,
    turnReleases: config.poolMode === 'transaction' ? TURN_TRANSACTIONS : 1,
  };
}

/** Resolves when every live session has ended, or after `ms`, whichever is first. */
async function allEndedWithin(live: ReadonlyMap<Session, Promise<unknown>>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
  await Promise.race([Promise.all(live.values()), timeout]);
  clearTimeout(timer);
}

export async function startProxy(opts: ProxyOptions): Promise<ProxyServer> {
  const { config } = opts;
  const log = opts.log.child({ component: 'proxy' });
  if (!config.upstream) throw new Error('the proxy needs an upstream URL');
  let directory: TenantDirectory | null = null;
  if (!opts.tenants) {
    directory = new TenantDirectory({ connectionString: config.upstream, ttlMs: config.tenantCacheTtl, timeoutMs: config.connectTimeout, log });
    await directory.start().catch((err: Error) => {
      throw new Error(`cannot reach the upstream ${redactUrl(config.upstream!)}: ${err.message || String(err)}`, { cause: err });
    });
    // Fail at start, not at the first login, when proxy-side authentication cannot read secrets.
    // A missing control schema is not fatal (logins get 57P03 until 'pgtenant init' runs); missing rights are.
    if (config.auth === 'proxy') {
      await directory.roleSecret('').catch(async (err: Error & { code?: string }) => {
        if (err.code === 'not_initialized') return log.warn({ err: err.message }, 'the auth query is not installed yet');
        await directory!.close();
        throw err;
      });
    }
  }
  const tenants: TenantLookup = opts.tenants ?? directory!;
  const observer = opts.observer ?? NO_OBSERVER;
  const pool = new BackendPool(poolLimits(config), log.child({ component: 'pool' }), observer);
  const deps: SessionDeps = {
    config,
    target: upstreamTarget(config.upstream),
    tenants,
    cancels: opts.cancels ?? new CancelRegistry(),
    pool,
    ...loadTls(config),
    observer,
    log,
    tenantClients: new TenantClients(() => deps.config),
  };
  if (config.isolation === 'schema') {
    log.warn('isolation mode "schema" is a convenience, not a security boundary: all tenants share one login role');
  }
  const live = new Map<Session, Promise<unknown>>();
  let counter = 0;
  const idleTransactions = new IdleTransactionWatch(() => live.keys(), () => deps.config.idleTransactionTimeout);
  idleTransactions.start();

  const server = net.createServer({ noDelay: true }, (socket) => {
    socket.setKeepAlive(true, 60_000);
    const id = `${process.pid.toString(36)}.${(++counter).toString(36)}`;
    const session = new Session(socket, id, deps, connectionRefusal(deps.config, live.size));
    const ended = session.run().finally(() => {
      live.delete(session);
      observer.sessionEnded(session.authenticatedTenant, session.counters());
    });
    live.set(session, ended);
  });
  server.on('error', (err) => log.error({ err }, 'listener error'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as net.AddressInfo;
  const address = { host: bound.address, port: bound.port };
  log.info({ listen: `${address.host}:${address.port}`, isolation: config.isolation, poolMode: config.poolMode }, 'proxy listening');

  /** Revokes the tenant's sessions, but those `spared`. */
  const revokeTenant = (id: string, reason: string, spared: (s: Session) => boolean = () => false): number => {
    let n = 0;
    for (const s of live.keys()) {
      if (s.tenant !== id || spared(s)) continue;
      s.revoke(adminShutdown(`terminating connection: ${reason}`));
      n++;
    }
    return n;
  };
  const disconnectTenant = (id: string, reason: string): number => {
    pool.closeTenant(id);
    return revokeTenant(id, reason);
  };

  const connections = (): TenantConnections[] => {
    const byTenant = new Map<string | null, TenantConnections>();
    for (const s of live.keys()) {
      const tenant = s.authenticatedTenant;
      let entry = byTenant.get(tenant);
      if (!entry) byTenant.set(tenant, (entry = emptyConnections(tenant)));
      entry.clients[s.clientState]++;
    }
    for (const [tenant, counts] of pool.counts()) {
      let entry = byTenant.get(tenant);
      if (!entry) byTenant.set(tenant, (entry = emptyConnections(tenant)));
      Object.assign(entry.servers, counts);
    }
    return [...byTenant.values()];
  };

  // A suspension refuses new sessions (logins still in flight included) and leaves open ones be; an explicit
  // disconnect, or a drop, ends them all.
  directory?.on('change', (id: string) => {
    void directory!.lookup(id).then(
      (record) => {
        if (!record) disconnectTenant(id, `tenant "${id}" was dropped`);
        else if (record.state !== 'active') revokeTenant(id, `tenant "${id}" was suspended`, (s) => s.relaying);
        if (record) pool.resize(id, record.poolSize ?? config.poolSize);
      },
      (err: Error) => log.warn({ err: err.message, tenant: id }, 'tenant lookup after change failed'),
    );
  });
  // The NOTIFY is only a hint (any role may send one): what counts is the request count in the tenant's row,
  // which tenants cannot write. Sessions that logged in before the latest request end; later ones stay.
  directory?.on('disconnect', (id: string) => {
    void directory!.lookup(id).then(
      (record) => {
        if (!record) return void disconnectTenant(id, `tenant "${id}" was dropped`);
        const older = (s: Session) => s.disconnectEpoch >= 0 && s.disconnectEpoch < record.disconnectEpoch;
        const n = revokeTenant(id, `an administrator disconnected tenant "${id}"`, (s) => !older(s));
        if (n > 0) pool.closeTenant(id);
        log.info({ tenant: id, sessions: n, disconnectEpoch: record.disconnectEpoch }, n > 0 ? 'tenant sessions disconnected' : 'disconnect notification with no older session');
      },
      (err: Error) => log.warn({ err: err.message, tenant: id }, 'tenant lookup after a disconnect notification failed'),
    );
  });

  let closing: Promise<void> | null = null;
  const close = (graceMs = config.shutdownTimeout): Promise<void> => {
    closing ??= (async () => {
      log.info({ sessions: live.size, graceMs }, 'shutting down: no new connections');
      server.close();
      idleTransactions.stop();
      await allEndedWithin(live, graceMs);
      for (const s of live.keys()) s.terminate(adminShutdown());
      await allEndedWithin(live, 2000);
      pool.close();
      await directory?.close();
      log.info('proxy stopped');
    })();
    return closing;
  };

  const control: ProxyControl = {
    address,
    get closing() {
      return closing !== null;
    },
    connections: async () => connections(),
    disconnectTenant: async (id, reason) => disconnectTenant(id, reason),
  };
  const reload = (next: Config): void => {
    // A certificate that cannot be read keeps the one in use: a typo must not take TLS down.
    const tlsFiles = loadTls(next);
    Object.assign(deps, { config: next, ...tlsFiles });
    pool.configure(poolLimits(next));
    idleTransactions.start();
    log.info({ tls: tlsFiles.secureContext !== null }, 'configuration reloaded');
  };

  return {
    address,
    control,
    pool,
    reload,
    sessions: () => live,
    connections,
    disconnectTenant,
    get closing() {
      return closing !== null;
    },
    close,
  };
}
