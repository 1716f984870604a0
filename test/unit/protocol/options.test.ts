// The startup "options" string: PostgreSQL's splitting and escaping, accepted forms, round trips.
import { describe, expect, it } from 'vitest';
import { PgError } from '../../../src/proxy/errors.js';
import {
  formatStartupOptions,
  parseStartupOptions,
  splitStartupOptions,
  type StartupOption,
} from '../../../src/proxy/protocol/options.js';
import { prng } from './bytes.js';

describe('splitStartupOptions', () => {
  it.each<[string, string[]]>([
    ['', []],
    ['   \t ', []],
    ['-c a=b', ['-c', 'a=b']],
    ['  -c   a=b  \t--x=y\n', ['-c', 'a=b', '--x=y']],
    ['-c x=a\\ b', ['-c', 'x=a b']],
    ['-c x=a\\\\b', ['-c', 'x=a\\b']],
    ['-c x=a\\\\ b', ['-c', 'x=a\\', 'b']],
    ['-c x=\\a\\=', ['-c', 'x=a=']],
    ['-c x=a\\\tb', ['-c', 'x=a\tb']],
    ['-c x=a\\', ['-c', 'x=a']], // trailing lone backslash dropped, as PostgreSQL does
  ])('%j', (input, args) => {
    expect(splitStartupOptions(input)).toEqual(args);
  });
});

describe('parseStartupOptions', () => {
  it('accepts -c name=value, -cname=value and --name=value', () => {
    expect(parseStartupOptions('-c search_path=foo --statement_timeout=5s -c x=a\\ b -cwork_mem=4MB')).toEqual([
      { name: 'search_path', value: 'foo' },
      { name: 'statement_timeout', value: '5s' },
      { name: 'x', value: 'a b' },
      { name: 'work_mem', value: '4MB' },
    ]);
  });

  it('normalises names like PostgreSQL: ASCII lower case, dashes to underscores; values untouched', () => {
    expect(parseStartupOptions('-c Search-Path=Foo --SESSION-AUTHORIZATION=Bob -c app.Tenant_ID=X')).toEqual([
      { name: 'search_path', value: 'Foo' },
      { name: 'session_authorization', value: 'Bob' },
      { name: 'app.tenant_id', value: 'X' },
    ]);
    // The Kelvin sign is not 'k' to PostgreSQL, so it must not become one here.
    expect(parseStartupOptions('-c \u212Aey=1')).toEqual([{ name: '\u212Aey', value: '1' }]);
  });

  it('keeps everything after the first = as the value, including empty values', () => {
    expect(parseStartupOptions('-c a=b=c -c e= --f==')).toEqual([
      { name: 'a', value: 'b=c' },
      { name: 'e', value: '' },
      { name: 'f', value: '=' },
    ]);
  });

  it('takes the argument after -c whatever it looks like', () => {
    expect(parseStartupOptions('-c -x=1')).toEqual([{ name: '_x', value: '1' }]);
  });

  it.each([
    ['-b', /unsupported argument "-b"/],
    ['foo', /unsupported argument "foo"/],
    ['-c a=b bare', /unsupported argument "bare"/],
    ['-B 128', /unsupported argument "-B"/],
    ['-c', /-c requires a value/],
    ['-c search_path', /search_path requires a value/],
    ['-csearch_path', /search_path requires a value/],
    ['--search_path', /search_path requires a value/],
    ['--', /requires a value/],
    ['-c =x', /empty setting name/],
    ['--=x', /empty setting name/],
  ])('rejects %j with 08P01', (input, message) => {
    let caught: unknown;
    try {
      parseStartupOptions(input);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(PgError);
    expect((caught as PgError).code).toBe('08P01');
    expect((caught as PgError).message).toMatch(message);
  });
});

describe('formatStartupOptions', () => {
  it('escapes backslashes and whitespace', () => {
    expect(
      formatStartupOptions([
        { name: 'search_path', value: 'acme' },
        { name: 'x', value: 'a b\\c\td' },
      ]),
    ).toBe('-c search_path=acme -c x=a\\ b\\\\c\\\td');
    expect(formatStartupOptions([])).toBe('');
  });

  it('refuses names that could not be parsed back', () => {
    expect(() => formatStartupOptions([{ name: 'a=b', value: 'c' }])).toThrow(TypeError);
    expect(() => formatStartupOptions([{ name: '', value: 'c' }])).toThrow(TypeError);
    expect(() => formatStartupOptions([{ name: 'a', value: 'c\0' }])).toThrow(TypeError);
  });

  it('round-trips through parseStartupOptions (seeded random settings)', () => {
    const random = prng(7);
    const alphabet = ['a', 'Z', '_', '.', '=', ' ', '\t', '\n', '\\', '-', ',', "'", '"', 'é', '漢', '\r', '\v', '\f'];
    const word = (max: number) =>
      Array.from({ length: Math.floor(random() * max) }, () => alphabet[Math.floor(random() * alphabet.length)]).join('');
    for (let i = 0; i < 300; i++) {
      const list: StartupOption[] = Array.from({ length: Math.floor(random() * 4) }, () => ({
        // Names as parse produces them: normalised, no '='; 'n' keeps them non-empty.
        name: `n${word(6)}`.replace(/[A-Z]/g, (c) => c.toLowerCase()).replaceAll('-', '_').replaceAll('=', ''),
        value: word(10),
      }));
      expect(parseStartupOptions(formatStartupOptions(list))).toEqual(list);
    }
  });
});
