// Malformed and hostile startup traffic on raw sockets: each gets a clear ErrorResponse or a clean close, and the proxy keeps serving.
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uniqueTenantId } from '../support/db.js';
import {
  GSSENC_REQUEST,
  SSL_REQUEST,
  connectPg,
  errorFields,
  hasBinary,
  parseMessages,
  proxyFixture,
  rawExchange,
  requestPacket,
  run,
  startupMessage,
  titleNeeding,
  type ProxyFixture,
  type RawReply,
  type TestProxy,
} from '../support/proxy.js';

const PASSWORD = 'badinput-password-1';
let fx: ProxyFixture;
let proxy: TestProxy;
let tenant: string;

beforeAll(async () => {
  fx = await proxyFixture('role');
  tenant = uniqueTenantId('bad');
  await fx.tenants.create(tenant, { password: PASSWORD });
  proxy = await fx.startProxy();
});

afterAll(async () => {
  await fx?.close();
});

/** A good client still gets in and runs a query. */
async function expectProxyServes(): Promise<void> {
  const c = await connectPg(proxy.clientConfig(tenant, PASSWORD));
  try {
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: tenant }]);
  } finally {
    await c.end();
  }
}

/**
 * The reply is a clean close with nothing sent, or exactly one ErrorResponse with one of the codes, then a
 * close; `challenged` cases got past the startup packet, so a password challenge (R) comes first.
 */
function expectRefusal(reply: RawReply, codes: string[], challenged = false): void {
  expect(reply.closed, 'the proxy left the connection open').toBe(true);
  if (reply.data.length === 0) return;
  const { messages, rest } = parseMessages(reply.data);
  expect(rest.length, `trailing bytes: ${rest.toString('hex')}`).toBe(0);
  expect(messages.map((m) => m.type)).toEqual(challenged ? ['R', 'E'] : ['E']);
  const fields = errorFields(messages.at(-1)!.body);
  expect(codes).toContain(fields.C);
  expect(fields.S).toBe('FATAL');
  expect(fields.M?.length).toBeGreaterThan(0);
}

const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};

/** A startup packet with its body, but a length field of our choosing. */
const withLength = (length: number, rest: Buffer = Buffer.alloc(0)): Buffer => Buffer.concat([int32(length), rest]);

const cases: Array<{ name: string; chunks: () => Buffer[]; codes: string[]; endAfterWrite?: boolean; challenged?: boolean }> = [
  { name: 'an HTTP request', chunks: () => [Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')], codes: ['08P01'] },
  { name: 'binary garbage', chunks: () => [Buffer.from('deadbeefcafebabe0011223344556677', 'hex')], codes: ['08P01'] },
  { name: 'a TLS ClientHello without SSLRequest', chunks: () => [Buffer.from('160301020001000200', 'hex')], codes: ['08P01'] },
  { name: 'a length field of 4', chunks: () => [withLength(4)], codes: ['08P01'] },
  { name: 'a length field of 0', chunks: () => [withLength(0, Buffer.alloc(8))], codes: ['08P01'] },
  { name: 'a length field of 2^31 (0x80000000)', chunks: () => [withLength(0x80000000, int32(196608))], codes: ['08P01'] },
  { name: 'a length field of 0xFFFFFFFF', chunks: () => [withLength(0xffffffff)], codes: ['08P01'] },
  { name: 'an oversized startup packet (length 20000), body never sent', chunks: () => [withLength(20000, int32(196608))], codes: ['08P01'] },
  {
    name: 'an oversized startup packet (length 20000), body sent',
    chunks: () => [withLength(20000, Buffer.concat([int32(196608), Buffer.alloc(19992, 0x61)]))],
    codes: ['08P01'],
  },
  {
    name: 'a truncated startup packet, then close',
    chunks: () => [startupMessage({ user: tenant, database: fx.db.name }).subarray(0, 13)],
    codes: ['08P01'],
    endAfterWrite: true,
  },
  { name: 'a connection that sends nothing and closes', chunks: () => [], codes: ['08P01'], endAfterWrite: true },
  { name: 'protocol version 2.0', chunks: () => [withLength(8, int32(0x00020000))], codes: ['0A000'] },
  { name: 'an SSLRequest of the wrong length', chunks: () => [withLength(12, Buffer.concat([int32(SSL_REQUEST), int32(0)]))], codes: ['08P01'] },
  { name: 'a CancelRequest that is too short', chunks: () => [withLength(12, Buffer.concat([int32(80877102), int32(1)]))], codes: ['08P01'] },
  {
    name: 'a startup packet without the final terminator',
    chunks: () => {
      const p = startupMessage({ user: tenant });
      return [Buffer.concat([withLength(p.length - 1), p.subarray(4, p.length - 1)])];
    },
    codes: ['08P01'],
  },
  {
    name: 'a parameter name without a value',
    chunks: () => {
      const body = Buffer.from(`user\0${tenant}\0lonely\0\0`);
      return [Buffer.concat([withLength(8 + body.length), int32(196608), body])];
    },
    codes: ['08P01'],
  },
  {
    name: 'invalid UTF-8 in the startup packet',
    chunks: () => {
      const body = Buffer.concat([Buffer.from(`user\0${tenant}\0application_name\0`), Buffer.from([0xc3, 0x28, 0, 0])]);
      return [Buffer.concat([withLength(8 + body.length), int32(196608), body])];
    },
    codes: ['08P01'],
  },
  { name: 'a startup packet without a user', chunks: () => [startupMessage({ database: 'x' })], codes: ['28000'] },
  { name: 'a replication connection', chunks: () => [startupMessage({ user: tenant, replication: 'database' })], codes: ['0A000'] },
  {
    name: 'startup options the proxy cannot rewrite',
    chunks: () => [startupMessage({ user: tenant, database: fx.db.name, options: '-X nonsense' })],
    codes: ['08P01'],
  },
  {
    name: 'a Query message where the password answer belongs',
    chunks: () => [startupMessage({ user: tenant, database: fx.db.name }), Buffer.concat([Buffer.from('Q'), int32(4 + 9), Buffer.from('SELECT 1\0')])],
    codes: ['08P01'],
    challenged: true,
  },
  {
    name: 'a password message with a length field of 2^31',
    chunks: () => [startupMessage({ user: tenant, database: fx.db.name }), Buffer.concat([Buffer.from('p'), int32(0x80000000)])],
    codes: ['08P01'],
    challenged: true,
  },
];

describe('bad clients on raw sockets', () => {
  it.each(cases)('$name: clear error or clean close, then a good client still connects', async ({ chunks, codes, endAfterWrite, challenged }) => {
    const started = Date.now();
    const reply = await rawExchange(proxy.port, chunks(), { waitMs: 3000, endAfterWrite: endAfterWrite ?? false, gapMs: 50 });
    expectRefusal(reply, codes, challenged);
    // Refusals do not wait for bytes a bogus length promised.
    expect(Date.now() - started).toBeLessThan(2500);
    await expectProxyServes();
  });

  it('survives all of them at once', async () => {
    const replies = await Promise.all(
      cases.map((c) => rawExchange(proxy.port, c.chunks(), { waitMs: 3000, endAfterWrite: c.endAfterWrite ?? false })),
    );
    replies.forEach((r, i) => expectRefusal(r, cases[i]!.codes, cases[i]!.challenged));
    await Promise.all(Array.from({ length: 5 }, () => expectProxyServes()));
  });

  it('a valid startup packet trickled one byte at a time still gets its password challenge', async () => {
    const packet = startupMessage({ user: tenant, database: fx.db.name });
    const bytes = [...packet].map((b) => Buffer.from([b]));
    const reply = await rawExchange(proxy.port, bytes, { gapMs: 2, waitMs: 3000, until: (d) => d.length >= 9 });
    const { messages } = parseMessages(reply.data);
    expect(messages[0]?.type).toBe('R');
    expect(messages[0]?.body.readInt32BE(0)).toBe(10);
  });
});

describe('encryption requests without a certificate', () => {
  const authOffer = (data: Buffer) => {
    const { messages } = parseMessages(data.subarray(1));
    return messages[0]?.type === 'R' ? messages[0].body.readInt32BE(0) : null;
  };

  it('SSLRequest gets N, then a plaintext startup on the same connection proceeds', async () => {
    const reply = await rawExchange(proxy.port, [requestPacket(SSL_REQUEST), startupMessage({ user: tenant, database: fx.db.name })], {
      gapMs: 100,
      until: (d) => d.length >= 10,
    });
    expect(String.fromCharCode(reply.data[0]!)).toBe('N');
    expect(authOffer(reply.data)).toBe(10);
  });

  it('GSSENCRequest gets N, then a plaintext startup on the same connection proceeds', async () => {
    const reply = await rawExchange(proxy.port, [requestPacket(GSSENC_REQUEST), startupMessage({ user: tenant, database: fx.db.name })], {
      gapMs: 100,
      until: (d) => d.length >= 10,
    });
    expect(String.fromCharCode(reply.data[0]!)).toBe('N');
    expect(authOffer(reply.data)).toBe(10);
  });

  it('GSSENCRequest then SSLRequest get N and N', async () => {
    const reply = await rawExchange(
      proxy.port,
      [requestPacket(GSSENC_REQUEST), requestPacket(SSL_REQUEST), startupMessage({ user: tenant, database: fx.db.name })],
      { gapMs: 100, until: (d) => d.length >= 11 },
    );
    expect(reply.data.subarray(0, 2).toString()).toBe('NN');
  });

  it('postgres.js with ssl: prefer falls back to plaintext and logs in', async () => {
    const sql = postgres(proxy.url(tenant, PASSWORD), { max: 1, ssl: 'prefer', connect_timeout: 5 });
    try {
      expect([...(await sql`SELECT current_user AS u`)]).toEqual([{ u: tenant }]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  describe.runIf(hasBinary('psql'))(titleNeeding('psql', 'psql'), () => {
    it('sslmode=prefer and gssencmode=prefer fall back to plaintext and log in', async () => {
      const r = await run('psql', ['-X', '-A', '-t', '-d', proxy.url(tenant, PASSWORD, { sslmode: 'prefer', gssencmode: 'prefer' }), '-c', 'SELECT current_user']);
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe(tenant);
    });

    it('sslmode=require is refused with a clear message', async () => {
      const r = await run('psql', ['-X', '-d', proxy.url(tenant, PASSWORD, { sslmode: 'require' }), '-c', 'SELECT 1']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/server does not support SSL/i);
    });
  });
});

describe('leaving halfway', () => {
  it('a client that leaves during authentication leaves no session or backend behind', async () => {
    const before = proxy.server.sessions().size;
    await Promise.all(
      Array.from({ length: 5 }, () =>
        rawExchange(proxy.port, [startupMessage({ user: tenant, database: fx.db.name })], {
          until: (d) => parseMessages(d).messages.some((m) => m.type === 'R'),
        }),
      ),
    );
    for (let i = 0; i < 40 && proxy.server.sessions().size > before; i++) await new Promise((r) => setTimeout(r, 50));
    expect(proxy.server.sessions().size).toBe(before);
    const servers = proxy.server.pool.counts().get(tenant);
    expect((servers?.active ?? 0) + (servers?.login ?? 0)).toBe(0);
    await expectProxyServes();
  });
});

describe('protocol version negotiation', () => {
  /** A StartupMessage with a chosen minor version. */
  const startupWithMinor = (minor: number, params: Record<string, string>) => {
    const p = startupMessage(params);
    p.writeInt32BE((3 << 16) | minor, 4);
    return p;
  };
  const untilChallenge = (d: Buffer) => parseMessages(d).messages.some((m) => m.type === 'R' || m.type === 'E');

  it('a 3.2 startup gets NegotiateProtocolVersion (3.0) and then its password challenge', async () => {
    const reply = await rawExchange(proxy.port, [startupWithMinor(2, { user: tenant, database: fx.db.name })], { until: untilChallenge });
    const { messages } = parseMessages(reply.data);
    expect(messages.map((m) => m.type)).toEqual(['v', 'R']);
    expect(messages[0]!.body.readInt32BE(0)).toBe(3 << 16);
    expect(messages[0]!.body.readInt32BE(4)).toBe(0);
    expect(messages[1]!.body.readInt32BE(0)).toBe(10);
  });

  it('an unknown _pq_ protocol option is named in NegotiateProtocolVersion and the startup goes on', async () => {
    const reply = await rawExchange(proxy.port, [startupMessage({ user: tenant, database: fx.db.name, '_pq_.test_option': '1' })], {
      until: untilChallenge,
    });
    const { messages } = parseMessages(reply.data);
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
    expect(errors).toEqual([]);
    expect(messages.map((m) => m.type)).toEqual(['v', 'R']);
    expect(messages[0]!.body.readInt32BE(4)).toBe(1);
    expect(messages[0]!.body.toString('utf8', 8)).toBe('_pq_.test_option\0');
  });
});
