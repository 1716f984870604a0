// The proxy with its admin API on a fresh database, and a small HTTP client for it (real HTTP through fetch).
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import parsePrometheus from 'parse-prometheus-text-format';
import { resolveConfig } from '../../src/config.js';
import { silentLogger } from '../../src/logger.js';
import { startRuntime, type Runtime } from '../../src/runtime.js';
import { TenantService } from '../../src/tenants/service.js';
import type { TestDatabase } from './db.js';
import { initializedDatabase } from './proxy.js';

export interface HttpReply {
  status: number;
  headers: Headers;
  text: string;
  /** The parsed body when it is JSON, else undefined. */
  json: any;
}

export interface AdminFixture {
  readonly db: TestDatabase;
  /** Superuser pool on the test database. */
  readonly admin: pg.Pool;
  readonly tenants: TenantService;
  readonly runtime: Runtime;
  readonly token: string;
  /** http://127.0.0.1:PORT of the admin API. */
  readonly base: string;
  /** Sends a request with the fixture's token (unless `headers.authorization` is given, '' for none). */
  request(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<HttpReply>;
  /** GET /metrics: the text (checked to be a 200 in the exposition format) and its parsed samples. */
  scrape(): Promise<{ text: string; samples: Sample[] }>;
  /** Client URL through the proxy to the test database. */
  proxyUrl(user: string, password: string): string;
  close(): Promise<void>;
}

export interface AdminFixtureOptions {
  isolation?: 'role' | 'schema';
  migrationsDir?: string;
  /** More proxy flags (camelCase option names). */
  flags?: Record<string, unknown>;
}

export async function adminFixture(opts: AdminFixtureOptions = {}): Promise<AdminFixture> {
  const { db, admin } = await initializedDatabase();
  const isolation = opts.isolation ?? 'role';
  const token = randomBytes(16).toString('hex');
  const config = resolveConfig({
    flags: {
      upstream: db.url,
      listen: '127.0.0.1:0',
      adminListen: '127.0.0.1:0',
      adminToken: token,
      isolation,
      ...(opts.migrationsDir ? { migrationsDir: opts.migrationsDir } : {}),
      ...opts.flags,
    },
    env: {},
  });
  const runtime = await startRuntime({ config, log: silentLogger });
  const base = `http://127.0.0.1:${runtime.admin!.address.port}`;
  const proxyPort = runtime.proxy.address.port;
  const request: AdminFixture['request'] = async (method, path, body, headers = {}) => {
    const h: Record<string, string> = { authorization: `Bearer ${token}`, ...headers };
    if (h.authorization === '') delete h.authorization;
    let payload: string | undefined;
    if (body !== undefined) {
      payload = typeof body === 'string' ? body : JSON.stringify(body);
      h['content-type'] ??= 'application/json';
    }
    return fetchJson(base + path, { method, headers: h, ...(payload !== undefined ? { body: payload } : {}) });
  };
  return {
    db,
    admin,
    tenants: new TenantService(admin, { isolation, migrationsDir: opts.migrationsDir ?? null }),
    runtime,
    token,
    base,
    request,
    async scrape() {
      const r = await request('GET', '/metrics');
      if (r.status !== 200 || !/^text\/plain/.test(r.headers.get('content-type') ?? '')) {
        throw new Error(`GET /metrics answered ${r.status} (${r.headers.get('content-type')}): ${r.text.slice(0, 200)}`);
      }
      return { text: r.text, samples: parseMetrics(r.text) };
    },
    proxyUrl(user, password) {
      const u = new URL(`postgres://127.0.0.1:${proxyPort}/${encodeURIComponent(db.name)}`);
      u.username = encodeURIComponent(user);
      u.password = encodeURIComponent(password);
      return u.toString();
    },
    async close() {
      await runtime.close(0).catch(() => undefined);
      await admin.end().catch(() => undefined);
      await db.drop();
    },
  };
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text (throws on malformed input) into flat samples. */
export function parseMetrics(text: string): Sample[] {
  const families = parsePrometheus(text);
  const samples: Sample[] = [];
  for (const f of families) {
    for (const m of f.metrics) {
      const labels = m.labels ?? {};
      if (m.value !== undefined) samples.push({ name: f.name, labels, value: Number(m.value) });
      // Histograms come back as one object: spread them into the series the exposition has.
      for (const [le, v] of Object.entries(m.buckets ?? {})) samples.push({ name: `${f.name}_bucket`, labels: { ...labels, le }, value: Number(v) });
      if (m.count !== undefined) samples.push({ name: `${f.name}_count`, labels, value: Number(m.count) });
      if (m.sum !== undefined) samples.push({ name: `${f.name}_sum`, labels, value: Number(m.sum) });
    }
  }
  return samples;
}

/** The value of the one sample with this name whose labels include `labels`; 0 when there is none. */
export function sampleValue(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return found.reduce((sum, s) => sum + s.value, 0);
}

/** One HTTP request; the body as text, and as JSON when it parses. */
export async function fetchJson(url: string, init: RequestInit): Promise<{ status: number; headers: Headers; text: string; json: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}
