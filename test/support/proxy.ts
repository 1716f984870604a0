// Shared helpers for the proxy integration tests: a proxy on a fresh database, tenant URLs, raw sockets and reply parsing.
import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { resolveConfig } from '../../src/config.js';
import { silentLogger } from '../../src/logger.js';
import { startProxy, type ProxyServer } from '../../src/proxy/server.js';
import { installControlSchema } from '../../src/tenants/control-schema.js';
import { TenantService } from '../../src/tenants/service.js';
import { freshDatabase, uniqueTenantId, type TestDatabase } from './db.js';

/** True when an executable of that name is on the PATH. */
export function hasBinary(name: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    try {
      accessSync(path.join(dir, name), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/** A describe title that says why it was skipped, so the reporter prints the reason. */
export function titleNeeding(title: string, binary: string): string {
  return hasBinary(binary) ? title : `${title} (skipped: ${binary} is not on the PATH)`;
}

export interface TestProxy {
  readonly server: ProxyServer;
  readonly host: string;
  readonly port: number;
  /** Client URL through the proxy to the test database. */
  url(user: string, password: string, params?: Record<string, string>): string;
  /** pg client settings through the proxy to the test database. */
  clientConfig(user: string, password: string): pg.ClientConfig;
}

export interface ProxyFixture {
  readonly db: TestDatabase;
  /** Superuser pool on the test database. */
  readonly admin: pg.Pool;
  readonly tenants: TenantService;
  /** The superuser name and password from the test server URL (schema isolation logs in as it). */
  readonly superuser: { user: string; password: string };
  readonly proxies: TestProxy[];
  /** Creates a tenant with a unique id from `prefix` and returns the id. */
  newTenant(prefix: string, password: string): Promise<string>;
  startProxy(flags?: Record<string, unknown>): Promise<TestProxy>;
  close(): Promise<void>;
}

/** A fresh database with the control schema installed, and a superuser pool on it. */
export async function initializedDatabase(): Promise<{ db: TestDatabase; admin: pg.Pool }> {
  const db = await freshDatabase();
  const admin = new pg.Pool({ connectionString: db.url, max: 3 });
  admin.on('error', () => undefined);
  const c = await admin.connect();
  try {
    await installControlSchema(c);
  } finally {
    c.release();
  }
  return { db, admin };
}

/** A fresh database with the control schema installed, a tenant service, and proxies started on demand. */
export async function proxyFixture(isolation: 'role' | 'schema' = 'role'): Promise<ProxyFixture> {
  const { db, admin } = await initializedDatabase();
  const u = new URL(db.url);
  const proxies: TestProxy[] = [];
  const fixture: ProxyFixture = {
    db,
    admin,
    tenants: new TenantService(admin, { isolation, migrationsDir: null }),
    superuser: { user: decodeURIComponent(u.username), password: decodeURIComponent(u.password) },
    proxies,
    async newTenant(prefix, password) {
      const id = uniqueTenantId(prefix);
      await fixture.tenants.create(id, { password });
      return id;
    },
    async startProxy(flags = {}) {
      const config = resolveConfig({
        flags: { upstream: db.url, listen: '127.0.0.1:0', adminListen: 'off', isolation, ...flags },
        env: {},
      });
      const server = await startProxy({ config, log: silentLogger });
      const proxy = proxyHandle(server, db.name);
      proxies.push(proxy);
      return proxy;
    },
    async close() {
      await Promise.allSettled(proxies.map((p) => p.server.close(0)));
      await admin.end().catch(() => undefined);
      await db.drop();
    },
  };
  return fixture;
}

function proxyHandle(server: ProxyServer, database: string): TestProxy {
  const { host, port } = server.address;
  return {
    server,
    host,
    port,
    url(user, password, params = {}) {
      const u = new URL(`postgres://127.0.0.1:${port}/${encodeURIComponent(database)}`);
      u.username = encodeURIComponent(user);
      u.password = encodeURIComponent(password);
      for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
      return u.toString();
    },
    clientConfig(user, password) {
      return { host: '127.0.0.1', port, user, password, database, connectionTimeoutMillis: 5000 };
    },
  };
}

/** Connects a pg client, or rejects with the server's (here: the proxy's) error. */
export async function connectPg(config: pg.ClientConfig): Promise<pg.Client> {
  const client = new pg.Client(config);
  // An ErrorResponse while idle (shutdown, tenant suspended) arrives as an 'error' event: tests read it from there.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}

/** The error a promise rejects with, or a failure if it resolves. */
export async function rejection(p: Promise<unknown>): Promise<Error & { code?: string; severity?: string }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a rejection, but the promise resolved');
}

export interface RawReply {
  /** Every byte the proxy sent. */
  data: Buffer;
  /** The proxy closed the connection (rather than us timing out). */
  closed: boolean;
}

/**
 * Writes each chunk on a plain socket (with `gapMs` between them), then collects the reply until the
 * proxy closes or `waitMs` passes. `endAfterWrite` half-closes our side, as a client that gives up would.
 */
export function rawExchange(
  port: number,
  chunks: Buffer[],
  opts: { waitMs?: number; endAfterWrite?: boolean; gapMs?: number; until?: (data: Buffer) => boolean } = {},
): Promise<RawReply> {
  const { waitMs = 3000, endAfterWrite = false, gapMs = 0, until } = opts;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const received: Buffer[] = [];
    let settled = false;
    const finish = (closed: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ data: Buffer.concat(received), closed });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    socket.on('data', (d: Buffer) => {
      received.push(d);
      if (until?.(Buffer.concat(received))) finish(false);
    });
    socket.on('close', () => finish(true));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A reset after the proxy answered is still a close; a refused connection is a test failure.
      if (err.code === 'ECONNREFUSED') {
        settled = true;
        clearTimeout(timer);
        reject(err);
      }
    });
    socket.once('connect', async () => {
      for (const [i, chunk] of chunks.entries()) {
        if (i > 0 && gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
        if (socket.destroyed) return;
        socket.write(chunk);
      }
      if (endAfterWrite && !socket.destroyed) socket.end();
    });
  });
}

export interface BackendMessage {
  type: string;
  body: Buffer;
}

/** Splits server-side bytes into typed messages; a trailing partial message is returned as `rest`. */
export function parseMessages(data: Buffer): { messages: BackendMessage[]; rest: Buffer } {
  const messages: BackendMessage[] = [];
  let i = 0;
  while (data.length - i >= 5) {
    const length = data.readInt32BE(i + 1);
    if (length < 4 || data.length - i < 1 + length) break;
    messages.push({ type: String.fromCharCode(data[i]!), body: data.subarray(i + 5, i + 1 + length) });
    i += 1 + length;
  }
  return { messages, rest: data.subarray(i) };
}

/** Fields of an ErrorResponse or NoticeResponse body, by their one-letter codes. */
export function errorFields(body: Buffer): Record<string, string> {
  const fields: Record<string, string> = {};
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const code = String.fromCharCode(body[i]!);
    const end = body.indexOf(0, i + 1);
    if (end < 0) break;
    fields[code] = body.toString('utf8', i + 1, end);
    i = end + 1;
  }
  return fields;
}

/** A StartupMessage (protocol 3.0) with the given parameters. */
export function startupMessage(params: Record<string, string>): Buffer {
  const body = Buffer.concat([
    ...Object.entries(params).map(([k, v]) => Buffer.from(`${k}\0${v}\0`, 'utf8')),
    Buffer.from([0]),
  ]);
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + body.length, 0);
  head.writeInt32BE(196608, 4);
  return Buffer.concat([head, body]);
}

/** An 8-byte request packet (SSLRequest 80877103, GSSENCRequest 80877104). */
export function requestPacket(code: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32BE(8, 0);
  b.writeInt32BE(code, 4);
  return b;
}

export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;

/** A CancelRequest (protocol 3.0: 4-byte key). */
export function cancelRequest(processId: number, secretKey: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeInt32BE(16, 0);
  b.writeInt32BE(CANCEL_REQUEST, 4);
  b.writeInt32BE(processId | 0, 8);
  b.writeInt32BE(secretKey | 0, 12);
  return b;
}

/** Sends a CancelRequest to the proxy and waits until the proxy closes that connection. */
export async function sendCancel(port: number, processId: number, secretKey: number): Promise<RawReply> {
  return rawExchange(port, [cancelRequest(processId, secretKey)], { waitMs: 3000 });
}

/** The pg client's BackendKeyData (as issued by the proxy). */
export function backendKey(client: pg.Client): { processId: number; secretKey: number } {
  const c = client as unknown as { processID: number; secretKey: number };
  return { processId: c.processID, secretKey: c.secretKey };
}

export interface ProcessResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a binary (psql, pgbench, openssl) without a shell; never rejects on a non-zero exit. */
export function run(file: string, args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<ProcessResult> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { env: { ...process.env, PGCONNECT_TIMEOUT: '10', ...env }, timeout: timeoutMs, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves with the error code of a plain TCP connect (null when it connected). */
export function tcpConnect(port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(null);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
}

/** Resolves when the pg client reports an error or its connection ends; rejects after `ms`. */
export function sessionEnd(client: pg.Client, ms: number): Promise<{ error: (Error & { code?: string }) | null }> {
  return new Promise((resolve, reject) => {
    let error: (Error & { code?: string }) | null = null;
    const timer = setTimeout(() => reject(new Error(`session still open after ${ms} ms`)), ms);
    client.on('error', (err) => {
      error ??= err;
    });
    client.once('end', () => {
      clearTimeout(timer);
      resolve({ error });
    });
  });
}
