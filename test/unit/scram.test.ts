// Proxy-side SCRAM-SHA-256 (server and pass-through client) and MD5 from stored secrets: RFC vector, round trips, malformed input.
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
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

// RFC 7677, section 3.
const RFC = {
  password: 'pencil',
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal: 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
  salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
};

const b = (s: string) => Buffer.from(s, 'utf8');
const rfcSecret = (): ScramSecret => parseScramSecret(scramVerifier(RFC.password, 4096, RFC.salt))!;
const hmac = (key: Buffer, text: string) => createHmac('sha256', key).update(text).digest();

/** A client written from RFC 5802 alone, holding the password, to check the exchange independently. */
function passwordClient(password: string, nonce = 'fyko+d2lbbFgONRv9qkxdawL', gs2 = 'n,,', cbind: Buffer = Buffer.alloc(0)) {
  const bare = `n=someone,r=${nonce}`;
  let salted: Buffer | undefined;
  let authMessage = '';
  return {
    first: () => b(gs2 + bare),
    final(serverFirst: Buffer): Buffer {
      const sf = serverFirst.toString('utf8');
      const attrs = Object.fromEntries(sf.split(',').map((p) => [p[0], p.slice(2)]));
      salted = pbkdf2Sync(password, Buffer.from(attrs.s!, 'base64'), Number(attrs.i), 32, 'sha256');
      const withoutProof = `c=${Buffer.concat([Buffer.from(gs2), cbind]).toString('base64')},r=${attrs.r}`;
      authMessage = `${bare},${sf},${withoutProof}`;
      const clientKey = hmac(salted, 'Client Key');
      const signature = hmac(createHash('sha256').update(clientKey).digest(), authMessage);
      const proof = Buffer.from(clientKey.map((x, i) => x ^ signature[i]!));
      return b(`${withoutProof},p=${proof.toString('base64')}`);
    },
    clientKey: () => hmac(salted!, 'Client Key'),
    serverSignature: () => hmac(hmac(salted!, 'Server Key'), authMessage).toString('base64'),
  };
}

/** The PgError fn throws (the test fails when it throws something else or nothing). */
function pgErrorOf(fn: () => unknown): PgError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(PgError);
  return caught as PgError;
}

/** Keys recovered the way the proxy recovers them: a password client against the server exchange. */
function recoveredKeys(secret: ScramSecret, password: string): ScramKeys {
  const client = passwordClient(password);
  const server = new ScramServerExchange(secret);
  const result = server.clientFinal(client.final(server.serverFirst(client.first())));
  expect(result).not.toBeNull();
  return result!.keys;
}

describe('parseScramSecret', () => {
  it('reads the verifier scramVerifier builds', () => {
    const secret = rfcSecret();
    expect(secret.iterations).toBe(4096);
    expect(secret.salt).toEqual(RFC.salt);
    expect(secret.storedKey).toHaveLength(32);
    expect(secret.serverKey).toHaveLength(32);
  });

  it('is null for anything else', () => {
    const good = scramVerifier('pw', 4096, RFC.salt);
    const [, rest] = good.split('$', 2) as [string, string];
    for (const bad of [
      '',
      'md5' + '0'.repeat(32),
      'plain password',
      good.replace('SCRAM-SHA-256', 'SCRAM-SHA-1'),
      good.replace('$4096:', '$0:'),
      good.replace('$4096:', '$-1:'),
      good.replace('$4096:', '$99999999999:'),
      good.replace('$4096:', '$:'),
      good + 'x',
      good.slice(0, -4),
      `SCRAM-SHA-256$${rest.replace(/\$.*/, '')}`,
      good.replace(RFC.salt.toString('base64'), '*not base64*'),
      good.replace(RFC.salt.toString('base64'), ''),
      good.replace(/\$[^$]*$/, `$${Buffer.alloc(16).toString('base64')}:${Buffer.alloc(32).toString('base64')}`),
    ]) {
      expect(parseScramSecret(bad), bad).toBeNull();
    }
  });
});

describe('ScramServerExchange', () => {
  it('reproduces the RFC 7677 exchange byte for byte', () => {
    const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
    expect(server.serverFirst(b(RFC.clientFirst)).toString('utf8')).toBe(RFC.serverFirst);
    const result = server.clientFinal(b(RFC.clientFinal));
    expect(result).not.toBeNull();
    expect(result!.serverFinal.toString('utf8')).toBe(RFC.serverFinal);
    const salted = pbkdf2Sync(RFC.password, RFC.salt, 4096, 32, 'sha256');
    expect(result!.keys.clientKey).toEqual(hmac(salted, 'Client Key'));
  });

  it('answers null to a wrong proof', () => {
    const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
    server.serverFirst(b(RFC.clientFirst));
    const proof = Buffer.from(RFC.clientFinal.split(',p=')[1]!, 'base64');
    proof[0]! ^= 1;
    const final = RFC.clientFinal.replace(/p=.*/, `p=${proof.toString('base64')}`);
    expect(server.clientFinal(b(final))).toBeNull();
  });

  it('answers null to a client with another password', () => {
    const client = passwordClient('not pencil');
    const server = new ScramServerExchange(rfcSecret());
    expect(server.clientFinal(client.final(server.serverFirst(client.first())))).toBeNull();
  });

  it('verifies an independent client and recovers its ClientKey', () => {
    for (const gs2 of ['n,,', 'y,,']) {
      const client = passwordClient('correct horse', 'abc', gs2);
      const secret = parseScramSecret(scramVerifier('correct horse', 4096))!;
      const server = new ScramServerExchange(secret);
      const serverFirst = server.serverFirst(client.first());
      // 18 random bytes in base64 after the client's nonce.
      expect(serverFirst.toString('utf8')).toMatch(/^r=abc[A-Za-z0-9+/]{24},s=[^,]+,i=4096$/);
      const result = server.clientFinal(client.final(serverFirst));
      expect(result).not.toBeNull();
      expect(result!.serverFinal.toString('utf8')).toBe(`v=${client.serverSignature()}`);
      expect(result!.keys).toEqual({ ...secret, clientKey: client.clientKey() });
    }
  });

  it('keeps the exact bytes of a non-UTF-8 username in the AuthMessage', () => {
    const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
    const first = Buffer.concat([b('n,,n='), Buffer.from([0xff, 0xfe]), b(',r=rOprNGfwEbeRWgbNEkqO')]);
    server.serverFirst(first);
    // The RFC proof was made for "user": a different name must change the AuthMessage and fail, not throw.
    expect(server.clientFinal(b(RFC.clientFinal))).toBeNull();
  });

  it('accepts extensions after the nonce and before the proof', () => {
    const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
    server.serverFirst(b(RFC.clientFirst + ',x=ignored'));
    expect(server.clientFinal(b(RFC.clientFinal.replace(',p=', ',x=1,p=')))).toBeNull(); // AuthMessage differs
  });

  it('refuses a malformed client-first-message with 08P01', () => {
    const cases: [string, RegExp][] = [
      ['', /empty/],
      ['n,,n=user,r=a\0b', /NUL/],
      ['p=tls-server-end-point,,n=user,r=abc', /channel binding data/],
      ['x,,n=user,r=abc', /channel-binding flag/],
      ['n', /Comma expected/],
      ['n,x,n=user,r=abc', /authorization identity/],
      ['n,a=,n=user,r=abc', /authorization identity/],
      ['n,,', /"n"/],
      ['n,,r=abc', /"n"/],
      ['n,,n=user', /"r"/],
      ['n,,n=user,x=abc', /"r"/],
      ['n,,n=user,rabc', /"="/],
      ['n,,n=user,r=', /nonce/],
      ['n,,n=user,r=a b', /nonce/],
      ['n,,n=user,r=abc,', /extension/],
      ['n,,n=user,r=abc,12', /extension/],
    ];
    for (const [message, detail] of cases) {
      const err = pgErrorOf(() => new ScramServerExchange(rfcSecret()).serverFirst(b(message)));
      expect(err.code, message).toBe('08P01');
      expect(err.message).toBe('malformed SCRAM message');
      expect(err.detail, message).toMatch(detail);
    }
  });

  it('refuses an authorization identity and mandatory extensions as not supported (0A000), as PostgreSQL does', () => {
    for (const message of ['n,a=admin,n=user,r=abc', 'n,,m=ext,n=user,r=abc']) {
      expect(pgErrorOf(() => new ScramServerExchange(rfcSecret()).serverFirst(b(message))).code).toBe('0A000');
    }
  });

  it('refuses a malformed client-final-message with 08P01', () => {
    const nonce = 'rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0';
    const proof = 'dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=';
    const cases: [string, RegExp][] = [
      ['', /empty/],
      [`c=biws,r=${nonce}`, /"p"/],
      [`c=biws,r=${nonce},`, /"p"/],
      [`c=biws,r=${nonce},p=`, /proof/],
      [`c=biws,r=${nonce},p=not*base64`, /proof/],
      [`c=biws,r=${nonce},p=${proof.slice(0, -4)}`, /proof/], // 30 bytes
      [`c=biws,r=${nonce},p=${proof},x=1`, /Garbage/],
      [`c=biws,r=${nonce},p=${proof},p=${proof}`, /Garbage/],
      [`r=${nonce},c=biws,p=${proof}`, /"c"/],
      [`c=biws,p=${proof}`, /"r"/],
      [`c=b!ws,r=${nonce},p=${proof}`, /channel-binding data/],
    ];
    for (const [message, detail] of cases) {
      const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
      server.serverFirst(b(RFC.clientFirst));
      const err = pgErrorOf(() => server.clientFinal(b(message)));
      expect(err.code, message).toBe('08P01');
      expect(err.detail, message).toMatch(detail);
    }
  });

  it('refuses channel-binding data or a nonce that does not match the exchange', () => {
    const cases: [string, string, RegExp][] = [
      // 'n,,' sent first, 'y,,' claimed in c=: the downgrade RFC 5802 guards against.
      [RFC.clientFirst, RFC.clientFinal.replace('c=biws', 'c=eSws'), /channel binding check failed/],
      [RFC.clientFirst.replace('n,,', 'y,,'), RFC.clientFinal, /channel binding check failed/],
      [RFC.clientFirst, RFC.clientFinal.replace('c=biws', 'c='), /channel binding check failed/],
      [RFC.clientFirst, RFC.clientFinal.replace('hNlF$k0', 'hNlF$k1'), /invalid SCRAM response/],
      [RFC.clientFirst, RFC.clientFinal.replace('r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0', 'r=rOprNGfwEbeRWgbNEkqO'), /invalid SCRAM response/],
    ];
    for (const [first, final, message] of cases) {
      const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
      server.serverFirst(b(first));
      const err = pgErrorOf(() => server.clientFinal(b(final)));
      expect(err.code).toBe('08P01');
      expect(err.message).toMatch(message);
    }
  });

  it('is used once, in order', () => {
    const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
    expect(() => server.clientFinal(b(RFC.clientFinal))).toThrow(/serverFirst/);
    server.serverFirst(b(RFC.clientFirst));
    expect(() => server.serverFirst(b(RFC.clientFirst))).toThrow(/once/);
    expect(server.clientFinal(b(RFC.clientFinal))).not.toBeNull();
    expect(() => server.clientFinal(b(RFC.clientFinal))).toThrow(/once/);
    expect(() => new ScramServerExchange(rfcSecret(), 'a,b')).toThrow(TypeError);
  });
});

describe('ScramClientExchange (pass-through with recovered keys)', () => {
  it('logs into a second server exchange on the same secret without the password', () => {
    const secret = parseScramSecret(scramVerifier('s3cret!', 4096))!;
    const keys = recoveredKeys(secret, 's3cret!');
    const backend = new ScramServerExchange(secret);
    const client = new ScramClientExchange(keys);
    const first = client.clientFirst().toString('utf8');
    expect(first).toMatch(/^n,,n=,r=[A-Za-z0-9+/]{22,}={0,2}$/);
    const result = backend.clientFinal(client.clientFinal(backend.serverFirst(Buffer.from(first))));
    expect(result).not.toBeNull();
    expect(result!.keys.clientKey).toEqual(keys.clientKey);
    expect(() => client.verifyServerFinal(result!.serverFinal)).not.toThrow();
  });

  it('sends what the RFC 7677 client sends, given the same nonce and keys', () => {
    const keys = recoveredKeys(rfcSecret(), RFC.password);
    const client = new ScramClientExchange(keys, 'rOprNGfwEbeRWgbNEkqO');
    // Our client-first carries an empty n=, so only the parts outside the AuthMessage's n= can be compared.
    expect(client.clientFirst().toString('utf8')).toBe('n,,n=,r=rOprNGfwEbeRWgbNEkqO');
    const final = client.clientFinal(b(RFC.serverFirst)).toString('utf8');
    expect(final).toMatch(/^c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj\)hNlF\$k0,p=[A-Za-z0-9+/]{43}=$/);
    // And a server with the RFC nonce accepts it and signs what the client expects.
    const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
    expect(server.serverFirst(client.clientFirst()).toString('utf8')).toBe(RFC.serverFirst);
    const result = server.clientFinal(b(final));
    expect(result).not.toBeNull();
    client.verifyServerFinal(result!.serverFinal);
  });

  it('refuses a server whose salt or iteration count differ from the keys (password changed)', () => {
    const keys = recoveredKeys(rfcSecret(), RFC.password);
    const changedSalt = RFC.serverFirst.replace('W22ZaJ0SNY7soEsUEjb6gQ==', Buffer.alloc(16, 7).toString('base64'));
    const changedIterations = RFC.serverFirst.replace('i=4096', 'i=8192');
    for (const serverFirst of [changedSalt, changedIterations]) {
      const err = pgErrorOf(() => new ScramClientExchange(keys, 'rOprNGfwEbeRWgbNEkqO').clientFinal(b(serverFirst)));
      expect(err.code).toBe('08006');
      expect(err.message).toMatch(/changed/);
    }
  });

  it('refuses a server nonce that does not extend ours, and malformed server-first messages', () => {
    const keys = recoveredKeys(rfcSecret(), RFC.password);
    const cases: [string, RegExp][] = [
      [RFC.serverFirst.replace('r=rOpr', 'r=xOpr'), /nonce/],
      ['r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096', /nonce/],
      [RFC.serverFirst.replace('$k0', '$k 0'), /nonce/],
      ['', /malformed/],
      ['m=x,' + RFC.serverFirst, /malformed/],
      [RFC.serverFirst.replace(',s=', ',x='), /malformed/],
      [RFC.serverFirst.replace('s=W22ZaJ0SNY7soEsUEjb6gQ==', 's=*'), /malformed/],
      [RFC.serverFirst.replace('s=W22ZaJ0SNY7soEsUEjb6gQ==', 's='), /malformed/],
      [RFC.serverFirst.replace('i=4096', 'i=04096'), /malformed/],
      [RFC.serverFirst.replace('i=4096', 'i=x'), /malformed/],
      [RFC.serverFirst.replace(',i=4096', ''), /malformed/],
    ];
    for (const [serverFirst, message] of cases) {
      const err = pgErrorOf(() => new ScramClientExchange(keys, 'rOprNGfwEbeRWgbNEkqO').clientFinal(b(serverFirst)));
      expect(err.code, serverFirst).toBe('08006');
      expect(err.message, serverFirst).toMatch(message);
    }
  });

  it('refuses a wrong server signature or a server error', () => {
    const keys = recoveredKeys(rfcSecret(), RFC.password);
    const client = () => {
      const c = new ScramClientExchange(keys, 'rOprNGfwEbeRWgbNEkqO');
      c.clientFinal(b(RFC.serverFirst));
      return c;
    };
    const server = new ScramServerExchange(rfcSecret(), RFC.serverNonce);
    server.serverFirst(b('n,,n=,r=rOprNGfwEbeRWgbNEkqO'));
    const c = client();
    const right = server.clientFinal(c.clientFinal(b(RFC.serverFirst)))!.serverFinal;
    c.verifyServerFinal(right);
    const wrong = Buffer.from(right.toString('utf8').slice(2), 'base64');
    wrong[31]! ^= 0x80;
    for (const [final, message] of [
      [`v=${wrong.toString('base64')}`, /incorrect server signature/],
      // The RFC's signature belongs to another AuthMessage (n=user): a replayed signature is no good.
      [RFC.serverFinal, /incorrect server signature/],
      ['v=AAAA', /incorrect server signature/],
      ['e=invalid-proof', /refused.*invalid-proof/],
      ['x=1', /malformed/],
    ] as const) {
      const err = pgErrorOf(() => client().verifyServerFinal(b(final)));
      expect(err.code).toBe('08006');
      expect(err.message).toMatch(message);
    }
    expect(() => new ScramClientExchange(keys).verifyServerFinal(right)).toThrow(/clientFinal/);
  });
});

describe('MD5', () => {
  // md5 secret = 'md5' + md5(password || username), as PostgreSQL stores it.
  const secret = 'md5' + createHash('md5').update('secretalice').digest('hex');
  const salt = Buffer.from([0x01, 0x02, 0xfe, 0xff]);
  const expected = 'md5' + createHash('md5').update(Buffer.concat([Buffer.from(secret.slice(3)), salt])).digest('hex');

  it('recognises MD5 secrets only', () => {
    expect(isMd5Secret(secret)).toBe(true);
    expect(isMd5Secret(secret.toUpperCase())).toBe(false);
    expect(isMd5Secret(secret.replace('md5', 'MD5'))).toBe(false);
    expect(isMd5Secret(secret.slice(0, -1))).toBe(false);
    expect(isMd5Secret(secret + '0')).toBe(false);
    expect(isMd5Secret(scramVerifier('x'))).toBe(false);
    expect(isMd5Secret('md5' + 'g'.repeat(32))).toBe(false);
  });

  it('answers the challenge from the secret as a client with the password would', () => {
    expect(md5Response(secret, salt)).toBe(expected);
    // libpq's computation from the password itself, for good measure.
    const fromPassword = createHash('md5').update('secret' + 'alice').digest('hex');
    expect(md5Response(secret, salt)).toBe('md5' + createHash('md5').update(Buffer.concat([Buffer.from(fromPassword), salt])).digest('hex'));
    expect(() => md5Response('plain', salt)).toThrow(TypeError);
    expect(() => md5Response(secret, Buffer.alloc(3))).toThrow(RangeError);
  });

  it('verifies a client reply', () => {
    expect(verifyMd5Response(secret, salt, expected)).toBe(true);
    expect(verifyMd5Response(secret, Buffer.from([1, 2, 3, 4]), expected)).toBe(false);
    expect(verifyMd5Response(secret, salt, expected.slice(0, -1) + (expected.endsWith('0') ? '1' : '0'))).toBe(false);
    expect(verifyMd5Response(secret, salt, expected.toUpperCase())).toBe(false);
    expect(verifyMd5Response(secret, salt, expected + 'x')).toBe(false);
    expect(verifyMd5Response(secret, salt, '')).toBe(false);
    expect(verifyMd5Response(secret, salt, 'secret')).toBe(false);
  });
});

describe('channel binding (SCRAM-SHA-256-PLUS)', () => {
  const endPoint = createHash('sha256').update('the proxy certificate').digest();
  const plus = { offered: true, selected: true, endPoint };
  const exchange = (binding: { offered: boolean; selected: boolean; endPoint: Buffer | null }, gs2: string, cbind?: Buffer) => {
    const client = passwordClient(RFC.password, undefined, gs2, cbind);
    const server = new ScramServerExchange(rfcSecret(), undefined, binding);
    return () => server.clientFinal(client.final(server.serverFirst(client.first())));
  };

  it('accepts a client bound to the same certificate, and recovers the same keys', () => {
    const result = exchange(plus, 'p=tls-server-end-point,,', endPoint)();
    expect(result).not.toBeNull();
    expect(result!.keys.clientKey).toEqual(recoveredKeys(rfcSecret(), RFC.password).clientKey);
  });

  it('refuses binding data for another certificate: the client talks to someone else', () => {
    const err = pgErrorOf(exchange(plus, 'p=tls-server-end-point,,', createHash('sha256').update('a man in the middle').digest()));
    expect(err).toMatchObject({ code: '08P01', message: 'SCRAM channel binding check failed' });
  });

  it('refuses -PLUS without binding data, and binding types other than tls-server-end-point', () => {
    expect(pgErrorOf(exchange(plus, 'n,,')).code).toBe('08P01');
    const err = pgErrorOf(exchange(plus, 'p=tls-unique,,'));
    expect(`${err.code} ${err.detail}`).toMatch(/^08P01 unsupported SCRAM channel-binding type/);
  });

  it('treats "y" as a downgrade when -PLUS was offered, and as honest when it was not', () => {
    const err = pgErrorOf(exchange({ offered: true, selected: false, endPoint }, 'y,,'));
    expect(err).toMatchObject({ code: '08P01', message: 'SCRAM channel binding negotiation error' });
    expect(exchange({ offered: false, selected: false, endPoint: null }, 'y,,')()).not.toBeNull();
  });
});
