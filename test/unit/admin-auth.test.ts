// The admin API's bearer-token check, and which listen addresses may run without a configured token.
import { describe, expect, it } from 'vitest';
import { adminToken, bearerCheck, isLoopback } from '../../src/admin/auth.js';
import { ConfigError } from '../../src/config.js';

const TOKEN = 's3cret-Token_value';

describe('bearerCheck', () => {
  const check = bearerCheck(TOKEN);

  it('accepts the token under the Bearer scheme, in any case, with the spaces it tolerates', () => {
    for (const header of [`Bearer ${TOKEN}`, `bearer ${TOKEN}`, `BEARER ${TOKEN}`, `bEaReR ${TOKEN}`, `Bearer   ${TOKEN}`, `Bearer ${TOKEN}  `]) {
      expect(check(header), JSON.stringify(header)).toBe(true);
    }
  });

  it('refuses a missing header, an empty token and a wrong token', () => {
    for (const header of [undefined, '', 'Bearer', 'Bearer ', 'Bearer    ', 'Bearer wrong', `Bearer ${TOKEN.toUpperCase()}`]) {
      expect(check(header), JSON.stringify(header)).toBe(false);
    }
  });

  it('refuses a prefix or an extension of the token', () => {
    for (const header of [`Bearer ${TOKEN.slice(0, -1)}`, `Bearer ${TOKEN.slice(0, 1)}`, `Bearer ${TOKEN}x`, `Bearer x${TOKEN}`, `Bearer ${TOKEN} ${TOKEN}`, `Bearer ${TOKEN}\tx`]) {
      expect(check(header), JSON.stringify(header)).toBe(false);
    }
  });

  it('refuses other schemes and a bare token', () => {
    const basic = Buffer.from(`admin:${TOKEN}`).toString('base64');
    for (const header of [TOKEN, `Basic ${basic}`, `Basic ${TOKEN}`, `Token ${TOKEN}`, `Bearer:${TOKEN}`, `Bearer${TOKEN}`, `XBearer ${TOKEN}`, `Bearer-${TOKEN}`]) {
      expect(check(header), JSON.stringify(header)).toBe(false);
    }
  });

  it('never accepts an empty header for any token, not even a token that looks empty', () => {
    // The missing-header path compares a digest of '' so its cost matches; it must still refuse.
    expect(bearerCheck('x')(undefined)).toBe(false);
    expect(bearerCheck('x')('')).toBe(false);
    expect(bearerCheck('x')('Bearer x')).toBe(true);
  });

  it('keeps separate checkers for separate tokens', () => {
    const other = bearerCheck('another-token');
    expect(other(`Bearer ${TOKEN}`)).toBe(false);
    expect(other('Bearer another-token')).toBe(true);
    expect(check('Bearer another-token')).toBe(false);
  });
});

describe('adminToken', () => {
  const LOOPBACK = ['127.0.0.1', '127.0.0.5', '127.255.255.254', '::1', 'localhost'];
  const EXPOSED = ['0.0.0.0', '::', '10.0.0.1', '192.168.1.20', 'admin.example.com', 'localhost.example.com', '128.0.0.1', '::ffff:10.0.0.1'];

  it('makes a fresh random token for a loopback address without one', () => {
    for (const host of LOOPBACK) {
      expect(isLoopback(host), host).toBe(true);
      const a = adminToken({ host, port: 9187 }, undefined);
      const b = adminToken({ host, port: 9187 }, undefined);
      expect(a.generated).toBe(true);
      // Long enough not to be guessed: 24 random bytes in base64url.
      expect(a.token).toMatch(/^[A-Za-z0-9_-]{32,}$/);
      expect(b.token).not.toBe(a.token);
      // The generated token is what a client must then send.
      expect(bearerCheck(a.token)(`Bearer ${a.token}`)).toBe(true);
    }
  });

  it('treats an empty configured token as none', () => {
    expect(adminToken({ host: '127.0.0.1', port: 9187 }, '').generated).toBe(true);
    expect(() => adminToken({ host: '0.0.0.0', port: 9187 }, '')).toThrow(ConfigError);
  });

  it('refuses a non-loopback address without a token, naming --admin-token', () => {
    for (const host of EXPOSED) {
      expect(isLoopback(host), host).toBe(false);
      let thrown: unknown;
      try {
        adminToken({ host, port: 9187 }, undefined);
      } catch (err) {
        thrown = err;
      }
      expect(thrown, host).toBeInstanceOf(ConfigError);
      expect((thrown as Error).message).toContain('--admin-token');
      expect((thrown as Error).message).toContain(host);
    }
  });

  it('refuses a configured token that could not be sent in an Authorization header', () => {
    for (const bad of ['two words', 'tab\there', 'semi;colon', 'quote"d']) {
      expect(() => adminToken({ host: '127.0.0.1', port: 6480 }, bad), bad).toThrow(ConfigError);
    }
    expect(adminToken({ host: '127.0.0.1', port: 6480 }, 'abc.DEF-123_~+/==').token).toBe('abc.DEF-123_~+/==');
  });

  it('uses a configured token as given, on any address', () => {
    for (const host of [...LOOPBACK, ...EXPOSED]) {
      expect(adminToken({ host, port: 9187 }, 'configured-Token.1~')).toEqual({ token: 'configured-Token.1~', generated: false });
    }
  });
});
