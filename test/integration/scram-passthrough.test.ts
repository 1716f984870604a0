// SCRAM pass-through against a real PostgreSQL: logging in as a role with only the ClientKey recovered from a client's proof.
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ScramClientExchange,
  ScramServerExchange,
  isMd5Secret,
  md5Response,
  parseScramSecret,
  verifyMd5Response,
  type ScramKeys,
  type ScramSecret,
} from '../../src/proxy/auth/scram.js';
import { PgError } from '../../src/proxy/errors.js';
import { scramVerifier } from '../../src/tenants/scram.js';
import { freshDatabase, uniqueTenantId, withClient, type TestDatabase } from '../support/db.js';
import { errorFields, parseMessages, startupMessage, type BackendMessage } from '../support/proxy.js';

// Authentication request codes (the Int32 after 'R').
const AUTH_OK = 0;
const AUTH_MD5 = 5;
const AUTH_SASL = 10;
const AUTH_SASL_CONTINUE = 11;
const AUTH_SASL_FINAL = 12;

let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db?.drop();
});

/** Creates a login role with that password, stored with the given method; returns its name and rolpassword. */
async function createRole(password: string, encryption: 'scram-sha-256' | 'md5'): Promise<{ role: string; rolpassword: string }> {
  const role = uniqueTenantId('scram');
  return withClient(db.url, async (c) => {
    await c.query(`SET password_encryption = '${encryption}'`);
    await c.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`);
    const { rows } = await c.query<{ rolpassword: string }>('SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1', [role]);
    return { role, rolpassword: rows[0]!.rolpassword };
  });
}

/**
 * What the proxy will do when a client connects: act as the SCRAM server towards a client that knows the
 * password (computed here from RFC 5802), and keep the keys the exchange yields.
 */
function keysFromClientLogin(secret: ScramSecret, password: string): ScramKeys {
  const hmac = (key: Buffer, text: string) => createHmac('sha256', key).update(text).digest();
  const bare = `n=,r=${randomBytes(18).toString('base64')}`;
  const server = new ScramServerExchange(secret);
  const serverFirst = server.serverFirst(Buffer.from(`n,,${bare}`)).toString('utf8');
  const attrs = Object.fromEntries(serverFirst.split(',').map((p) => [p[0], p.slice(2)]));
  const salted = pbkdf2Sync(password, Buffer.from(attrs.s!, 'base64'), Number(attrs.i), 32, 'sha256');
  const clientKey = hmac(salted, 'Client Key');
  const withoutProof = `c=biws,r=${attrs.r}`;
  const signature = hmac(createHash('sha256').update(clientKey).digest(), `${bare},${serverFirst},${withoutProof}`);
  const proof = Buffer.from(clientKey.map((x, i) => x ^ signature[i]!));
  const result = server.clientFinal(Buffer.from(`${withoutProof},p=${proof.toString('base64')}`));
  expect(result, 'the proxy-side exchange accepts the right password').not.toBeNull();
  return result!.keys;
}

interface RawConnection {
  send(type: string, body: Buffer): void;
  next(): Promise<BackendMessage>;
  close(): void;
}

/** A plain socket to the test server (no TLS) that sends a StartupMessage and reads typed messages. */
async function connectRaw(user: string): Promise<RawConnection> {
  const u = new URL(db.url);
  const socket = net.connect({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 5432) });
  await once(socket, 'connect');
  let buffered = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | null = null;
  socket.on('data', (d: Buffer) => {
    buffered = Buffer.concat([buffered, d]);
    wake?.();
  });
  socket.on('close', () => {
    closed = true;
    wake?.();
  });
  socket.on('error', () => undefined);
  socket.write(startupMessage({ user, database: db.name }));
  return {
    send(type, body) {
      const head = Buffer.alloc(5);
      head.write(type, 0, 'latin1');
      head.writeInt32BE(4 + body.length, 1);
      socket.write(Buffer.concat([head, body]));
    },
    async next() {
      for (;;) {
        const m = parseMessages(buffered).messages[0];
        if (m) {
          buffered = buffered.subarray(5 + m.body.length);
          if (m.type !== 'N') return m; // a NoticeResponse changes nothing here
          continue;
        }
        if (closed) throw new Error('the server closed the connection');
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no message from the server within 10 s')), 10_000);
          wake = () => {
            clearTimeout(timer);
            wake = null;
            resolve();
          };
        });
      }
    },
    close: () => socket.destroy(),
  };
}

const authCode = (m: BackendMessage): number => {
  expect(m.type, m.type === 'E' ? JSON.stringify(errorFields(m.body)) : m.type).toBe('R');
  return m.body.readInt32BE(0);
};

/** SASLInitialResponse: mechanism, then the length-prefixed client-first-message. */
function saslInitialResponse(mechanism: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeInt32BE(data.length);
  return Buffer.concat([Buffer.from(`${mechanism}\0`), length, data]);
}

type LoginOutcome = { ok: true } | { ok: false; fields: Record<string, string> };

/** Logs in as `role` with the recovered keys only; resolves with AuthenticationOk or the server's error. */
async function loginWithKeys(role: string, keys: ScramKeys): Promise<LoginOutcome> {
  const conn = await connectRaw(role);
  try {
    const request = await conn.next();
    expect(authCode(request)).toBe(AUTH_SASL);
    const mechanisms = request.body.subarray(4).toString('utf8').split('\0').filter(Boolean);
    expect(mechanisms).toContain('SCRAM-SHA-256');

    const scram = new ScramClientExchange(keys);
    conn.send('p', saslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
    const cont = await conn.next();
    expect(authCode(cont)).toBe(AUTH_SASL_CONTINUE);
    conn.send('p', scram.clientFinal(cont.body.subarray(4)));

    const final = await conn.next();
    if (final.type === 'E') return { ok: false, fields: errorFields(final.body) };
    expect(authCode(final)).toBe(AUTH_SASL_FINAL);
    scram.verifyServerFinal(final.body.subarray(4));
    const ok = await conn.next();
    expect(authCode(ok)).toBe(AUTH_OK);
    // The session is really usable: the server goes on to ReadyForQuery.
    let m = ok;
    while (m.type !== 'Z') m = await conn.next();
    return { ok: true };
  } finally {
    conn.close();
  }
}

describe('SCRAM pass-through to a real PostgreSQL', () => {
  it('logs in as the role with only the ClientKey recovered from a client proof', async () => {
    const { role, rolpassword } = await createRole('s3cret pass', 'scram-sha-256');
    const secret = parseScramSecret(rolpassword);
    expect(secret, rolpassword.slice(0, 20)).not.toBeNull();
    const keys = keysFromClientLogin(secret!, 's3cret pass');
    expect(await loginWithKeys(role, keys)).toEqual({ ok: true });
    // Twice, since a pool opens several backends from one client login.
    expect(await loginWithKeys(role, keys)).toEqual({ ok: true });
  });

  it('stops when the password changed since the keys were recovered (new salt)', async () => {
    const { role, rolpassword } = await createRole('before', 'scram-sha-256');
    const keys = keysFromClientLogin(parseScramSecret(rolpassword)!, 'before');
    await withClient(db.url, (c) => c.query(`SET password_encryption = 'scram-sha-256'; ALTER ROLE ${role} PASSWORD 'after'`));
    const err = await loginWithKeys(role, keys).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PgError);
    expect((err as PgError).code).toBe('08006');
    expect((err as PgError).message).toMatch(/changed/);
  });

  it('is refused by the server with 28P01 when the password changed but kept its salt and iterations', async () => {
    const { role, rolpassword } = await createRole('before', 'scram-sha-256');
    const secret = parseScramSecret(rolpassword)!;
    const keys = keysFromClientLogin(secret, 'before');
    // Only a hand-made verifier can keep the salt: the server picks a new one for each PASSWORD.
    const sameSalt = scramVerifier('after', secret.iterations, secret.salt);
    await withClient(db.url, (c) => c.query(`ALTER ROLE ${role} PASSWORD '${sameSalt}'`));
    const outcome = await loginWithKeys(role, keys);
    expect(outcome.ok).toBe(false);
    expect(!outcome.ok && outcome.fields.C).toBe('28P01');
  });
});

describe('MD5 secrets from a real PostgreSQL', () => {
  it('are stored as md5(password || role name), which md5Response builds on', async () => {
    const { role, rolpassword } = await createRole('md5 pass', 'md5');
    expect(isMd5Secret(rolpassword)).toBe(true);
    expect(rolpassword).toBe('md5' + createHash('md5').update('md5 pass' + role).digest('hex'));
    // A client's reply, computed as libpq does from the password, checks out against the stored secret.
    const salt = randomBytes(4);
    const inner = createHash('md5').update('md5 pass' + role).digest('hex');
    const reply = 'md5' + createHash('md5').update(Buffer.concat([Buffer.from(inner), salt])).digest('hex');
    expect(verifyMd5Response(rolpassword, salt, reply)).toBe(true);
  });

  it('log in with md5Response when the server asks for MD5', async (ctx) => {
    const { role, rolpassword } = await createRole('md5 pass', 'md5');
    const conn = await connectRaw(role);
    try {
      const request = await conn.next();
      // pg_hba decides: an 'md5' line asks md5 of a role with an MD5 secret; a 'scram-sha-256' line never does.
      if (request.type === 'R' && request.body.readInt32BE(0) === AUTH_SASL) {
        const methods = await withClient(db.url, (c) =>
          c.query<{ auth_method: string }>('SELECT DISTINCT auth_method FROM pg_catalog.pg_hba_file_rules'),
        );
        ctx.skip(`the test server's pg_hba uses ${methods.rows.map((r) => r.auth_method).join(', ')}, not md5`);
      }
      expect(authCode(request)).toBe(AUTH_MD5);
      conn.send('p', Buffer.from(md5Response(rolpassword, request.body.subarray(4, 8)) + '\0'));
      expect(authCode(await conn.next())).toBe(AUTH_OK);
    } finally {
      conn.close();
    }
  });
});
