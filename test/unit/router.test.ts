import { describe, expect, it } from 'vitest';
import { PgError } from '../../src/proxy/errors.js';
import { parseStartupOptions } from '../../src/proxy/protocol/options.js';
import { backendStartupParameters, identify } from '../../src/proxy/router.js';

const params = (o: Record<string, string>) => new Map(Object.entries(o));

describe('identify', () => {
  it('takes the tenant from the user in role isolation', () => {
    expect(identify(params({ user: 'acme', database: 'app' }), 'role')).toEqual({ tenantId: 'acme', loginRole: null });
  });

  it('does not split a dotted user in role isolation (no such tenant id is valid)', () => {
    expect(identify(params({ user: 'app.acme' }), 'role').tenantId).toBe('app.acme');
  });

  it('takes login role and tenant from user.tenant in schema isolation', () => {
    expect(identify(params({ user: 'app.acme' }), 'schema')).toEqual({ tenantId: 'acme', loginRole: 'app' });
  });

  it('falls back to application_name in schema isolation', () => {
    expect(identify(params({ user: 'app', application_name: 'globex' }), 'schema')).toEqual({ tenantId: 'globex', loginRole: 'app' });
  });

  it('refuses schema isolation without any tenant, with 28000', () => {
    const err = (() => {
      try {
        identify(params({ user: 'app' }), 'schema');
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(PgError);
    expect((err as PgError).code).toBe('28000');
  });

  it('refuses replication connections with 0A000', () => {
    expect(() => identify(params({ user: 'acme', replication: 'database' }), 'role')).toThrow(
      expect.objectContaining({ code: '0A000' }),
    );
  });
});

describe('backendStartupParameters', () => {
  it('logs in as the tenant role, keeps the database and the client settings', () => {
    const out = backendStartupParameters(params({ user: 'acme', database: 'app', application_name: 'web', DateStyle: 'ISO' }), 'acme', 'acme');
    expect(out.get('user')).toBe('acme');
    expect(out.get('database')).toBe('app');
    expect(out.get('application_name')).toBe('web');
    expect(out.get('DateStyle')).toBe('ISO');
    expect(parseStartupOptions(out.get('options')!)).toEqual([{ name: 'search_path', value: '"acme"' }]);
  });

  it('strips search_path, role and session_authorization given as startup parameters, in any case', () => {
    const out = backendStartupParameters(
      params({ user: 'acme', search_path: 'globex', ROLE: 'globex', Session_Authorization: 'postgres' }),
      'acme',
      'acme',
    );
    expect([...out.keys()].sort()).toEqual(['options', 'user']);
  });

  it('strips protected settings from options, keeps the rest, and puts the tenant search_path last', () => {
    const client = params({
      user: 'acme',
      options: '-c search_path=globex --role=globex -c statement_timeout=5s -cSESSION_AUTHORIZATION=postgres --search-path=public',
    });
    const opts = parseStartupOptions(backendStartupParameters(client, 'acme', 'acme').get('options')!);
    expect(opts).toEqual([
      { name: 'statement_timeout', value: '5s' },
      { name: 'search_path', value: '"acme"' },
    ]);
  });

  it('uses the login role given (schema isolation) and the tenant schema', () => {
    const out = backendStartupParameters(params({ user: 'app.acme' }), 'app', 'acme');
    expect(out.get('user')).toBe('app');
    expect(out.get('options')).toBe('-c search_path="acme"');
  });

  it('drops protocol extension parameters (_pq_.*): the backend speaks plain 3.0', () => {
    const out = backendStartupParameters(params({ user: 'acme', '_pq_.compression': 'on' }), 'acme', 'acme');
    expect([...out.keys()].sort()).toEqual(['options', 'user']);
  });

  it('drops replication, and the original user name', () => {
    const out = backendStartupParameters(params({ user: 'app.acme', replication: 'false' }), 'app', 'acme');
    expect(out.has('replication')).toBe(false);
    expect(out.get('user')).toBe('app');
  });

  it('refuses malformed options with 08P01', () => {
    expect(() => backendStartupParameters(params({ user: 'acme', options: '-b' }), 'acme', 'acme')).toThrow(
      expect.objectContaining({ code: '08P01' }),
    );
  });
});
