// `pgtenant proxy` processes and signals: SIGTERM drains, a second SIGTERM or SIGINT exits at once, SIGHUP reloads the configuration and the TLS certificate without dropping sessions.
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TenantService } from '../../src/tenants/service.js';
import { uniqueTenantId, type TestDatabase } from '../support/db.js';
import { Cli } from '../support/cli-process.js';
import { connectPg, hasBinary, initializedDatabase, rejection, run, sessionEnd, tcpConnect, titleNeeding } from '../support/proxy.js';

const PASSWORD = 'signals-password-1';
let db: TestDatabase;
let admin: pg.Pool;
let tenant: string;
let dir: string;
const spawned: Cli[] = [];
const clients: pg.Client[] = [];

beforeAll(async () => {
  ({ db, admin } = await initializedDatabase());
  tenant = uniqueTenantId('sig');
  await new TenantService(admin, { isolation: 'role', migrationsDir: null }).create(tenant, { password: PASSWORD });
  dir = await mkdtemp(path.join(tmpdir(), 'pgtenant-signals-'));
});

afterAll(async () => {
  await Promise.allSettled(clients.map((c) => c.end()));
  await Promise.all(spawned.map((p) => p.kill()));
  await admin?.end();
  await db?.drop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A proxy process with `options` in a --config file (rewritten by tests to reload), its port once it listens. */
async function startProxy(options: Record<string, unknown>, file = path.join(dir, `${uniqueTenantId('cfg')}.json`)): Promise<{ cli: Cli; port: number; file: string }> {
  await writeFile(file, JSON.stringify(options));
  const cli = new Cli(['proxy', '--upstream', db.url, '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--config', file], file);
  spawned.push(cli);
  const listening = await cli.line((l) => l.msg === (options.workers ? 'proxy workers listening' : 'proxy listening'), "'proxy listening'");
  return { cli, port: Number(String(listening.listen).split(':').pop()), file };
}

async function connect(port: number, ssl?: pg.ClientConfig['ssl']): Promise<pg.Client> {
  const c = await connectPg({ host: '127.0.0.1', port, user: tenant, password: PASSWORD, database: db.name, connectionTimeoutMillis: 5000, ...(ssl ? { ssl } : {}) });
  clients.push(c);
  return c;
}

const one = async (c: pg.Client): Promise<number> => (await c.query('SELECT 1 AS one')).rows[0].one;

describe('SIGTERM', () => {
  it('stops accepting at once, lets an open session work during the grace period, then ends it with 57P01 and exits 0', async () => {
    const { cli, port } = await startProxy({ shutdownTimeout: 2500 });
    const c = await connect(port);
    const ended = sessionEnd(c, 15_000);
    cli.child.kill('SIGTERM');
    await cli.line((l) => l.msg === 'shutting down: no new connections', "'shutting down'");
    expect(await tcpConnect(port)).toBe('ECONNREFUSED');
    expect(await one(c)).toBe(1);
    const t0 = Date.now();
    const { error } = await ended;
    expect((error as { code?: string } | null)?.code).toBe('57P01');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(await cli.exited).toEqual({ code: 0, signal: null });
  });

  it.each(['SIGTERM', 'SIGINT'] as const)('a second stop signal (%s) during the drain exits at once with code 1', async (second) => {
    const { cli, port } = await startProxy({ shutdownTimeout: 60_000 });
    const c = await connect(port);
    const ended = sessionEnd(c, 15_000);
    cli.child.kill('SIGTERM');
    await cli.line((l) => String(l.msg).startsWith('stop requested'), "'stop requested'");
    expect(await one(c)).toBe(1);
    const t0 = Date.now();
    cli.child.kill(second);
    expect(await cli.exited).toEqual({ code: 1, signal: null });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(cli.lines.some((l) => String(l.msg).startsWith('second stop signal'))).toBe(true);
    await ended; // the client sees its connection close
  });
});

describe('SIGHUP', () => {
  it('reloads limits from the --config file for new sessions and keeps open ones; options that need a restart are named and kept', async () => {
    const { cli, port, file } = await startProxy({ maxTenantClients: 0, poolMode: 'session' });
    const held = [await connect(port), await connect(port)];
    await writeFile(file, JSON.stringify({ maxTenantClients: 1, poolMode: 'transaction' }));
    const from = cli.lines.length;
    cli.child.kill('SIGHUP');
    await cli.line((l) => l.msg === 'configuration reloaded', "'configuration reloaded'", from);
    const restart = await cli.line((l) => String(l.msg).startsWith('changed options that only a restart applies'), 'the restart warning', from);
    expect(restart.options).toEqual(['pool-mode']);
    const err = await rejection(connect(port));
    expect(err.code).toBe('53300');
    for (const c of held) expect(await one(c)).toBe(1);
  });

  it('a file that no longer parses is refused with a log line; the proxy goes on serving with what it had', async () => {
    const { cli, port, file } = await startProxy({ maxTenantClients: 0 });
    await writeFile(file, '{ not json');
    const from = cli.lines.length;
    cli.child.kill('SIGHUP');
    const failed = await cli.line((l) => String(l.msg).startsWith('reload failed'), "'reload failed'", from);
    expect(String(failed.err)).toContain('not valid JSON or YAML');
    const c = await connect(port);
    expect(await one(c)).toBe(1);
    expect(cli.exit).toBeNull();
  });

  it('with --workers 2, reaches every worker', async () => {
    const { cli, port, file } = await startProxy({ workers: 2, maxTenantClients: 0 });
    for (const slot of [0, 1]) await cli.line((l) => l.msg === 'proxy listening' && l.worker === slot, `worker ${slot} listening`);
    await writeFile(file, JSON.stringify({ workers: 2, maxTenantClients: 1 }));
    const from = cli.lines.length;
    cli.child.kill('SIGHUP');
    for (const slot of [0, 1]) await cli.line((l) => l.msg === 'configuration reloaded' && l.worker === slot, `worker ${slot} reloaded`, from);
    // The cap is split between the workers (1 of 1 each, rounded up): two sessions fit, one on each worker, a third does not.
    await connect(port);
    await connect(port);
    expect((await rejection(connect(port))).code).toBe('53300');
  });

  describe.runIf(hasBinary('openssl'))(titleNeeding('TLS certificate', 'openssl'), () => {
    async function makeCert(name: string): Promise<{ cert: string; key: string }> {
      const [cert, key] = [path.join(dir, `${name}.crt`), path.join(dir, `${name}.key`)];
      const gen = await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-days', '1', '-keyout', key, '-out', cert]);
      expect(gen.code, gen.stderr).toBe(0);
      return { cert, key };
    }

    /** The CN of the certificate the proxy presents to a new TLS client. */
    async function presented(port: number): Promise<string> {
      const c = await connect(port, { rejectUnauthorized: false });
      const socket = (c as unknown as { connection: { stream: tls.TLSSocket } }).connection.stream;
      const raw = socket.getPeerX509Certificate?.() as X509Certificate | undefined;
      return String(raw?.subject ?? '');
    }

    it('a new certificate in the same files serves new TLS sessions; a session on the old one keeps working', async () => {
      const a = await makeCert('cert-a');
      const b = await makeCert('cert-b');
      const live = { cert: path.join(dir, 'live.crt'), key: path.join(dir, 'live.key') };
      await copyFile(a.cert, live.cert);
      await copyFile(a.key, live.key);
      const { cli, port } = await startProxy({ tlsCert: live.cert, tlsKey: live.key });
      expect(await presented(port)).toContain('CN=cert-a');
      const old = clients[clients.length - 1]!;
      await copyFile(b.cert, live.cert);
      await copyFile(b.key, live.key);
      const from = cli.lines.length;
      cli.child.kill('SIGHUP');
      await cli.line((l) => l.msg === 'configuration reloaded', "'configuration reloaded'", from);
      expect(await presented(port)).toContain('CN=cert-b');
      expect(await one(old)).toBe(1);
    });
  });
});
