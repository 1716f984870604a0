// Live proxy fuzzing over raw TCP: hostile startup, password-phase, mid-login, SSLRequest and post-login bytes each get a documented SQLSTATE or a close within a bounded time, and good clients keep working throughout.
/*
 * PGTENANT_FUZZ_RUNS  multiplies every property's number of cases (default 1; e.g. 10 for a long run).
 * PGTENANT_FUZZ_SEED  the fast-check seed for every property (default: drawn once per run, printed in the
 *                     closing "fuzz: N cases" line; fast-check prints seed and path of a failure).
 *
 * What each phase may answer (everything else, a hang, or a crash fails the case):
 * - startup phase: 'N' for each SSLRequest/GSSENCRequest (no certificate), NegotiateProtocolVersion, the
 *   SASL challenge (R 10, R 11), then at most one FATAL ErrorResponse: 08P01 (lengths, layout, encoding,
 *   options), 0A000 (protocol version, replication), 28000 (no user); when a well-formed startup is followed
 *   by more bytes, these are the password phase's, so its codes too.
 * - password phase (after a valid StartupMessage for a real tenant): R 10 and R 11, then 08P01 (malformed or
 *   unexpected message), 28P01 (well formed but wrong proof) or 0A000 (SCRAM authzid or extension), as
 *   PostgreSQL answers. AuthenticationOk never comes.
 * - SSLRequest with pipelined bytes on a proxy with a certificate: one ErrorResponse 08P01 and never 'S'
 *   (CVE-2021-23214); without a certificate, 'N' and then the startup-phase rules for what follows.
 * - after login: whatever the server answers (any SQLSTATE, severity ERROR or FATAL) as whole messages, or
 *   the proxy's 08P01 for a length it cannot frame, then a close once the client half-closes.
 * Every case ends with the socket closed by the proxy within CASE_MS; most half-close after writing, as a
 * client that gives up would, so a proxy rightly waiting for more bytes still has to let go.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MAX_CLIENT_MESSAGE } from '../../src/proxy/protocol/constants.js';
import {
  CANCEL_REQUEST,
  GSSENC_REQUEST,
  SSL_REQUEST,
  connectPg,
  errorFields,
  hasBinary,
  parseMessages,
  proxyFixture,
  requestPacket,
  run,
  sleep,
  startupMessage,
  type BackendMessage,
  type ProxyFixture,
  type TestProxy,
} from '../support/proxy.js';
import { FUZZ_MULTIPLIER, FUZZ_SEED, fuzzRuns } from '../support/fuzz.js';

// ---------------------------------------------------------------------------------------------------------------
// Budget, seed, case count

const MULTIPLIER = FUZZ_MULTIPLIER;
const SEED = FUZZ_SEED;
const runs = (base: number) => ({ ...fuzzRuns(base), endOnFailure: true });
vi.setConfig({ testTimeout: 120_000 * Math.max(1, MULTIPLIER) });
/** How long the proxy gets to answer or close one case: generous, it is a liveness bound, not a speed one. */
const CASE_MS = 8_000;
const PASSWORD = 'fuzz-password-1';
let cases = 0;

// ---------------------------------------------------------------------------------------------------------------
// The proxies under test, each with a well-behaved client connected all along

interface Target {
  readonly name: string;
  readonly proxy: TestProxy;
  readonly keeper: pg.Client;
  /** Backends the keeper holds while idle: one in session mode, none in transaction mode. */
  readonly keeperBackends: number;
}

let fx: ProxyFixture;
let tenant: string;
let database: string;
let session: Target;
let transaction: Target;
/** A short startup timeout: clients that stall mid-login are cut by it. */
let stalled: Target;
let secured: Target | null = null;
const STALL_TIMEOUT_MS = 1500;
let certDir: string | null = null;
const haveOpenssl = hasBinary('openssl');

beforeAll(async () => {
  fx = await proxyFixture('role');
  tenant = await fx.newTenant('fz', PASSWORD);
  database = fx.db.name;
  const start = async (name: string, flags: Record<string, unknown>, keeperBackends: number, ssl = false): Promise<Target> => {
    const proxy = await fx.startProxy(flags);
    const keeper = await connectPg({ ...proxy.clientConfig(tenant, PASSWORD), ...(ssl ? { ssl: { rejectUnauthorized: false } } : {}) });
    return { name, proxy, keeper, keeperBackends };
  };
  session = await start('session', {}, 1);
  transaction = await start('transaction', { poolMode: 'transaction' }, 0);
  stalled = await start('stalled', { startupTimeout: STALL_TIMEOUT_MS }, 1);
  if (haveOpenssl) {
    certDir = await mkdtemp(path.join(tmpdir(), 'pgtenant-fuzz-'));
    const [cert, key] = [path.join(certDir, 'cert.pem'), path.join(certDir, 'key.pem')];
    const gen = await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', key, '-out', cert]);
    expect(gen.code, gen.stderr).toBe(0);
    // A stalled TLS handshake is cut by the startup timeout too: shortened so the garbage cases end within CASE_MS.
    secured = await start('tls', { tlsCert: cert, tlsKey: key, startupTimeout: STALL_TIMEOUT_MS }, 1, true);
  }
});

afterAll(async () => {
  for (const t of [session, transaction, stalled, secured]) await t?.keeper.end().catch(() => undefined);
  await fx?.close();
  if (certDir) await rm(certDir, { recursive: true, force: true });
  console.log(`fuzz: ${cases} cases (live proxy, seed ${SEED}, PGTENANT_FUZZ_RUNS=${MULTIPLIER})`);
});

const targets = (): Target[] => [session, transaction, stalled, ...(secured ? [secured] : [])];

async function waitUntil(condition: () => boolean, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(25)) if (condition()) return true;
  return condition();
}

/** Between batches: every keeper still queries, a new client logs in, and only the keepers' sessions and backends are left. */
async function expectHealthy(): Promise<void> {
  for (const t of targets()) expect((await t.keeper.query('SELECT 1 AS one')).rows, t.name).toEqual([{ one: 1 }]);
  const fresh = await connectPg(session.proxy.clientConfig(tenant, PASSWORD));
  try {
    expect((await fresh.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
  } finally {
    await fresh.end();
  }
  for (const t of targets()) {
    const sessions = () => t.proxy.server.sessions().size;
    expect(await waitUntil(() => sessions() === 1, 10_000), `${t.name}: ${sessions()} live sessions, expected only the keeper's`).toBe(true);
    const servers = () => t.proxy.server.pool.counts().get(tenant) ?? { login: 0, active: 0, idle: 0 };
    const settled = () => servers().active === t.keeperBackends && servers().login === 0;
    expect(await waitUntil(settled, 10_000), `${t.name}: backends ${JSON.stringify(servers())}`).toBe(true);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Raw conversations

/** A raw client socket that records every byte the proxy sends and whether the proxy closed. */
class Conversation {
  data = Buffer.alloc(0);
  closed = false;
  private wake: (() => void) | null = null;

  private constructor(readonly socket: net.Socket | tls.TLSSocket) {
    socket.on('data', (d: Buffer) => {
      this.data = Buffer.concat([this.data, d]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    // A reset after the proxy answered is a close like any other.
    socket.on('error', () => undefined);
  }

  static async open(port: number): Promise<Conversation> {
    const socket = net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    socket.setNoDelay(true);
    return new Conversation(socket);
  }

  /** Continues over TLS on this socket (after the proxy answered 'S'). */
  async startTls(): Promise<Conversation> {
    const secure = tls.connect({ socket: this.socket as net.Socket, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
    return new Conversation(secure);
  }

  write(...chunks: Buffer[]): void {
    if (!this.socket.destroyed) for (const c of chunks) this.socket.write(c);
  }

  /** Half-closes: we send nothing more, as a client that gives up. */
  end(): void {
    if (!this.socket.destroyed) this.socket.end();
  }

  /** Waits until `done` holds (true) or `ms` passes (false). */
  async until(done: (c: Conversation) => boolean, ms = CASE_MS): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!done(this)) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
    return true;
  }

  /** Waits for the proxy to close, failing the case (with what was sent) if it does not within CASE_MS. */
  async closedByProxy(sent: string): Promise<void> {
    const closed = await this.until((c) => c.closed);
    if (!closed) this.socket.destroy();
    expect(closed, `the proxy neither closed nor finished within ${CASE_MS} ms; got ${this.data.toString('hex') || 'nothing'} for ${sent}`).toBe(true);
  }

  /** Whole messages received so far (after `skip` raw bytes). */
  messages(skip = 0): BackendMessage[] {
    return parseMessages(this.data.subarray(skip)).messages;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const hasMessage = (type: string) => (c: Conversation) => c.closed || c.messages().some((m) => m.type === type);
const authCode = (m: BackendMessage): number => m.body.readInt32BE(0);

interface Rules {
  /** SQLSTATEs a FATAL ErrorResponse may carry. */
  readonly codes: readonly string[];
  /** Authentication request codes allowed before it (never 0, AuthenticationOk). */
  readonly auth?: readonly number[];
  /** Leading single-byte answers to encryption requests may come first. */
  readonly encryptionAnswers?: boolean;
  /** Messages an earlier step already accounted for. */
  readonly skip?: number;
}

const PRE_AUTH_TYPES = new Set(['R', 'v', 'E']);

/** Checks a pre-authentication reply: whole messages of the allowed kinds, at most one FATAL error, last. */
function expectPreAuthReply(c: Conversation, rules: Rules, sent: string): BackendMessage[] {
  const why = `reply ${c.data.toString('hex') || '(none)'} to ${sent}`;
  let at = rules.skip ?? 0;
  if (rules.encryptionAnswers) while (c.data[at] === 0x4e) at++; // 'N'
  const { messages, rest } = parseMessages(c.data.subarray(at));
  expect(rest.length, `trailing partial message in ${why}`).toBe(0);
  for (const [k, m] of messages.entries()) {
    expect(PRE_AUTH_TYPES.has(m.type), `unexpected message ${m.type} in ${why}`).toBe(true);
    if (m.type === 'R') expect(rules.auth ?? [10, 11], `authentication request in ${why}`).toContain(authCode(m));
    if (m.type === 'E') {
      expect(k, `an ErrorResponse that is not the last message in ${why}`).toBe(messages.length - 1);
      const f = errorFields(m.body);
      expect(f.S, why).toBe('FATAL');
      expect(rules.codes, `SQLSTATE ${f.C} (${f.M}) in ${why}`).toContain(f.C);
      expect(f.M?.length, why).toBeGreaterThan(0);
    }
  }
  return messages;
}

/** Checks a post-login reply: whole messages; errors carry a severity and a SQLSTATE, and a FATAL is the last word. */
function expectRelayReply(c: Conversation, sent: string): BackendMessage[] {
  const why = `reply ${c.data.toString('hex').slice(0, 400) || '(none)'} to ${sent}`;
  // No check of a trailing partial message: once the client half-closed, the proxy closes too, and the server's
  // answer may be cut wherever a chunk of it ended.
  const { messages } = parseMessages(c.data);
  for (const [k, m] of messages.entries()) {
    if (m.type !== 'E') continue;
    const f = errorFields(m.body);
    expect(['ERROR', 'FATAL'], why).toContain(f.S);
    expect(f.C, why).toMatch(/^[0-9A-Z]{5}$/);
    if (f.S === 'FATAL') expect(k, `a FATAL that is not the last message in ${why}`).toBe(messages.length - 1);
  }
  return messages;
}

const hex = (chunks: readonly Buffer[]): string => chunks.map((c) => c.toString('hex')).join(' | ');

// ---------------------------------------------------------------------------------------------------------------
// Bytes

const NUL = Buffer.from([0]);
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};
const cstring = (s: string | Buffer): Buffer => Buffer.concat([typeof s === 'string' ? Buffer.from(s, 'utf8') : s, NUL]);
const frame = (type: number | string, ...body: Buffer[]): Buffer => {
  const b = Buffer.concat(body);
  return Buffer.concat([Buffer.from([typeof type === 'string' ? type.charCodeAt(0) : type]), u32(4 + b.length), b]);
};
const withLength = (type: number, length: number, body: Buffer = Buffer.alloc(0)): Buffer => Buffer.concat([Buffer.from([type]), u32(length), body]);
const signed = (n: number): number => n | 0;
/** A startup packet from raw name/value pairs: duplicates, empty names and any bytes allowed. */
const rawStartup = (pairs: ReadonlyArray<readonly [Buffer | string, Buffer | string]>, version = 196608): Buffer => {
  const body = Buffer.concat([...pairs.flatMap(([k, v]) => [cstring(k), cstring(v)]), NUL]);
  return Buffer.concat([u32(8 + body.length), u32(version), body]);
};
const validStartup = (extra: Record<string, string> = {}) => startupMessage({ user: tenant, database, ...extra });

const EDGE_LENGTHS = [0, 1, 3, 4, 5, 7, 8, 9, 16, MAX_CLIENT_MESSAGE, MAX_CLIENT_MESSAGE + 1, 10_000, 10_001, 1 << 20, (1 << 20) + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1] as const;
const edgeLength = fc.constantFrom(...EDGE_LENGTHS);
const bytes = (maxLength: number, minLength = 0) => fc.uint8Array({ minLength, maxLength }).map((a) => Buffer.from(a));
const noNul = (s: string) => s.replaceAll('\0', '');

type Mutation = { kind: 'flip'; at: number; bit: number } | { kind: 'cut'; at: number } | { kind: 'dup'; at: number; n: number } | { kind: 'int32'; at: number; v: number } | { kind: 'insert'; at: number; b: Buffer };
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('dup' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 48 }) }),
  fc.record({ kind: fc.constant('int32' as const), at: fc.nat(), v: edgeLength }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), b: bytes(12, 1) }),
);
const mutations = fc.array(mutation, { minLength: 1, maxLength: 3 });
function mutate(input: Buffer, list: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of list) {
    const at = m.at % (b.length + 1);
    if (m.kind === 'flip' && at < b.length) b[at]! ^= 1 << m.bit;
    else if (m.kind === 'cut') b = b.subarray(0, at);
    else if (m.kind === 'dup') b = Buffer.concat([b.subarray(0, at + m.n), b.subarray(at)]);
    else if (m.kind === 'int32' && at + 4 <= b.length) b.writeUInt32BE(m.v >>> 0, at);
    else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), m.b, b.subarray(at)]);
  }
  return Buffer.from(b);
}

const invalidUtf8 = fc.constantFrom(Buffer.from([0xff]), Buffer.from([0xc3, 0x28]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xc0, 0xaf]));
const paramValue = fc.oneof(
  fc.string({ maxLength: 20 }).map(noNul),
  fc.constantFrom('-c search_path=evil', '-c statement_timeout=1', '-X nonsense', '-c', '--a=b', ''),
  fc.integer({ min: 9_950, max: 10_050 }).map((n) => '-c application_name=' + 'x'.repeat(n)),
);

/** Startup-phase inputs: mutated real startups, edge lengths, garbage, odd parameters, encryption and cancel requests. */
const startupInput: fc.Arbitrary<Buffer> = fc.oneof(
  fc.tuple(fc.dictionary(fc.constantFrom('options', 'application_name', 'client_encoding', 'replication', '_pq_.x', 'search_path'), paramValue, { maxKeys: 3 }), mutations).map(
    ([extra, m]) => mutate(validStartup(extra), m),
  ),
  fc.tuple(edgeLength, fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), bytes(24)).map(([l, code, body]) => Buffer.concat([u32(l), u32(code), body])),
  fc.tuple(edgeLength, bytes(24)).map(([l, body]) => Buffer.concat([u32(l), u32(196608), body])),
  bytes(64),
  fc.tuple(fc.constantFrom<'empty' | 'dup' | 'utf8' | 'nouser' | 'huge'>('empty', 'dup', 'utf8', 'nouser', 'huge'), paramValue, invalidUtf8).map(([kind, v, bad]) => {
    const base: Array<[Buffer | string, Buffer | string]> = [['user', tenant], ['database', database]];
    if (kind === 'empty') base.push(['', v]);
    if (kind === 'dup') base.push(['user', v]);
    if (kind === 'utf8') base.push(['application_name', Buffer.concat([Buffer.from('a'), bad])]);
    if (kind === 'nouser') base.shift();
    if (kind === 'huge') base.push(['options', '-c application_name=' + 'y'.repeat(10_000)]);
    return rawStartup(base);
  }),
  fc.tuple(fc.constantFrom(SSL_REQUEST, GSSENC_REQUEST), fc.oneof(bytes(32), fc.constant(Buffer.alloc(0)))).map(([code, rest]) =>
    Buffer.concat([requestPacket(code), rest]),
  ),
  fc.tuple(fc.integer({ min: 8, max: 300 }), bytes(300)).map(([len, key]) => Buffer.concat([u32(len), u32(CANCEL_REQUEST), key]).subarray(0, Math.max(len, 8))),
);

const STARTUP_CODES = ['08P01', '0A000', '28000'];
const PASSWORD_CODES = ['08P01', '28P01', '0A000'];

// ---------------------------------------------------------------------------------------------------------------
// SCRAM, to log in on a raw socket with the tenant's real password

const hmac = (key: Buffer, text: string) => createHmac('sha256', key).update(text).digest();
const saslInitial = (mechanism: string, data: Buffer | null) =>
  frame('p', cstring(mechanism), data ? Buffer.concat([u32(data.length), data]) : u32(-1));

function scramClient(password: string) {
  const bare = `n=*,r=${randomBytes(18).toString('base64')}`;
  return {
    first: Buffer.from(`n,,${bare}`),
    /** client-final-message for a server-first-message; `proof` replaces the real proof when given. */
    final(serverFirst: string, proof?: Buffer): Buffer {
      const attrs = new Map(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)] as const));
      const salted = pbkdf2Sync(password, Buffer.from(attrs.get('s') ?? '', 'base64'), Number(attrs.get('i')), 32, 'sha256');
      const clientKey = hmac(salted, 'Client Key');
      const withoutProof = `c=biws,r=${attrs.get('r')}`;
      const signature = hmac(createHash('sha256').update(clientKey).digest(), `${bare},${serverFirst},${withoutProof}`);
      const real = Buffer.from(clientKey.map((b, i) => b ^ signature[i]!));
      return Buffer.from(`${withoutProof},p=${(proof ?? real).toString('base64')}`);
    },
  };
}

/** Startup and SASLInitialResponse sent, R 11 received: returns the conversation and the server-first-message. */
async function upToSaslContinue(port: number): Promise<{ c: Conversation; serverFirst: string; scram: ReturnType<typeof scramClient> }> {
  const c = await Conversation.open(port);
  const scram = scramClient(PASSWORD);
  c.write(validStartup(), saslInitial('SCRAM-SHA-256', scram.first));
  expect(await c.until((x) => x.closed || x.messages().filter((m) => m.type === 'R').length >= 2), 'no SASLContinue').toBe(true);
  const cont = c.messages().filter((m) => m.type === 'R')[1]!;
  expect(authCode(cont)).toBe(11);
  return { c, serverFirst: cont.body.toString('utf8', 4), scram };
}

/** A conversation logged in as the tenant and idle (ReadyForQuery seen), its login bytes cleared. */
async function loggedIn(port: number): Promise<Conversation> {
  const { c, serverFirst, scram } = await upToSaslContinue(port);
  c.write(frame('p', scram.final(serverFirst)));
  expect(await c.until(hasMessage('Z')), `login did not finish: ${c.data.toString('hex')}`).toBe(true);
  expect(c.messages().map((m) => m.type)).not.toContain('E');
  c.data = Buffer.alloc(0);
  return c;
}

// ---------------------------------------------------------------------------------------------------------------

describe('startup phase', () => {
  it('random and mutated startup traffic, half-closed: only documented answers, then a close', async () => {
    await fc.assert(
      fc.asyncProperty(startupInput, fc.boolean(), async (input, bytewise) => {
        cases++;
        const c = await Conversation.open(session.proxy.port);
        c.write(...(bytewise ? [...input].map((b) => Buffer.from([b])) : [input]));
        c.end();
        await c.closedByProxy(input.toString('hex'));
        expectPreAuthReply(c, { codes: [...STARTUP_CODES, ...PASSWORD_CODES], encryptionAnswers: true }, input.toString('hex'));
      }),
      runs(200),
    );
    await expectHealthy();
  });

  it('startup length field at every edge: bad lengths refused with 08P01 before any body arrives, good ones wait for it', async () => {
    for (const length of EDGE_LENGTHS) {
      for (const halfClose of [false, true]) {
        cases++;
        const sent = Buffer.concat([u32(length), u32(196608)]);
        const c = await Conversation.open(session.proxy.port);
        c.write(sent);
        const n = signed(length);
        // 8 is a whole packet: a version and no terminator, a layout error.
        const refused = n < 9 || n > 10_000;
        if (halfClose || refused) {
          if (halfClose) c.end();
          await c.closedByProxy(sent.toString('hex'));
          const messages = expectPreAuthReply(c, { codes: ['08P01'] }, sent.toString('hex'));
          expect(messages.map((m) => m.type), `length ${length}`).toEqual(refused ? ['E'] : []);
        } else {
          // A length the proxy accepts: it waits for the rest, and still takes it when it comes.
          c.write(Buffer.alloc(n - 8, 0x61));
          await c.closedByProxy(sent.toString('hex'));
          expect(expectPreAuthReply(c, { codes: ['08P01'] }, `length ${length} with its body`).map((m) => m.type)).toEqual(['E']);
        }
        c.destroy();
      }
    }
    await expectHealthy();
  });
});

describe('password phase', () => {
  const mechanism = fc.oneof(fc.constantFrom('SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS', '', 'PLAIN', 'scram-sha-256'), fc.string({ maxLength: 16 }).map(noNul));
  const clientFirst = fc.oneof(
    fc
      .constantFrom(
        'n,,n=,r=abcdef',
        'n,,n=*,r=fyko+d2lbbFgONRv9qkxdawL',
        'y,,n=,r=abc',
        'p=tls-server-end-point,,n=,r=abc',
        'n,a=someone,n=,r=abc',
        'n,,m=ext,n=,r=abc',
        'n,,n=,r=',
        'n,,n=,r=a,b',
        'x,,n=,r=abc',
        'n',
        '',
      )
      .map((s) => Buffer.from(s)),
    bytes(48),
  );
  /** What may come where the SASLInitialResponse belongs. */
  const firstAnswer: fc.Arbitrary<Buffer> = fc.oneof(
    fc.tuple(mechanism, fc.option(clientFirst, { nil: null })).map(([m, d]) => saslInitial(m, d)),
    fc.tuple(mechanism, clientFirst, fc.oneof(edgeLength, fc.integer({ min: -2, max: 100 }))).map(([m, d, l]) =>
      frame('p', cstring(m), u32(l), d),
    ),
    fc.tuple(mechanism, clientFirst, mutations).map(([m, d, list]) => mutate(saslInitial(m, d), list)),
    fc.tuple(fc.integer({ min: 0, max: 255 }), bytes(40)).map(([t, b]) => frame(t, b)),
    fc.tuple(fc.integer({ min: 0, max: 255 }), edgeLength, bytes(16)).map(([t, l, b]) => withLength(t, l, b)),
    fc.constant(frame('p', Buffer.from('hunter2\0'))),
    bytes(40),
  );

  it('fuzzed SASLInitialResponse, pipelined or after the challenge, half-closed: 08P01, 28P01 or 0A000, or a close', async () => {
    await fc.assert(
      fc.asyncProperty(firstAnswer, fc.boolean(), async (answer, pipelined) => {
        cases++;
        const c = await Conversation.open(session.proxy.port);
        if (pipelined) c.write(Buffer.concat([validStartup(), answer]));
        else {
          c.write(validStartup());
          expect(await c.until(hasMessage('R'))).toBe(true);
          c.write(answer);
        }
        c.end();
        await c.closedByProxy(answer.toString('hex'));
        const messages = expectPreAuthReply(c, { codes: PASSWORD_CODES }, answer.toString('hex'));
        // Pipelined and half-closed at once, the proxy may see the end before it has answered: then nothing comes.
        if (!pipelined || messages.length > 0) expect(messages[0] && [messages[0].type, authCode(messages[0])]).toEqual(['R', 10]);
      }),
      runs(150),
    );
    await expectHealthy();
  });

  it('fuzzed SASLResponse after a real SCRAM start, half-closed: 08P01 or 28P01, never AuthenticationOk', async () => {
    // Recipes rather than bytes: the answer depends on the server's nonce, known only once the exchange started.
    type Recipe =
      | { kind: 'proof'; proof: Buffer }
      | { kind: 'mutated'; list: Mutation[] }
      | { kind: 'typed'; type: number; body: Buffer }
      | { kind: 'length'; type: number; length: number }
      | { kind: 'raw'; body: Buffer };
    const recipe: fc.Arbitrary<Recipe> = fc.oneof(
      fc.record({ kind: fc.constant('proof' as const), proof: bytes(32, 32) }),
      fc.record({ kind: fc.constant('mutated' as const), list: mutations }),
      fc.record({ kind: fc.constant('typed' as const), type: fc.integer({ min: 0, max: 255 }), body: bytes(40) }),
      fc.record({ kind: fc.constant('length' as const), type: fc.integer({ min: 0, max: 255 }), length: edgeLength }),
      fc.record({ kind: fc.constant('raw' as const), body: bytes(64) }),
    );
    await fc.assert(
      fc.asyncProperty(recipe, async (r) => {
        cases++;
        const { c, serverFirst, scram } = await upToSaslContinue(session.proxy.port);
        const real = frame('p', scram.final(serverFirst));
        const answer =
          r.kind === 'proof' ? frame('p', scram.final(serverFirst, r.proof))
          : r.kind === 'mutated' ? mutate(real, r.list)
          : r.kind === 'typed' ? frame(r.type, r.body)
          : r.kind === 'length' ? withLength(r.type, r.length)
          : frame('p', r.body);
        c.write(answer);
        c.end();
        await c.closedByProxy(answer.toString('hex'));
        // A mutation may leave the real answer whole at the front: that client did log in, with bytes after it.
        if (answer.subarray(0, real.length).equals(real)) return;
        const messages = expectPreAuthReply(c, { codes: ['08P01', '28P01'], auth: [10, 11] }, answer.toString('hex'));
        expect(messages.filter((m) => m.type === 'R').map(authCode)).toEqual([10, 11]);
      }),
      runs(80),
    );
    await expectHealthy();
  });

  it('password-message length field at every edge: beyond the limits refused with 08P01 before any body', async () => {
    for (const length of EDGE_LENGTHS) {
      cases++;
      const sent = withLength(0x70, length);
      const c = await Conversation.open(session.proxy.port);
      c.write(validStartup());
      expect(await c.until(hasMessage('R'))).toBe(true);
      c.write(sent);
      const n = signed(length);
      // An empty body (length 4) is whole and malformed; above MAX_CLIENT_MESSAGE the proxy will not buffer; below 4 there is no frame.
      const refused = n <= 4 || n > MAX_CLIENT_MESSAGE;
      if (!refused) c.end();
      await c.closedByProxy(`length ${length}`);
      const messages = expectPreAuthReply(c, { codes: ['08P01'] }, `password message of length ${length}`);
      expect(messages.map((m) => m.type), `length ${length}`).toEqual(refused ? ['R', 'E'] : ['R']);
    }
    await expectHealthy();
  });

  // As PostgreSQL does, the type byte is checked before the body is awaited: a second StartupMessage (type 0,
  // with a length of its own length times 256) is refused at once rather than waited for until the startup timeout.
  it('a second StartupMessage in the middle of SCRAM is refused with 08P01 at once, not after the startup timeout', async () => {
    for (const when of ['after R 10', 'after R 11'] as const) {
      cases++;
      const second = validStartup({ application_name: 'again' });
      const c =
        when === 'after R 10'
          ? await Conversation.open(session.proxy.port).then(async (x) => {
              x.write(validStartup());
              expect(await x.until(hasMessage('R'))).toBe(true);
              return x;
            })
          : (await upToSaslContinue(session.proxy.port)).c;
      c.write(second);
      await c.closedByProxy(`${when}: ${second.toString('hex')}`);
      expect(expectPreAuthReply(c, { codes: ['08P01'] }, `${when}: second StartupMessage`).at(-1)?.type).toBe('E');
    }
  });

  it('a second StartupMessage in the middle of SCRAM, half-closed: closed, with 08P01 or nothing', async () => {
    cases++;
    const c = await Conversation.open(session.proxy.port);
    c.write(validStartup());
    expect(await c.until(hasMessage('R'))).toBe(true);
    c.write(validStartup({ application_name: 'again' }));
    c.end();
    await c.closedByProxy('second StartupMessage, half-closed');
    expectPreAuthReply(c, { codes: ['08P01'] }, 'second StartupMessage');
    await expectHealthy();
  });
});

describe('stalled clients', () => {
  type Step = Buffer | 'wait R' | 'wait R 11' | 'wait S' | 'tls';
  // Each stops where the proxy rightly waits for more: the startup timeout must end it, with 08P01.
  const stalls: Array<{ name: string; tls?: boolean; steps: () => Step[] }> = [
    { name: 'nothing sent', steps: () => [] },
    { name: 'three bytes of a length', steps: () => [Buffer.from([0, 0, 0])] },
    { name: 'a startup header promising 100 bytes', steps: () => [Buffer.concat([u32(100), u32(196608), Buffer.from('user\0')])] },
    { name: 'a valid startup, then silence', steps: () => [validStartup(), 'wait R'] },
    { name: 'a password message header promising 100 bytes', steps: () => [validStartup(), 'wait R', withLength(0x70, 100)] },
    { name: 'SCRAM started, then silence', steps: () => [validStartup(), 'wait R', saslInitial('SCRAM-SHA-256', scramClient(PASSWORD).first), 'wait R 11'] },
    { name: 'an SSLRequest answered N, then silence', steps: () => [requestPacket(SSL_REQUEST)] },
    { name: 'S, then one byte of a TLS record', tls: true, steps: () => [requestPacket(SSL_REQUEST), 'wait S', Buffer.from([0x16])] },
    { name: 'S, then a TLS record header promising more', tls: true, steps: () => [requestPacket(SSL_REQUEST), 'wait S', Buffer.from('1603010200', 'hex')] },
    { name: 'TLS up, then silence', tls: true, steps: () => [requestPacket(SSL_REQUEST), 'wait S', 'tls'] },
    { name: 'TLS up, then half a startup packet', tls: true, steps: () => [requestPacket(SSL_REQUEST), 'wait S', 'tls', validStartup().subarray(0, 10)] },
  ];

  it('each stall is cut by the startup timeout with 08P01, all at once, and the proxy serves as before', async () => {
    const run = stalls.filter((s) => !s.tls || secured).map(async ({ name, tls: overTls, steps }) => {
      cases++;
      let c = await Conversation.open((overTls ? secured! : stalled).proxy.port);
      for (const step of steps()) {
        if (step === 'wait R') expect(await c.until(hasMessage('R')), name).toBe(true);
        else if (step === 'wait R 11') expect(await c.until((x) => x.closed || x.messages().filter((m) => m.type === 'R').length >= 2), name).toBe(true);
        else if (step === 'wait S') {
          expect(await c.until((x) => x.closed || x.data.length > 0), name).toBe(true);
          expect(c.data.toString('latin1'), name).toBe('S');
          c.data = Buffer.alloc(0);
        } else if (step === 'tls') c = await c.startTls();
        else c.write(step);
      }
      await c.closedByProxy(name);
      // Mid-handshake, the proxy's last words are plaintext on a connection the client thinks is TLS: not checked.
      if (overTls && !steps().includes('tls')) return;
      const messages = expectPreAuthReply(c, { codes: ['08P01'], encryptionAnswers: true }, name);
      expect(messages.at(-1)?.type, name).toBe('E');
      expect(errorFields(messages.at(-1)!.body).M, name).toMatch(/timeout/);
    });
    await Promise.all(run);
    await expectHealthy();
  });
});

describe('SSLRequest with pipelined bytes', () => {
  const pipelined = fc.oneof(
    bytes(64, 1),
    fc.constant(Buffer.from('160301020001000200', 'hex')), // the start of a TLS ClientHello
    fc.constant(Buffer.from([0])),
    fc.dictionary(fc.constantFrom('application_name', 'options'), fc.string({ maxLength: 10 }).map(noNul), { maxKeys: 2 }).map((extra) => validStartup(extra)),
    fc.constant(requestPacket(SSL_REQUEST)),
  );

  describe.runIf(haveOpenssl)('with a certificate (the proxy would answer S)', () => {
    it('bytes after the SSLRequest in the same write get exactly one ErrorResponse 08P01, never S', async () => {
      await fc.assert(
        fc.asyncProperty(pipelined, async (rest) => {
          cases++;
          const sent = Buffer.concat([requestPacket(SSL_REQUEST), rest]);
          const c = await Conversation.open(secured!.proxy.port);
          c.write(sent);
          await c.closedByProxy(sent.toString('hex'));
          expect(c.data[0], `answered S to ${sent.toString('hex')}`).not.toBe(0x53);
          const messages = expectPreAuthReply(c, { codes: ['08P01'] }, sent.toString('hex'));
          expect(messages.map((m) => m.type)).toEqual(['E']);
        }),
        runs(40),
      );
      await expectHealthy();
    });

    it('garbage instead of a TLS handshake after S, half-closed: closed without a crash', async () => {
      await fc.assert(
        fc.asyncProperty(bytes(200, 1), async (garbage) => {
          cases++;
          const c = await Conversation.open(secured!.proxy.port);
          c.write(requestPacket(SSL_REQUEST));
          expect(await c.until((x) => x.closed || x.data.length > 0)).toBe(true);
          expect(c.data.toString('latin1')).toBe('S');
          c.write(garbage);
          c.end();
          await c.closedByProxy(`S then ${garbage.toString('hex')}`);
        }),
        runs(25),
      );
      await expectHealthy();
    });

    it('inside TLS: random and mutated startup traffic gets the same answers as in plaintext, a second SSLRequest 08P01', async () => {
      await fc.assert(
        fc.asyncProperty(fc.oneof(startupInput, fc.constant(requestPacket(SSL_REQUEST))), async (input) => {
          cases++;
          const raw = await Conversation.open(secured!.proxy.port);
          raw.write(requestPacket(SSL_REQUEST));
          expect(await raw.until((x) => x.closed || x.data.length > 0)).toBe(true);
          expect(raw.data.toString('latin1')).toBe('S');
          const c = await raw.startTls();
          c.write(input);
          c.end();
          await c.closedByProxy(input.toString('hex'));
          const isSsl = input.equals(requestPacket(SSL_REQUEST));
          // In TLS there is nothing to upgrade: an SSLRequest is a protocol violation, a GSSENCRequest still gets N.
          const messages = expectPreAuthReply(c, { codes: [...STARTUP_CODES, ...PASSWORD_CODES], encryptionAnswers: !isSsl }, input.toString('hex'));
          if (isSsl) expect(messages.map((m) => [m.type, errorFields(m.body).C])).toEqual([['E', '08P01']]);
          raw.destroy();
        }),
        runs(40),
      );
      await expectHealthy();
    });
  });

  it('without a certificate: N, then the pipelined bytes are read as the next startup packet under the usual rules', async () => {
    await fc.assert(
      fc.asyncProperty(pipelined, fc.constantFrom(SSL_REQUEST, GSSENC_REQUEST), async (rest, code) => {
        cases++;
        const sent = Buffer.concat([requestPacket(code), rest]);
        const c = await Conversation.open(session.proxy.port);
        c.write(sent);
        c.end();
        await c.closedByProxy(sent.toString('hex'));
        expect(c.data[0], sent.toString('hex')).toBe(0x4e);
        expectPreAuthReply(c, { codes: [...STARTUP_CODES, ...PASSWORD_CODES], encryptionAnswers: true }, sent.toString('hex'));
      }),
      runs(40),
    );
    await expectHealthy();
  });
});

describe('after a real login', () => {
  const FRONTEND_TYPES = 'QPBEDCSHFdcfX';
  const select1 = frame('Q', cstring('SELECT 1'));
  const extended = Buffer.concat([
    frame('P', cstring('s1'), cstring('SELECT $1::int'), Buffer.from([0, 0])),
    frame('B', cstring(''), cstring('s1'), Buffer.from([0, 0, 0, 1]), u32(1), Buffer.from('7'), Buffer.from([0, 0])),
    frame('E', cstring(''), u32(0)),
    frame('S'),
  ]);
  const relayInput: fc.Arbitrary<Buffer> = fc.oneof(
    fc.tuple(fc.constantFrom(...FRONTEND_TYPES), bytes(40)).map(([t, b]) => frame(t, b)),
    fc.tuple(fc.integer({ min: 0, max: 255 }), bytes(24)).map(([t, b]) => frame(t, b)),
    fc.tuple(fc.constantFrom(...FRONTEND_TYPES), edgeLength, bytes(16)).map(([t, l, b]) => withLength(t.charCodeAt(0), l, b)),
    fc.tuple(fc.constantFrom(select1, extended), mutations).map(([b, m]) => mutate(b, m)),
    bytes(64),
  );

  for (const which of ['session', 'transaction'] as const) {
    it(`${which} mode: fuzzed messages, then half-close: well-formed answers and a close, no backend leaked`, async () => {
      const target = which === 'session' ? session : transaction;
      await fc.assert(
        fc.asyncProperty(relayInput, fc.boolean(), async (input, withQuery) => {
          cases++;
          const c = await loggedIn(target.proxy.port);
          // A valid query first, sometimes: the garbage then meets a backend in the middle of a conversation.
          c.write(...(withQuery ? [select1, input] : [input]));
          c.end();
          await c.closedByProxy(input.toString('hex'));
          expectRelayReply(c, input.toString('hex'));
        }),
        runs(30),
      );
      await expectHealthy();
    });

    it(`${which} mode: a length field below 4 or of 2^31 and up ends the session at once`, async () => {
      const target = which === 'session' ? session : transaction;
      for (const length of EDGE_LENGTHS.filter((l) => signed(l) < 4)) {
        for (const type of ['Q', 'P', 'X']) {
          cases++;
          const c = await loggedIn(target.proxy.port);
          const sent = withLength(type.charCodeAt(0), length, Buffer.from('SELECT 1\0'));
          c.write(sent);
          await c.closedByProxy(sent.toString('hex'));
          const messages = expectRelayReply(c, sent.toString('hex'));
          // Session mode closes; transaction mode may say why first.
          for (const m of messages) expect([m.type, errorFields(m.body).C]).toEqual(['E', '08P01']);
        }
      }
      await expectHealthy();
    });
  }
});

describe('everything at once', () => {
  it('concurrent hostile startup clients while good clients query in transaction mode', async () => {
    const hostile = fc.sample(startupInput, { numRuns: Math.max(4, Math.round(40 * MULTIPLIER)), seed: SEED });
    const good = Array.from({ length: 4 }, async () => {
      const c = await connectPg(transaction.proxy.clientConfig(tenant, PASSWORD));
      try {
        for (let i = 0; i < 10; i++) expect((await c.query('SELECT $1::int AS n', [i])).rows).toEqual([{ n: i }]);
      } finally {
        await c.end();
      }
    });
    const bad = hostile.map(async (input) => {
      cases++;
      const c = await Conversation.open(session.proxy.port);
      c.write(input);
      c.end();
      await c.closedByProxy(input.toString('hex'));
      expectPreAuthReply(c, { codes: [...STARTUP_CODES, ...PASSWORD_CODES], encryptionAnswers: true }, input.toString('hex'));
    });
    await Promise.all([...good, ...bad]);
    await expectHealthy();
  });
});
