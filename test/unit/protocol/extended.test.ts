// Statement names in Parse, Bind, Describe and Close frames: read, rewritten with the length fixed, and refused when malformed.
import { describe, expect, it } from 'vitest';
import { bindStatementName, closeStatementFrame, describedName, parseName, renamed } from '../../../src/proxy/protocol/extended.js';
import { serverStatementName } from '../../../src/proxy/statements.js';
import { hex } from './bytes.js';

/** A frame as a client writes it: type, Int32 length (itself included), body. */
function frame(type: string, ...body: Buffer[]): Buffer {
  const b = Buffer.concat(body);
  const len = Buffer.alloc(4);
  len.writeInt32BE(b.length + 4);
  return Buffer.concat([Buffer.from(type), len, b]);
}
const cstr = (s: string) => Buffer.from(s + '\0', 'latin1');
const int16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};

const parse = (name: string, sql: string, types: number[] = []) => frame('P', cstr(name), cstr(sql), int16(types.length), ...types.map(int32));
const bind = (portal: string, statement: string) => frame('B', cstr(portal), cstr(statement), int16(0), int16(0), int16(0));

describe('reading names', () => {
  it('finds the statement name of a Parse, and the empty name of an unnamed one', () => {
    expect(parseName(parse('s1', 'SELECT 1'))).toEqual({ name: 's1', start: 5, end: 7 });
    expect(parseName(parse('', 'SELECT 1')).name).toBe('');
  });

  it('finds the statement name of a Bind after its portal name', () => {
    const at = bindStatementName(bind('p1', 'stmt'));
    expect(at).toEqual({ name: 'stmt', start: 8, end: 12 });
  });

  it('tells statement from portal in Describe and Close', () => {
    expect(describedName(frame('D', Buffer.from('S'), cstr('s1')))).toMatchObject({ kind: 0x53, name: 's1' });
    expect(describedName(frame('C', Buffer.from('P'), cstr('')))).toMatchObject({ kind: 0x50, name: '' });
  });

  it('keeps any byte of a name as it is (latin1 round trip)', () => {
    const name = Buffer.from([0xc3, 0xa9, 0xff]).toString('latin1');
    const f = parse(name, 'SELECT 1');
    expect(parseName(f).name).toBe(name);
    expect(renamed(f, parseName(f), name).equals(f)).toBe(true);
  });

  it('refuses unterminated names with 08P01', () => {
    expect(() => parseName(hex('50 00 00 00 07', '"ab"'))).toThrow(expect.objectContaining({ code: '08P01' }));
    expect(() => bindStatementName(hex('42 00 00 00 07', '00', '"ab"'))).toThrow(expect.objectContaining({ code: '08P01' }));
    expect(() => describedName(hex('44 00 00 00 04'))).toThrow(expect.objectContaining({ code: '08P01' }));
  });
});

describe('renaming', () => {
  it('replaces the Parse name and fixes the length, leaving the query and parameter types as they were', () => {
    const f = parse('s1', 'SELECT $1::int', [23]);
    const out = renamed(f, parseName(f), 'pgtenant_longer_name');
    expect(out).toEqual(parse('pgtenant_longer_name', 'SELECT $1::int', [23]));
    expect(out.readInt32BE(1)).toBe(out.length - 1);
  });

  it('replaces the statement name of a Bind, not its portal', () => {
    const f = bind('portal', 'stmt');
    expect(renamed(f, bindStatementName(f), 'x')).toEqual(bind('portal', 'x'));
  });

  it('writes a Close of a statement byte by byte', () => {
    expect(closeStatementFrame('ab')).toEqual(hex('43 00 00 00 08', '"S"', '"ab"', '00'));
  });
});

describe('server statement names', () => {
  it('are the same for the same text and types, whatever the client called them, and fit in NAMEDATALEN', () => {
    const a = parse('a', 'SELECT $1', [23]);
    const b = parse('bbb', 'SELECT $1', [23]);
    const name = serverStatementName(a, parseName(a));
    expect(name).toBe(serverStatementName(b, parseName(b)));
    expect(name).toMatch(/^pgtenant_[0-9a-f]{40}$/);
    expect(Buffer.byteLength(name)).toBeLessThan(64);
  });

  it('differ when the text or the parameter types differ', () => {
    const names = [parse('s', 'SELECT $1', [23]), parse('s', 'SELECT $1', [25]), parse('s', 'SELECT $1 ', [23])].map((f) =>
      serverStatementName(f, parseName(f)),
    );
    expect(new Set(names).size).toBe(3);
  });
});
