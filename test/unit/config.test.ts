import { describe, expect, it } from 'vitest';
import { ConfigError, envName, flagName, parseHostPort, resolveConfig } from '../../src/config.js';

describe('resolveConfig', () => {
  it('applies defaults and freezes the result', () => {
    const c = resolveConfig({});
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 6432 });
    expect(c.adminListen).toEqual({ host: '127.0.0.1', port: 6480 });
    expect(c.isolation).toBe('role');
    expect(c.poolMode).toBe('session');
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('takes flags over environment over file', () => {
    const file = { isolation: 'schema', listen: '0.0.0.0:1' };
    const env = { PGTENANT_LISTEN: '127.0.0.1:2', PGTENANT_CONNECT_TIMEOUT: '250' };
    const c = resolveConfig({ file, env, flags: { listen: '127.0.0.1:3' } });
    expect(c.isolation).toBe('schema');
    expect(c.listen.port).toBe(3);
    expect(c.connectTimeout).toBe(250);
    expect(resolveConfig({ file, env }).listen.port).toBe(2);
  });

  it('falls back to DATABASE_URL for the upstream', () => {
    expect(resolveConfig({ env: { DATABASE_URL: 'postgres://a@b/c' } }).upstream).toBe('postgres://a@b/c');
    expect(resolveConfig({ env: { DATABASE_URL: 'x', PGTENANT_UPSTREAM: 'y' } }).upstream).toBe('y');
  });

  it('turns admin listen off', () => {
    expect(resolveConfig({ flags: { adminListen: 'off' } }).adminListen).toBeNull();
  });

  it.each([
    [{ flags: { isolation: 'tenant' } }, /isolation: expected one of role, schema/],
    [{ env: { PGTENANT_CONNECT_TIMEOUT: 'soon' } }, /PGTENANT_CONNECT_TIMEOUT: expected a non-negative number/],
    [{ flags: { listen: 'localhost' } }, /--listen: expected host:port/],
    [{ flags: { listen: '1.2.3.4:70000' } }, /--listen/],
    [{ flags: { tlsCert: 'c.pem' } }, /--tls-cert and --tls-key go together/],
    [{ flags: { clientTls: 'require' } }, /--client-tls require needs/],
    [{ file: { listn: 'x' } }, /unknown option 'listn'/],
    [{ flags: { workers: 0 } }, /--workers: expected a whole number from 1 to 64/],
    [{ flags: { workers: 65 } }, /--workers/],
    [{ env: { PGTENANT_WORKERS: '1.5' } }, /--workers/],
  ])('refuses bad input %#', (sources, message) => {
    expect(() => resolveConfig(sources)).toThrow(ConfigError);
    expect(() => resolveConfig(sources)).toThrow(message);
  });
});

describe('names and addresses', () => {
  it('derives env and flag names from option names', () => {
    expect(envName('adminListen')).toBe('PGTENANT_ADMIN_LISTEN');
    expect(flagName('tlsCert')).toBe('tls-cert');
  });

  it('parses IPv6 and empty hosts', () => {
    expect(parseHostPort('[::1]:5', 'x')).toEqual({ host: '::1', port: 5 });
    expect(parseHostPort(':7', 'x')).toEqual({ host: '127.0.0.1', port: 7 });
  });
});
