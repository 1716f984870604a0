// TLS on the upstream leg (sslmode from the upstream URL), alone and together with client TLS, on a private server with ssl = on.
import { chmod, chown, copyFile, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../src/embedded-postgres.js';
import { silentLogger } from '../../src/logger.js';
import { startProxy, type ProxyServer } from '../../src/proxy/server.js';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { TenantService } from '../../src/tenants/service.js';
import { uniqueTenantId } from '../support/db.js';
import { connectPg, hasBinary, rejection, run, sleep, titleNeeding } from '../support/proxy.js';

const PASSWORD = 'upstream-tls-pw-1';
let dir: string;
let server: EmbeddedPostgres | undefined;
let admin: pg.Pool;
let tenant: string;
const proxies: ProxyServer[] = [];
let cert: string;
let key: string;

/** The shared test server has ssl off and other files rely on that, so this file runs its own server. */
async function serverWithSsl(): Promise<EmbeddedPostgres> {
  const s = await startEmbeddedPostgres({ dataDir: path.join(dir, 'data'), persistent: false });
  const dataDir = path.join(dir, 'data');
  const owner = await stat(dataDir);
  for (const [from, to] of [[cert, 'server.crt'], [key, 'server.key']] as const) {
    const target = path.join(dataDir, to);
    await copyFile(from, target);
    // The server (user postgres when we are root) must own its key, readable by it alone.
    await chown(target, owner.uid, owner.gid);
    await chmod(target, 0o600);
  }
  const c = new pg.Client({ connectionString: s.url });
  await c.connect();
  await c.query('ALTER SYSTEM SET ssl = on');
  await c.query('SELECT pg_catalog.pg_reload_conf()');
  await c.end();
  for (let i = 0; i < 50; i++) {
    const probe = new pg.Client({ connectionString: s.url });
    await probe.connect();
    const { rows } = await probe.query('SHOW ssl');
    await probe.end();
    if (rows[0].ssl === 'on') return s;
    await sleep(100);
  }
  throw new Error('ssl did not come on after reload');
}

async function proxyTo(sslmode: string | null, clientTls: boolean, auth: 'proxy' | 'relay' = 'proxy'): Promise<ProxyServer> {
  const upstream = sslmode ? `${server!.url}?sslmode=${sslmode}` : server!.url;
  const config = resolveConfig({
    flags: { upstream, listen: '127.0.0.1:0', adminListen: 'off', auth, ...(clientTls ? { tlsCert: cert, tlsKey: key } : {}) },
    env: {},
  });
  // The directory reads the control schema with pg, whose sslmode handling differs from libpq's: keep it plaintext.
  const directory = {
    lookup: async (id: string) => (await new TenantService(admin, { isolation: 'role' }).get(id).catch(() => null)),
    roleSecret: async (role: string) =>
      (await admin.query('SELECT secret, valid_until AS "validUntil", can_login AS "canLogin" FROM pgtenant.role_secret($1)', [role])).rows[0] ?? null,
  };
  const p = await startProxy({ config, log: silentLogger, tenants: directory });
  proxies.push(p);
  return p;
}

const cfg = (p: ProxyServer, extra: Partial<pg.ClientConfig> = {}): pg.ClientConfig => ({
  host: '127.0.0.1',
  port: p.address.port,
  user: tenant,
  password: PASSWORD,
  database: 'postgres',
  connectionTimeoutMillis: 5000,
  ...extra,
});

const backendSsl = async (c: pg.Client): Promise<boolean> =>
  (await c.query('SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()')).rows[0].ssl;

describe.runIf(hasBinary('openssl'))(titleNeeding('upstream TLS', 'openssl'), () => {
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'pgtenant-upstream-tls-'));
    await chmod(dir, 0o755);
    [cert, key] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')];
    const gen = await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', key, '-out', cert]);
    expect(gen.code, gen.stderr).toBe(0);
    server = await serverWithSsl();
    admin = new pg.Pool({ connectionString: server.url, max: 2 });
    // The server stops in afterAll while a pooled connection may still be closing.
    admin.on('error', () => undefined);
    const c = await admin.connect();
    await installControlSchema(c);
    c.release();
    tenant = uniqueTenantId('utls');
    await new TenantService(admin, { isolation: 'role' }).create(tenant, { password: PASSWORD });
  });

  afterAll(async () => {
    await Promise.allSettled(proxies.map((p) => p.close(0)));
    await admin?.end().catch(() => undefined);
    await server?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('sslmode=prefer (the default) encrypts the upstream leg when the server offers TLS', async () => {
    const p = await proxyTo(null, false);
    const c = await connectPg(cfg(p));
    expect(await backendSsl(c)).toBe(true);
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    await c.end();
  });

  it('sslmode=disable keeps the upstream leg plaintext', async () => {
    const p = await proxyTo('disable', false);
    const c = await connectPg(cfg(p));
    expect(await backendSsl(c)).toBe(false);
    await c.end();
  });

  it('sslmode=verify-full against an untrusted certificate refuses with a clear 08006', async () => {
    const p = await proxyTo('verify-full', false);
    const err = await rejection(connectPg(cfg(p)));
    expect(err.code).toBe('08006');
    expect(err.message).toMatch(/TLS|certificate/i);
  });

  describe('TLS on both legs', () => {
    let p: ProxyServer;
    let relayed: ProxyServer;
    beforeAll(async () => {
      p = await proxyTo('require', true);
      relayed = await proxyTo('require', true, 'relay');
    });

    it('pg over TLS without channel binding logs in', async () => {
      const c = await connectPg(cfg(p, { ssl: { rejectUnauthorized: false } }));
      expect(await backendSsl(c)).toBe(true);
      await c.end();
    });

    // The proxy is the SCRAM server: the client binds to the proxy's own certificate (-PLUS), whatever the upstream leg.
    it('pg over TLS with channel binding logs in with proxy-side authentication, TLS on both legs', async () => {
      const c = await connectPg(cfg(p, { ssl: { rejectUnauthorized: false }, enableChannelBinding: true } as pg.ClientConfig));
      expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
      await c.end();
    });

    // Relayed SCRAM cannot carry channel binding across two TLS sessions (the client's proof covers its
    // "y" flag, and the server, which offered -PLUS, reads it as a downgrade): the client is told what to do.
    it('with --auth relay, pg over TLS that supports channel binding gets 0A000 with a hint', async () => {
      const err = await rejection(connectPg(cfg(relayed, { ssl: { rejectUnauthorized: false }, enableChannelBinding: true } as pg.ClientConfig)));
      expect(err.code).toBe('0A000');
      expect(err.message).toMatch(/channel binding/);
    });

    it.runIf(hasBinary('psql'))(titleNeeding('psql with sslmode=require logs in; with --auth relay channel_binding=prefer is told to disable it', 'psql'), async () => {
      const url = (q: ProxyServer) => `postgres://${tenant}:${PASSWORD}@127.0.0.1:${q.address.port}/postgres?sslmode=require`;
      const direct = await run('psql', ['-X', '-A', '-t', '-d', url(p), '-c', 'SELECT current_user']);
      expect(direct.stderr).toBe('');
      expect(direct.stdout.trim()).toBe(tenant);
      const refused = await run('psql', ['-X', '-A', '-t', '-d', url(relayed), '-c', 'SELECT current_user']);
      expect(refused.stderr).toMatch(/channel binding.*\n.*HINT:.*channel_binding=disable/s);
      const r = await run('psql', ['-X', '-A', '-t', '-d', `${url(relayed)}&channel_binding=disable`, '-c', 'SELECT current_user']);
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe(tenant);
    });
  });
});
