import { describe, expect, it } from 'vitest';
import { upstreamTarget } from '../../src/proxy/upstream.js';

describe('upstreamTarget', () => {
  it('reads host, port and sslmode (libpq default prefer)', () => {
    expect(upstreamTarget('postgres://u:p@db.internal:6543/app')).toEqual({ host: 'db.internal', port: 6543, socketPath: null, sslmode: 'prefer' });
    expect(upstreamTarget('postgresql://u@127.0.0.1/app?sslmode=require').sslmode).toBe('require');
  });

  it('defaults the port to 5432 and unwraps IPv6 hosts', () => {
    expect(upstreamTarget('postgres://u@[::1]/app')).toMatchObject({ host: '::1', port: 5432 });
  });

  it('takes a Unix socket directory from ?host=, without TLS', () => {
    expect(upstreamTarget('postgresql:///app?host=/var/run/postgresql&port=5433&sslmode=require')).toEqual({
      host: '/var/run/postgresql',
      port: 5433,
      socketPath: '/var/run/postgresql/.s.PGSQL.5433',
      sslmode: 'disable',
    });
  });

  it('refuses what is not a URL', () => {
    expect(() => upstreamTarget('host=db user=x')).toThrow(/not a valid postgres:\/\/ URL/);
  });

  it('refuses an unknown sslmode', () => {
    expect(() => upstreamTarget('postgres://u@h/app?sslmode=maybe')).toThrow(/unknown sslmode 'maybe'/);
  });
});
