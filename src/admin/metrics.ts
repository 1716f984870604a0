// Prometheus metrics (prom-client): session events from the proxy, live states read at scrape time, migration jobs.
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { TenantStatus } from '../migrate/runner.js';
import type { ProxyObserver, SessionCounters, TenantConnections } from '../proxy/activity.js';
import type { ProxyServer } from '../proxy/server.js';

/** What the metrics read from the proxy at scrape time. */
export type LiveSessions = Pick<ProxyServer, 'connections' | 'sessions'>;

/** One process's metrics as prom-client's JSON, what worker processes send the primary at scrape time. */
export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

/** What the metrics read from the migration jobs at scrape time. */
export interface LiveJobs {
  running(): number;
  /** Tenants still to do in the running jobs. */
  pendingTenants(): number;
}

/** Label for sessions that never authenticated: a claimed tenant name is untrusted input, never a label. */
export const UNAUTHENTICATED = '_unauthenticated';
export const OTHER = '_other';

/** SQLSTATE of a refusal -> its condition name (PostgreSQL's errcodes), a bounded set of label values. */
const REFUSAL_REASONS: Record<string, string> = {
  '28P01': 'invalid_password',
  '28000': 'invalid_authorization_specification',
  '57P03': 'cannot_connect_now',
  '08P01': 'protocol_violation',
  '08006': 'connection_failure',
  '08001': 'sqlclient_unable_to_establish_sqlconnection',
  '57P01': 'admin_shutdown',
  '53300': 'too_many_connections',
  '0A000': 'feature_not_supported',
  XX000: 'internal_error',
};

/**
 * Tenants get their own series first come, first served, up to `limit`; the rest share `_other`. A tenant
 * keeps its label for the life of the process, so counters never jump between series.
 */
export class TenantLabels {
  private readonly own = new Set<string>();
  constructor(private readonly limit: number) {}

  of(tenant: string | null): string {
    if (tenant === null) return UNAUTHENTICATED;
    if (this.own.has(tenant)) return tenant;
    if (this.own.size < this.limit) {
      this.own.add(tenant);
      return tenant;
    }
    return OTHER;
  }
}

interface LiveSnapshot {
  totals: Map<string, SessionCounters>;
  connections: TenantConnections[];
}

const zero = (): SessionCounters => ({ bytesIn: 0, bytesOut: 0, queries: 0, transactions: 0 });

function add(into: SessionCounters, c: SessionCounters): void {
  into.bytesIn += c.bytesIn;
  into.bytesOut += c.bytesOut;
  into.queries += c.queries;
  into.transactions += c.transactions;
}

export class Metrics implements ProxyObserver {
  readonly registry = new Registry();
  private readonly labels: TenantLabels;
  /** Totals of sessions that have ended, by label; live sessions are added at scrape time. */
  private readonly ended = new Map<string, SessionCounters>();
  private proxy: LiveSessions | null = null;
  private jobs: LiveJobs | null = null;
  /** With --workers: each worker's metrics, summed into this process's own at scrape time. */
  private workers: (() => Promise<MetricsJson[]>) | null = null;
  /** Read once per scrape and shared by the collectors, so the sessions are walked once, not six times. */
  private taken: LiveSnapshot | null = null;

  private readonly sessionsStarted: Counter<'tenant'>;
  private readonly sessionsRefused: Counter<'reason'>;
  private readonly backendConnect: Histogram;
  private readonly poolWait: Histogram;
  private readonly poolWaitTimeouts: Counter;
  private readonly migrationTenants: Counter<'result'>;
  private readonly migrationJobs: Counter<'outcome'>;
  readonly adminRequests: Counter<'route' | 'status'>;

  constructor(opts: { tenantLimit: number }) {
    this.labels = new TenantLabels(opts.tenantLimit);
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // Gauges named like counters, which Prometheus's own checker (promtool check metrics) rejects.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      this.registry.removeSingleMetric(name);
    }
    const metrics = this;

    for (const [name, help, field] of [
      ['pgtenant_client_received_bytes_total', 'Bytes received from clients', 'bytesIn'],
      ['pgtenant_client_sent_bytes_total', 'Bytes sent to clients', 'bytesOut'],
      ['pgtenant_queries_total', 'Query and Execute messages from clients (read from message headers, no SQL is parsed)', 'queries'],
      ['pgtenant_transactions_total', 'Transactions finished (ReadyForQuery back to idle after work), implicit or explicit', 'transactions'],
    ] as const) {
      new Counter({
        name,
        help,
        labelNames: ['tenant'],
        registers,
        collect() {
          this.reset();
          for (const [tenant, c] of metrics.snapshot().totals) this.inc({ tenant }, c[field]);
        },
      });
    }

    for (const [name, help, side] of [
      ['pgtenant_client_connections', 'Client connections by tenant and state (login: not yet authenticated; waiting: for a backend from its pool)', 'clients'],
      ['pgtenant_server_connections', 'Backend connections by tenant and state (login: being opened and logged in; active: linked to a client; idle: in its pool)', 'servers'],
    ] as const) {
      new Gauge({
        name,
        help,
        labelNames: ['tenant', 'state'],
        registers,
        collect() {
          this.reset();
          for (const t of metrics.snapshot().connections) {
            for (const [state, n] of Object.entries(t[side])) if (n > 0) this.inc({ tenant: metrics.labels.of(t.tenant), state }, n);
          }
        },
      });
    }
    this.sessionsStarted = new Counter({
      name: 'pgtenant_sessions_started_total',
      help: 'Client sessions that authenticated and started relaying',
      labelNames: ['tenant'],
      registers,
    });
    this.sessionsRefused = new Counter({
      name: 'pgtenant_sessions_refused_total',
      help: 'Client connections refused before relaying, by the condition name of the SQLSTATE sent',
      labelNames: ['reason'],
      registers,
    });
    this.backendConnect = new Histogram({
      name: 'pgtenant_backend_connect_duration_seconds',
      help: 'Time to open a backend connection (TCP, and TLS where used)',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.poolWait = new Histogram({
      name: 'pgtenant_pool_wait_duration_seconds',
      help: 'Time clients that found their pool full waited for a backend (served or timed out)',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.poolWaitTimeouts = new Counter({
      name: 'pgtenant_pool_wait_timeouts_total',
      help: 'Clients refused with 53300 after --pool-wait-timeout, by tenant',
      labelNames: ['tenant'],
      registers,
    });
    this.migrationJobs = new Counter({
      name: 'pgtenant_migration_jobs_total',
      help: 'Migration jobs finished through the admin API, by outcome',
      labelNames: ['outcome'],
      registers,
    });
    this.migrationTenants = new Counter({
      name: 'pgtenant_migration_tenants_total',
      help: 'Tenants with pending migrations finished by migration jobs, by result (migrated, up_to_date, failed, not_attempted)',
      labelNames: ['result'],
      registers,
    });
    new Gauge({
      name: 'pgtenant_migration_jobs_running',
      help: 'Migration jobs running now',
      registers,
      collect() {
        this.set(metrics.jobs?.running() ?? 0);
      },
    });
    new Gauge({
      name: 'pgtenant_migration_pending_tenants',
      help: 'Tenants the running migration jobs have still to do',
      registers,
      collect() {
        this.set(metrics.jobs?.pendingTenants() ?? 0);
      },
    });
    this.adminRequests = new Counter({
      name: 'pgtenant_admin_requests_total',
      help: 'Admin API requests by route and status code',
      labelNames: ['route', 'status'],
      registers,
    });
  }

  attachProxy(proxy: LiveSessions): void {
    this.proxy = proxy;
  }

  attachWorkers(collect: () => Promise<MetricsJson[]>): void {
    this.workers = collect;
  }

  attachJobs(jobs: LiveJobs): void {
    this.jobs = jobs;
  }

  /** Ended sessions plus live ones, by label. */
  private snapshot(): LiveSnapshot {
    return this.taken ?? { totals: this.totals(), connections: this.proxy?.connections() ?? [] };
  }

  private totals(): Map<string, SessionCounters> {
    const out = new Map<string, SessionCounters>();
    for (const [label, c] of this.ended) out.set(label, { ...c });
    for (const session of this.proxy?.sessions().keys() ?? []) {
      const label = this.labels.of(session.authenticatedTenant);
      let t = out.get(label);
      if (!t) out.set(label, (t = zero()));
      add(t, session.counters());
    }
    return out;
  }

  sessionStarted(tenant: string): void {
    this.sessionsStarted.inc({ tenant: this.labels.of(tenant) });
  }

  sessionRefused(sqlstate: string): void {
    this.sessionsRefused.inc({ reason: REFUSAL_REASONS[sqlstate] ?? 'other' });
  }

  sessionEnded(tenant: string | null, counters: SessionCounters): void {
    const label = this.labels.of(tenant);
    let t = this.ended.get(label);
    if (!t) this.ended.set(label, (t = zero()));
    add(t, counters);
  }

  backendConnected(seconds: number): void {
    this.backendConnect.observe(seconds);
  }

  backendWaited(tenant: string, seconds: number, timedOut: boolean): void {
    this.poolWait.observe(seconds);
    if (timedOut) this.poolWaitTimeouts.inc({ tenant: this.labels.of(tenant) });
  }

  migrationTenantFinished(result: TenantStatus): void {
    this.migrationTenants.inc({ result });
  }

  migrationJobFinished(ok: boolean): void {
    this.migrationJobs.inc({ outcome: ok ? 'succeeded' : 'failed' });
  }

  /** Reads the registry with the live sessions walked once for all collectors. */
  private async read<T>(from: (registry: Registry) => Promise<T>): Promise<T> {
    this.taken = this.snapshot();
    try {
      return await from(this.registry);
    } finally {
      this.taken = null;
    }
  }

  /** This process's metrics as JSON, for the primary to aggregate. */
  json(): Promise<MetricsJson> {
    return this.read((r) => r.getMetricsAsJSON() as Promise<MetricsJson>);
  }

  /** The exposition text and its content type; with workers, their series are summed with this process's. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    if (!this.workers) return { contentType: this.registry.contentType, body: await this.read((r) => r.metrics()) };
    const [own, workers] = await Promise.all([this.json(), this.workers()]);
    const all = AggregatorRegistry.aggregate([own, ...workers]);
    return { contentType: all.contentType, body: await all.metrics() };
  }
}
