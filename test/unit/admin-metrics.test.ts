// TenantLabels (bounded tenant label values) and Metrics fed as a ProxyObserver, read back through scrape().
import parsePrometheus from 'parse-prometheus-text-format';
import { describe, expect, it } from 'vitest';
import { Metrics, OTHER, TenantLabels, UNAUTHENTICATED } from '../../src/admin/metrics.js';
import type { ProxyObserver, SessionCounters } from '../../src/proxy/activity.js';
import { parseMetrics, sampleValue } from '../support/admin.js';

describe('TenantLabels', () => {
  it('gives tenants their own label first come, first served, up to the limit, then _other', () => {
    const labels = new TenantLabels(3);
    expect(['acme', 'globex', 'initech'].map((t) => labels.of(t))).toEqual(['acme', 'globex', 'initech']);
    expect(labels.of('umbrella')).toBe(OTHER);
    expect(labels.of('hooli')).toBe(OTHER);
    expect(OTHER).toBe('_other');
  });

  it('keeps a tenant on the label it got, before and after the limit is reached', () => {
    const labels = new TenantLabels(2);
    expect(labels.of('acme')).toBe('acme');
    expect(labels.of('acme')).toBe('acme');
    expect(labels.of('globex')).toBe('globex');
    expect(labels.of('umbrella')).toBe(OTHER);
    // Asking again never promotes a late tenant nor demotes an early one.
    for (let i = 0; i < 3; i++) {
      expect(labels.of('umbrella')).toBe(OTHER);
      expect(labels.of('acme')).toBe('acme');
      expect(labels.of('globex')).toBe('globex');
    }
  });

  it('labels sessions without a tenant _unauthenticated, without using up a place', () => {
    const labels = new TenantLabels(1);
    expect(labels.of(null)).toBe(UNAUTHENTICATED);
    expect(UNAUTHENTICATED).toBe('_unauthenticated');
    expect(labels.of('acme')).toBe('acme');
    expect(labels.of(null)).toBe(UNAUTHENTICATED);
    expect(labels.of('globex')).toBe(OTHER);
  });

  it('puts every tenant under _other with a limit of 0', () => {
    const labels = new TenantLabels(0);
    for (const t of ['acme', 'globex', 'acme']) expect(labels.of(t)).toBe(OTHER);
    expect(labels.of(null)).toBe(UNAUTHENTICATED);
  });
});

const counters = (bytesIn: number, bytesOut: number, queries: number, transactions: number): SessionCounters => ({ bytesIn, bytesOut, queries, transactions });

async function scrape(metrics: Metrics) {
  const { contentType, body } = await metrics.scrape();
  expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  return { body, samples: parseMetrics(body) };
}

describe('Metrics as a ProxyObserver (no proxy attached)', () => {
  it('records what the proxy reports through the ProxyObserver interface', async () => {
    const metrics = new Metrics({ tenantLimit: 10 });
    const observer: ProxyObserver = metrics;
    observer.sessionStarted('acme');
    observer.sessionRefused('28P01');
    observer.sessionEnded('acme', counters(1, 2, 3, 4));
    observer.backendConnected(0.01);
    const { samples } = await scrape(metrics);
    expect(sampleValue(samples, 'pgtenant_sessions_started_total', { tenant: 'acme' })).toBe(1);
    expect(sampleValue(samples, 'pgtenant_sessions_refused_total', { reason: 'invalid_password' })).toBe(1);
    expect(sampleValue(samples, 'pgtenant_queries_total', { tenant: 'acme' })).toBe(3);
  });

  it('exports every pgtenant metric from the start, and the default process metrics', async () => {
    const { body, samples } = await scrape(new Metrics({ tenantLimit: 10 }));
    for (const name of [
      'pgtenant_client_connections',
      'pgtenant_server_connections',
      'pgtenant_sessions_started_total',
      'pgtenant_sessions_refused_total',
      'pgtenant_client_received_bytes_total',
      'pgtenant_client_sent_bytes_total',
      'pgtenant_queries_total',
      'pgtenant_transactions_total',
      'pgtenant_backend_connect_duration_seconds',
      'pgtenant_migration_jobs_total',
      'pgtenant_migration_tenants_total',
      'pgtenant_migration_jobs_running',
      'pgtenant_migration_pending_tenants',
      'pgtenant_admin_requests_total',
    ]) {
      expect(body, name).toContain(`# TYPE ${name} `);
    }
    expect(samples.some((s) => s.name === 'process_cpu_seconds_total')).toBe(true);
    expect(samples.some((s) => s.name === 'nodejs_heap_size_used_bytes')).toBe(true);
    // With no jobs attached the gauges read 0 rather than vanishing.
    expect(samples.find((s) => s.name === 'pgtenant_migration_jobs_running')?.value).toBe(0);
    expect(samples.find((s) => s.name === 'pgtenant_migration_pending_tenants')?.value).toBe(0);
    // No proxy attached: no live connections to report.
    expect(samples.filter((s) => s.name === 'pgtenant_client_connections')).toEqual([]);
  });

  it('counts refusals under the PostgreSQL condition name of their SQLSTATE, unknown ones under other', async () => {
    const metrics = new Metrics({ tenantLimit: 10 });
    metrics.sessionRefused('28P01');
    metrics.sessionRefused('28P01');
    metrics.sessionRefused('57P03');
    metrics.sessionRefused('08P01');
    metrics.sessionRefused('53300');
    metrics.sessionRefused('42P01');
    metrics.sessionRefused('ZZ999');
    const { samples } = await scrape(metrics);
    const refused = (reason: string) => sampleValue(samples, 'pgtenant_sessions_refused_total', { reason });
    expect(refused('invalid_password')).toBe(2);
    expect(refused('cannot_connect_now')).toBe(1);
    expect(refused('protocol_violation')).toBe(1);
    expect(refused('too_many_connections')).toBe(1);
    expect(refused('other')).toBe(2);
    // The label set stays bounded: an SQLSTATE itself never becomes a label value.
    const reasons = samples.filter((s) => s.name === 'pgtenant_sessions_refused_total').map((s) => s.labels.reason);
    expect(reasons.sort()).toEqual(['cannot_connect_now', 'invalid_password', 'other', 'protocol_violation', 'too_many_connections']);
  });

  it('counts sessions started per tenant label', async () => {
    const metrics = new Metrics({ tenantLimit: 1 });
    metrics.sessionStarted('acme');
    metrics.sessionStarted('acme');
    metrics.sessionStarted('globex');
    metrics.sessionStarted('initech');
    const { samples } = await scrape(metrics);
    expect(sampleValue(samples, 'pgtenant_sessions_started_total', { tenant: 'acme' })).toBe(2);
    expect(sampleValue(samples, 'pgtenant_sessions_started_total', { tenant: OTHER })).toBe(2);
    expect(samples.filter((s) => s.name === 'pgtenant_sessions_started_total')).toHaveLength(2);
  });

  it('adds the totals of ended sessions into the byte, query and transaction counters', async () => {
    const metrics = new Metrics({ tenantLimit: 10 });
    metrics.sessionEnded('acme', counters(100, 2000, 3, 2));
    metrics.sessionEnded('acme', counters(50, 500, 7, 4));
    metrics.sessionEnded('globex', counters(1, 2, 3, 4));
    metrics.sessionEnded(null, counters(40, 90, 0, 0));
    const { samples } = await scrape(metrics);
    const v = (name: string, tenant: string) => sampleValue(samples, name, { tenant });
    expect(v('pgtenant_client_received_bytes_total', 'acme')).toBe(150);
    expect(v('pgtenant_client_sent_bytes_total', 'acme')).toBe(2500);
    expect(v('pgtenant_queries_total', 'acme')).toBe(10);
    expect(v('pgtenant_transactions_total', 'acme')).toBe(6);
    expect([v('pgtenant_client_received_bytes_total', 'globex'), v('pgtenant_client_sent_bytes_total', 'globex'), v('pgtenant_queries_total', 'globex'), v('pgtenant_transactions_total', 'globex')]).toEqual([1, 2, 3, 4]);
    // Clients that never logged in still sent and received bytes.
    expect(v('pgtenant_client_received_bytes_total', UNAUTHENTICATED)).toBe(40);
    expect(v('pgtenant_client_sent_bytes_total', UNAUTHENTICATED)).toBe(90);
  });

  it('keeps counting across scrapes: a scrape neither resets nor doubles the totals', async () => {
    const metrics = new Metrics({ tenantLimit: 10 });
    metrics.sessionEnded('acme', counters(10, 20, 1, 1));
    expect(sampleValue((await scrape(metrics)).samples, 'pgtenant_queries_total', { tenant: 'acme' })).toBe(1);
    expect(sampleValue((await scrape(metrics)).samples, 'pgtenant_queries_total', { tenant: 'acme' })).toBe(1);
    metrics.sessionEnded('acme', counters(10, 20, 5, 2));
    const { samples } = await scrape(metrics);
    expect(sampleValue(samples, 'pgtenant_queries_total', { tenant: 'acme' })).toBe(6);
    expect(sampleValue(samples, 'pgtenant_client_received_bytes_total', { tenant: 'acme' })).toBe(20);
    expect(sampleValue(samples, 'pgtenant_transactions_total', { tenant: 'acme' })).toBe(3);
  });

  it('sums tenants beyond the limit under _other, and keeps early tenants on their own series', async () => {
    const metrics = new Metrics({ tenantLimit: 2 });
    metrics.sessionStarted('acme');
    metrics.sessionEnded('globex', counters(0, 0, 2, 1));
    metrics.sessionEnded('initech', counters(0, 0, 3, 1));
    metrics.sessionEnded('umbrella', counters(0, 0, 4, 1));
    metrics.sessionEnded('acme', counters(0, 0, 5, 1));
    const { samples } = await scrape(metrics);
    const queries = samples.filter((s) => s.name === 'pgtenant_queries_total');
    expect(Object.fromEntries(queries.map((s) => [s.labels.tenant, s.value]))).toEqual({ globex: 2, acme: 5, [OTHER]: 7 });
  });

  it('puts every tenant under _other with a tenant limit of 0', async () => {
    const metrics = new Metrics({ tenantLimit: 0 });
    metrics.sessionStarted('acme');
    metrics.sessionEnded('acme', counters(1, 1, 1, 1));
    metrics.sessionEnded('globex', counters(1, 1, 1, 1));
    const { samples } = await scrape(metrics);
    const tenants = new Set(samples.filter((s) => s.name.startsWith('pgtenant_') && 'tenant' in s.labels).map((s) => s.labels.tenant));
    expect([...tenants]).toEqual([OTHER]);
    expect(sampleValue(samples, 'pgtenant_queries_total', { tenant: OTHER })).toBe(2);
  });

  it('records backend connect times in the histogram', async () => {
    const metrics = new Metrics({ tenantLimit: 10 });
    for (const seconds of [0.0002, 0.003, 0.003, 0.2, 7]) metrics.backendConnected(seconds);
    const { body } = await scrape(metrics);
    // parseMetrics keeps plain samples only; a histogram comes back from the parser as buckets, count and sum.
    const family = parsePrometheus(body).find((f) => f.name === 'pgtenant_backend_connect_duration_seconds');
    expect(family?.type).toBe('HISTOGRAM');
    expect(family?.metrics).toHaveLength(1);
    const h = family!.metrics[0]!;
    expect(Number(h.count)).toBe(5);
    expect(Number(h.sum)).toBeCloseTo(7.2062, 6);
    // Cumulative counts by upper bound.
    expect(h.buckets).toMatchObject({ '0.0005': '1', '0.001': '1', '0.005': '3', '0.1': '3', '0.25': '4', '5': '4', '+Inf': '5' });
  });

  it('counts migration tenants by result and jobs by outcome', async () => {
    const metrics = new Metrics({ tenantLimit: 10 });
    metrics.migrationTenantFinished('migrated');
    metrics.migrationTenantFinished('migrated');
    metrics.migrationTenantFinished('failed');
    metrics.migrationJobFinished(true);
    metrics.migrationJobFinished(false);
    metrics.migrationJobFinished(false);
    const { samples } = await scrape(metrics);
    expect(sampleValue(samples, 'pgtenant_migration_tenants_total', { result: 'migrated' })).toBe(2);
    expect(sampleValue(samples, 'pgtenant_migration_tenants_total', { result: 'failed' })).toBe(1);
    expect(sampleValue(samples, 'pgtenant_migration_jobs_total', { outcome: 'succeeded' })).toBe(1);
    expect(sampleValue(samples, 'pgtenant_migration_jobs_total', { outcome: 'failed' })).toBe(2);
  });

  it('keeps separate instances apart (each has its own registry)', async () => {
    const a = new Metrics({ tenantLimit: 10 });
    const b = new Metrics({ tenantLimit: 10 });
    a.sessionRefused('28P01');
    a.adminRequests.inc({ route: '/v1/tenants', status: '200' });
    const [sa, sb] = [(await scrape(a)).samples, (await scrape(b)).samples];
    expect(sampleValue(sa, 'pgtenant_sessions_refused_total', { reason: 'invalid_password' })).toBe(1);
    expect(sampleValue(sb, 'pgtenant_sessions_refused_total', { reason: 'invalid_password' })).toBe(0);
    expect(sampleValue(sa, 'pgtenant_admin_requests_total', { route: '/v1/tenants', status: '200' })).toBe(1);
    expect(sampleValue(sb, 'pgtenant_admin_requests_total')).toBe(0);
  });

  it('scrapes text that parses as Prometheus exposition, with label values escaped', async () => {
    const metrics = new Metrics({ tenantLimit: 10 });
    // Tenant ids are validated elsewhere; the exposition must hold up for any label value anyway.
    metrics.sessionEnded('we"ird\\ten\nant', counters(1, 2, 3, 4));
    metrics.adminRequests.inc({ route: '/v1/tenants/:id', status: '404' });
    const { samples } = await scrape(metrics);
    expect(sampleValue(samples, 'pgtenant_queries_total', { tenant: 'we"ird\\ten\nant' })).toBe(3);
    expect(sampleValue(samples, 'pgtenant_admin_requests_total', { route: '/v1/tenants/:id', status: '404' })).toBe(1);
    // (prom-client's event loop mean and stddev read NaN before the first sample, which is valid exposition.)
    expect(samples.filter((s) => s.name.startsWith('pgtenant_')).every((s) => Number.isFinite(s.value))).toBe(true);
  });
});

describe('Metrics with workers attached (the cluster primary)', () => {
  it("sums the workers' series with its own, per label set, and keeps histograms whole", async () => {
    const workers = [new Metrics({ tenantLimit: 10 }), new Metrics({ tenantLimit: 10 })];
    workers[0]!.sessionStarted('acme');
    workers[1]!.sessionStarted('acme');
    workers[1]!.sessionStarted('globex');
    workers[0]!.backendConnected(0.002);
    workers[1]!.backendConnected(0.2);
    const primary = new Metrics({ tenantLimit: 10 });
    primary.migrationJobFinished(true);
    primary.attachWorkers(() => Promise.all(workers.map((w) => w.json())));
    const { samples } = await scrape(primary);
    expect(sampleValue(samples, 'pgtenant_sessions_started_total', { tenant: 'acme' })).toBe(2);
    expect(sampleValue(samples, 'pgtenant_sessions_started_total', { tenant: 'globex' })).toBe(1);
    expect(sampleValue(samples, 'pgtenant_migration_jobs_total', { outcome: 'succeeded' })).toBe(1);
    expect(sampleValue(samples, 'pgtenant_backend_connect_duration_seconds_count', {})).toBe(2);
    expect(sampleValue(samples, 'pgtenant_backend_connect_duration_seconds_bucket', { le: '0.0025' })).toBe(1);
  });
});
