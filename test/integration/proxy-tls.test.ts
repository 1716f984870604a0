// Client TLS on the proxy: SSLRequest upgrades with a certificate, --client-tls require refuses plaintext, pipelined bytes are refused.
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uniqueTenantId } from '../support/db.js';
import {
  SSL_REQUEST,
  cancelRequest,
  connectPg,
  errorFields,
  hasBinary,
  parseMessages,
  proxyFixture,
  rawExchange,
  rejection,
  requestPacket,
  run,
  startupMessage,
  titleNeeding,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'tls-password-123';
const haveOpenssl = hasBinary('openssl');
let fx: ProxyFixture;
let tenant: string;
let certDir: string;
let allow: TestProxy;
let require_: TestProxy;

/** The socket a pg client talks over (replaced by a TLSSocket after an SSLRequest). */
const streamOf = (c: pg.Client): net.Socket => (c as unknown as { connection: { stream: net.Socket } }).connection.stream;

describe.runIf(haveOpenssl)(titleNeeding('client TLS', 'openssl'), () => {
  beforeAll(async () => {
    certDir = await mkdtemp(path.join(tmpdir(), 'pgtenant-tls-'));
    const [cert, key] = [path.join(certDir, 'cert.pem'), path.join(certDir, 'key.pem')];
    const gen = await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', key, '-out', cert]);
    expect(gen.code, gen.stderr).toBe(0);
    fx = await proxyFixture('role');
    tenant = uniqueTenantId('tls');
    await fx.tenants.create(tenant, { password: PASSWORD });
    allow = await fx.startProxy({ tlsCert: cert, tlsKey: key });
    require_ = await fx.startProxy({ tlsCert: cert, tlsKey: key, clientTls: 'require' });
  });

  afterAll(async () => {
    await fx?.close();
    if (certDir) await rm(certDir, { recursive: true, force: true });
  });

  const tlsClient = (p: TestProxy) => connectPg({ ...p.clientConfig(tenant, PASSWORD), ssl: { rejectUnauthorized: false } });
  const plainClient = (p: TestProxy) => connectPg({ ...p.clientConfig(tenant, PASSWORD), ssl: false });

  it('answers SSLRequest with S', async () => {
    const reply = await rawExchange(allow.port, [requestPacket(SSL_REQUEST)], { waitMs: 1000, until: (d) => d.length >= 1 });
    expect(reply.data.toString('latin1')).toBe('S');
  });

  it('pg with ssl connects over TLS, with the configured certificate, and queries', async () => {
    const c = await tlsClient(allow);
    try {
      const stream = streamOf(c);
      expect(stream).toBeInstanceOf(tls.TLSSocket);
      expect((stream as tls.TLSSocket).encrypted).toBe(true);
      expect((stream as tls.TLSSocket).getPeerCertificate().subject?.CN).toBe('localhost');
      expect((await c.query('SELECT current_user AS u, current_schema() AS s')).rows).toEqual([{ u: tenant, s: tenant }]);
      // Enough data to cross several TLS records in both directions.
      const { rows } = await c.query("SELECT repeat('x', 200000) AS big");
      expect(rows[0].big.length).toBe(200000);
    } finally {
      await c.end();
    }
  });

  it('postgres.js with ssl connects and queries', async () => {
    const sql = postgres(allow.url(tenant, PASSWORD), { max: 1, ssl: { rejectUnauthorized: false }, connect_timeout: 5 });
    try {
      expect([...(await sql`SELECT current_user AS u`)]).toEqual([{ u: tenant }]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it('plaintext clients still get in when TLS is allowed but not required', async () => {
    const c = await plainClient(allow);
    expect(streamOf(c)).not.toBeInstanceOf(tls.TLSSocket);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
  });

  it('--client-tls require refuses a plaintext client with 28000 and a message naming TLS, and lets a TLS client in', async () => {
    const err = await rejection(plainClient(require_));
    expect(err.code).toBe('28000');
    expect(err.message).toMatch(/TLS|SSL/);
    const c = await tlsClient(require_);
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    await c.end();
  });

  it('refuses bytes pipelined after SSLRequest in the same write, never answering S', async () => {
    const packet = Buffer.concat([requestPacket(SSL_REQUEST), startupMessage({ user: tenant, database: fx.db.name })]);
    const reply = await rawExchange(allow.port, [packet], { waitMs: 3000 });
    expect(reply.closed).toBe(true);
    expect(reply.data[0]).not.toBe(0x53);
    if (reply.data.length > 0) {
      const { messages, rest } = parseMessages(reply.data);
      expect(rest.length).toBe(0);
      expect(messages.map((m) => m.type)).toEqual(['E']);
      expect(errorFields(messages[0]!.body).C).toBe('08P01');
    }
    const c = await tlsClient(allow);
    await c.end();
  });

  /** Opens a raw connection, sends SSLRequest, and completes the TLS handshake on it. */
  async function rawTls(p: TestProxy): Promise<tls.TLSSocket> {
    const socket = net.connect({ host: '127.0.0.1', port: p.port });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    socket.write(requestPacket(SSL_REQUEST));
    const answer = await new Promise<Buffer>((resolve) => socket.once('data', resolve));
    expect(answer.toString('latin1')).toBe('S');
    const secure = tls.connect({ socket, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
    return secure;
  }

  /** Everything that arrives on the socket until it closes (or 3 s pass). */
  function drain(s: net.Socket): Promise<{ data: Buffer; closed: boolean }> {
    const chunks: Buffer[] = [];
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ data: Buffer.concat(chunks), closed: false }), 3000);
      s.on('data', (d: Buffer) => chunks.push(d));
      s.on('error', () => undefined);
      s.once('close', () => {
        clearTimeout(timer);
        resolve({ data: Buffer.concat(chunks), closed: true });
      });
    });
  }

  it('a second SSLRequest inside TLS is a protocol violation (08P01)', async () => {
    const secure = await rawTls(allow);
    const reply = drain(secure);
    secure.write(requestPacket(SSL_REQUEST));
    const { data, closed } = await reply;
    secure.destroy();
    expect(closed).toBe(true);
    const { messages } = parseMessages(data);
    expect(messages.map((m) => m.type)).toEqual(['E']);
    expect(errorFields(messages[0]!.body).C).toBe('08P01');
  });

  it('a startup inside TLS gets its password challenge', async () => {
    const secure = await rawTls(require_);
    const first = new Promise<Buffer>((resolve) => secure.once('data', resolve));
    secure.write(startupMessage({ user: tenant, database: fx.db.name }));
    const { messages } = parseMessages(await first);
    secure.destroy();
    expect(messages[0]?.type).toBe('R');
    expect(messages[0]?.body.readInt32BE(0)).toBe(10);
  });

  /** The SASL mechanisms of the first challenge a raw TLS startup as `user` gets. */
  async function mechanismsOffered(user: string): Promise<string[]> {
    const secure = await rawTls(allow);
    const first = new Promise<Buffer>((resolve) => secure.once('data', resolve));
    secure.write(startupMessage({ user, database: fx.db.name }));
    const { messages } = parseMessages(await first);
    secure.destroy();
    expect(messages[0]?.body.readInt32BE(0)).toBe(10);
    return messages[0]!.body.subarray(4).toString('utf8').split('\0').filter(Boolean);
  }

  it('offers SCRAM-SHA-256-PLUS inside TLS, to known and unknown tenants alike', async () => {
    expect(await mechanismsOffered(tenant)).toEqual(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
    expect(await mechanismsOffered(uniqueTenantId('nobody'))).toEqual(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
  });

  it('pg with enableChannelBinding binds to the proxy\'s certificate (SCRAM-SHA-256-PLUS) and logs in', async () => {
    const c = await connectPg({ ...allow.clientConfig(tenant, PASSWORD), ssl: { rejectUnauthorized: false }, enableChannelBinding: true } as pg.ClientConfig);
    try {
      expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
    } finally {
      await c.end();
    }
    // And a wrong password over -PLUS is still a wrong password.
    const err = await rejection(connectPg({ ...allow.clientConfig(tenant, 'wrong-password-00'), ssl: { rejectUnauthorized: false }, enableChannelBinding: true } as pg.ClientConfig));
    expect(err.code).toBe('28P01');
  });

  it('a CancelRequest sent inside TLS cancels the query of a TLS session', async () => {
    const c = await tlsClient(allow);
    try {
      const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
      const query = c.query('SELECT pg_catalog.pg_sleep(30)').then(
        () => null,
        (e: { code?: string }) => e.code,
      );
      // The cancel must not arrive before the query runs.
      for (let i = 0; i < 100; i++) {
        const { rows } = await fx.admin.query(
          "SELECT 1 FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND state = 'active' AND query LIKE '%pg_sleep(30)%'",
          [tenant],
        );
        if (rows.length > 0) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      const secure = await rawTls(allow);
      const closed = drain(secure);
      secure.write(cancelRequest(processID, secretKey));
      expect((await closed).data.length).toBe(0);
      expect(await Promise.race([query, new Promise((r) => setTimeout(() => r('still running'), 2000))])).toBe('57014');
    } finally {
      await c.end();
    }
  });

  it('a client that answers S with garbage instead of a TLS handshake is dropped, and others still connect', async () => {
    const reply = await rawExchange(allow.port, [requestPacket(SSL_REQUEST), Buffer.from('this is not a TLS ClientHello at all\r\n')], {
      gapMs: 100,
      waitMs: 3000,
    });
    expect(reply.data.subarray(0, 1).toString('latin1')).toBe('S');
    expect(reply.closed).toBe(true);
    const c = await tlsClient(allow);
    await c.end();
  });

  describe.runIf(hasBinary('psql'))(titleNeeding('psql', 'psql'), () => {
    it('sslmode=require connects over TLS', async () => {
      const r = await run('psql', ['-X', '-A', '-t', '-d', require_.url(tenant, PASSWORD, { sslmode: 'require' }), '-c', 'SELECT current_user', '-c', '\\conninfo']);
      expect(r.stderr).toBe('');
      expect(r.stdout).toContain(tenant);
      expect(r.stdout).toMatch(/SSL connection/);
    });

    it('channel_binding=require logs in over TLS (libpq checks the binding to the proxy\'s certificate)', async () => {
      const r = await run('psql', ['-X', '-A', '-t', '-d', allow.url(tenant, PASSWORD, { sslmode: 'require', channel_binding: 'require' }), '-c', 'SELECT current_user']);
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe(tenant);
    });

    it('sslmode=disable against --client-tls require fails with a message naming TLS', async () => {
      const r = await run('psql', ['-X', '-d', require_.url(tenant, PASSWORD, { sslmode: 'disable' }), '-c', 'SELECT 1']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/requires TLS|sslmode=require/);
    });
  });
});
