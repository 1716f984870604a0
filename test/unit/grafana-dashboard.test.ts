// The example Grafana dashboard: importable shape, and every metric its PromQL uses is one the code exports.
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { Metrics } from '../../src/admin/metrics.js';

interface Target {
  expr?: string;
  refId?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id?: number;
  type: string;
  title?: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  definition?: string;
  query?: string | { query?: string };
  multi?: boolean;
  includeAll?: boolean;
  allValue?: string;
  datasource?: { type?: string; uid?: string };
}
interface Dashboard {
  __inputs: { name: string; type: string; pluginId: string }[];
  schemaVersion: number;
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Variable[] };
}

const dashboard = JSON.parse(
  readFileSync(new URL('../../examples/grafana/pgtenant-dashboard.json', import.meta.url), 'utf8'),
) as Dashboard;

/** Panels with queries, including those nested in collapsed rows. */
function queryPanels(panels: readonly Panel[]): Panel[] {
  return panels.flatMap((p) => (p.type === 'row' ? queryPanels(p.panels ?? []) : [p]));
}

const panels = queryPanels(dashboard.panels);
const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title ?? '?', expr: t.expr ?? '' })));
const variableQueries = dashboard.templating.list
  .filter((v) => v.type === 'query')
  .map((v) => ({ panel: `variable ${v.name}`, expr: typeof v.query === 'string' ? v.query : (v.query?.query ?? '') }));

// Metric names only: label values and $variables never start with these prefixes in this dashboard.
const METRIC_NAME = /\b(?:pgtenant_[a-z_]+|process_[a-z_]+|nodejs_[a-z0-9_]+)/g;
const SERIES_SUFFIXES = ['_bucket', '_count', '_sum'] as const;

/** Name and type of every metric family a real Metrics registers (pgtenant_* and prom-client's defaults). */
let defined: Map<string, string>;
beforeAll(async () => {
  const metrics = new Metrics({ tenantLimit: 10 });
  defined = new Map((await metrics.registry.getMetricsAsJSON()).map((m) => [m.name, String(m.type)]));
});

/** The family a series name belongs to: histogram and summary series carry a suffix the family name lacks. */
function family(series: string): string {
  for (const suffix of SERIES_SUFFIXES) {
    const base = series.slice(0, -suffix.length);
    if (series.endsWith(suffix) && ['histogram', 'summary'].includes(defined.get(base) ?? '')) return base;
  }
  return series;
}

describe('grafana dashboard', () => {
  it('is an importable Grafana 10/11 dashboard with a Prometheus datasource input', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
    expect(dashboard.title).toBeTruthy();
    expect(dashboard.__inputs).toContainEqual(expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }));
    // Each panel, target and variable must point at the input, or import leaves it bound to a datasource that does not exist.
    const refs = [
      ...panels.map((p) => p.datasource),
      ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.datasource)),
      ...dashboard.templating.list.filter((v) => v.type === 'query').map((v) => v.datasource),
    ];
    for (const ref of refs) expect(ref).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
  });

  it('gives every panel a title and at least one query, with unique ids and refIds', () => {
    expect(panels.length).toBeGreaterThan(10);
    for (const p of panels) {
      expect(p.title, JSON.stringify(p).slice(0, 80)).toMatch(/\S/);
      expect(p.targets?.length ?? 0, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) expect(t.expr, p.title).toMatch(/\S/);
      const refIds = (p.targets ?? []).map((t) => t.refId);
      expect(new Set(refIds).size, p.title).toBe(refIds.length);
    }
    const ids = queryPanels(dashboard.panels).map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('has a multi-select tenant variable with All, from label_values(pgtenant_client_connections, tenant)', () => {
    const tenant = dashboard.templating.list.find((v) => v.name === 'tenant');
    expect(tenant).toMatchObject({ type: 'query', multi: true, includeAll: true });
    expect(tenant?.definition).toBe('label_values(pgtenant_client_connections, tenant)');
    // The variable lists tenants connected now; All must still match tenants whose counters outlive their connections.
    expect(tenant?.allValue).toBe('.*');
    expect(exprs.filter((e) => e.expr.includes('tenant=~"$tenant"')).length).toBeGreaterThan(5);
  });

  it('covers the panels the operators asked for', () => {
    const used = new Set(exprs.flatMap((e) => e.expr.match(METRIC_NAME) ?? []));
    for (const name of [
      'pgtenant_client_connections',
      'pgtenant_server_connections',
      'pgtenant_sessions_started_total',
      'pgtenant_sessions_refused_total',
      'pgtenant_queries_total',
      'pgtenant_transactions_total',
      'pgtenant_client_received_bytes_total',
      'pgtenant_client_sent_bytes_total',
      'pgtenant_backend_connect_duration_seconds_bucket',
      'pgtenant_migration_jobs_running',
      'pgtenant_migration_pending_tenants',
      'pgtenant_migration_tenants_total',
      'pgtenant_admin_requests_total',
    ]) {
      expect(used, name).toContain(name);
    }
    for (const q of ['0.5', '0.95', '0.99']) {
      expect(exprs.some((e) => e.expr.startsWith(`histogram_quantile(${q},`)), `p${q}`).toBe(true);
    }
  });

  it('uses only metric names the code exports', () => {
    expect(defined.size).toBeGreaterThan(20);
    const missing: string[] = [];
    for (const { panel, expr } of [...exprs, ...variableQueries]) {
      const names = expr.match(METRIC_NAME) ?? [];
      expect(names.length, `${panel}: ${expr}`).toBeGreaterThan(0);
      for (const name of names) {
        const base = family(name);
        if (!defined.has(base)) missing.push(`${panel}: ${name}`);
        // A histogram has no series under its bare family name: such a query would show "No data" forever.
        else if (base === name && ['histogram', 'summary'].includes(defined.get(base)!)) missing.push(`${panel}: ${name} (needs _bucket/_count/_sum)`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('applies rate() only to counters and histogram series, never to gauges', () => {
    const RATED = /\b(?:rate|irate|increase)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)/g;
    const wrong: string[] = [];
    let rated = 0;
    for (const { panel, expr } of exprs) {
      for (const m of expr.matchAll(RATED)) {
        rated++;
        const name = m[1]!;
        const base = family(name);
        const type = defined.get(base);
        if (!(type === 'counter' || (base !== name && type === 'histogram'))) wrong.push(`${panel}: ${name} (${type})`);
      }
    }
    expect(rated).toBeGreaterThan(5);
    expect(wrong).toEqual([]);
  });

  it('reads counters and histogram series only through rate(), as their raw values only ever grow', () => {
    const bare: string[] = [];
    for (const { panel, expr } of exprs) {
      for (const m of expr.matchAll(METRIC_NAME)) {
        const name = m[0];
        const cumulative = defined.get(family(name)) === 'counter' || name !== family(name);
        if (!cumulative) continue;
        const before = expr.slice(0, m.index);
        if (!/(?:rate|irate|increase)\(\s*$/.test(before)) bare.push(`${panel}: ${name}`);
      }
    }
    expect(bare).toEqual([]);
  });
});
