// BackendWriter output checked byte by byte against the spec, then decoded by pg-protocol's Parser.
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { describe, expect, it } from 'vitest';
import { PgError, invalidPassword } from '../../../src/proxy/errors.js';
import { BackendWriter, errorResponseFor } from '../../../src/proxy/protocol/writer.js';
import { hex } from './bytes.js';

const w = new BackendWriter(8); // small, so growth is exercised too

describe('BackendWriter bytes', () => {
  const cases: Array<[string, (w: BackendWriter) => BackendWriter, Buffer]> = [
    ['AuthenticationOk', (w) => w.authenticationOk(), hex('52 00 00 00 08 00 00 00 00')],
    ['AuthenticationCleartextPassword', (w) => w.authenticationCleartextPassword(), hex('52 00 00 00 08 00 00 00 03')],
    [
      'AuthenticationMD5Password',
      (w) => w.authenticationMD5Password(hex('01 02 03 fe')),
      hex('52 00 00 00 0c 00 00 00 05 01 02 03 fe'),
    ],
    [
      'AuthenticationSASL',
      (w) => w.authenticationSASL(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS']),
      hex('52 00 00 00 2a 00 00 00 0a', '"SCRAM-SHA-256"', '00', '"SCRAM-SHA-256-PLUS"', '00 00'),
    ],
    ['AuthenticationSASL (none)', (w) => w.authenticationSASL([]), hex('52 00 00 00 09 00 00 00 0a 00')],
    [
      'AuthenticationSASLContinue',
      (w) => w.authenticationSASLContinue(Buffer.from('r=abc')),
      hex('52 00 00 00 0d 00 00 00 0b', '"r=abc"'),
    ],
    [
      'AuthenticationSASLFinal',
      (w) => w.authenticationSASLFinal(Buffer.from('v=xyz')),
      hex('52 00 00 00 0d 00 00 00 0c', '"v=xyz"'),
    ],
    [
      'ParameterStatus',
      (w) => w.parameterStatus('client_encoding', 'UTF8'),
      hex('53 00 00 00 19', '"client_encoding"', '00', '"UTF8"', '00'),
    ],
    ['ParameterStatus (UTF-8)', (w) => w.parameterStatus('x', 'é'), hex('53 00 00 00 09 78 00 c3 a9 00')],
    [
      'BackendKeyData',
      (w) => w.backendKeyData(1234, 0xdeadbeef),
      hex('4b 00 00 00 0c 00 00 04 d2 de ad be ef'),
    ],
    ['BackendKeyData (signed key)', (w) => w.backendKeyData(1, -1), hex('4b 00 00 00 0c 00 00 00 01 ff ff ff ff')],
    ['ReadyForQuery I', (w) => w.readyForQuery('I'), hex('5a 00 00 00 05 49')],
    ['ReadyForQuery T', (w) => w.readyForQuery('T'), hex('5a 00 00 00 05 54')],
    ['ReadyForQuery E', (w) => w.readyForQuery('E'), hex('5a 00 00 00 05 45')],
    [
      'ErrorResponse',
      (w) => w.errorResponse({ severity: 'FATAL', code: '28P01', message: 'bad' }),
      hex('45 00 00 00 1f', '"SFATAL"', '00', '"VFATAL"', '00', '"C28P01"', '00', '"Mbad"', '00 00'),
    ],
    [
      'ErrorResponse with detail and hint',
      (w) => w.errorResponse({ severity: 'FATAL', code: '28P01', message: 'bad', detail: 'd', hint: 'h' }),
      hex('45 00 00 00 25', '"SFATAL"', '00', '"VFATAL"', '00', '"C28P01"', '00', '"Mbad"', '00', '"Dd"', '00', '"Hh"', '00 00'),
    ],
    [
      'NoticeResponse',
      (w) => w.noticeResponse({ severity: 'NOTICE', code: '00000', message: 'hi', hint: 'h' }),
      hex('4e 00 00 00 23', '"SNOTICE"', '00', '"VNOTICE"', '00', '"C00000"', '00', '"Mhi"', '00', '"Hh"', '00 00'),
    ],
    [
      'NegotiateProtocolVersion',
      (w) => w.negotiateProtocolVersion(0, ['_pq_.foo']),
      hex('76 00 00 00 15 00 03 00 00 00 00 00 01', '"_pq_.foo"', '00'),
    ],
    [
      'NegotiateProtocolVersion (no options)',
      (w) => w.negotiateProtocolVersion(0, []),
      hex('76 00 00 00 0c 00 03 00 00 00 00 00 00'),
    ],
  ];

  it.each(cases)('%s', (_name, write, expected) => {
    expect(write(w).flush()).toEqual(expected);
  });

  it('chains messages into one flush, then starts empty', () => {
    const out = w.authenticationOk().parameterStatus('a', 'b').readyForQuery('I').flush();
    expect(out).toEqual(Buffer.concat([cases[0]![2], hex('53 00 00 00 08 61 00 62 00'), hex('5a 00 00 00 05 49')]));
    expect(w.flush()).toEqual(Buffer.alloc(0));
  });

  it('returns a copy that later writes do not touch', () => {
    const first = w.readyForQuery('I').flush();
    w.readyForQuery('E').flush();
    expect(first).toEqual(hex('5a 00 00 00 05 49'));
  });

  it('grows for large payloads', () => {
    const data = Buffer.alloc(100_000, 0x61);
    const out = w.authenticationSASLContinue(data).flush();
    expect(out.length).toBe(9 + data.length);
    expect(out.readInt32BE(1)).toBe(8 + data.length);
    expect(out.subarray(9)).toEqual(data);
  });

  it('rejects bad input without leaving a partial message behind', () => {
    w.readyForQuery('I');
    expect(() => w.parameterStatus('a', 'b\0c')).toThrow(TypeError);
    expect(() => w.authenticationSASL(['ok', 'x\0'])).toThrow(TypeError);
    expect(() => w.authenticationMD5Password(Buffer.alloc(3))).toThrow(RangeError);
    expect(() => w.backendKeyData(1, 2 ** 32)).toThrow(RangeError);
    expect(() => w.backendKeyData(1.5, 1)).toThrow(RangeError);
    expect(() => w.negotiateProtocolVersion(-1, [])).toThrow(RangeError);
    expect(w.flush()).toEqual(hex('5a 00 00 00 05 49'));
  });

  it('drops NUL from error text instead of breaking the frame', () => {
    const out = w.errorResponse({ severity: 'ERROR', code: 'XX000', message: 'a\0b' }).flush();
    expect(out).toEqual(hex('45 00 00 00 1e', '"SERROR"', '00', '"VERROR"', '00', '"CXX000"', '00', '"Mab"', '00 00'));
  });
});

/** Decodes with the independent pg-protocol parser (the one node-postgres uses). */
function decode(bytes: Buffer): BackendMessage[] {
  const messages: BackendMessage[] = [];
  new Parser().parse(bytes, (m) => messages.push(m));
  return messages;
}

describe('BackendWriter decoded by pg-protocol', () => {
  it('round-trips a whole login sequence', () => {
    const out = new BackendWriter()
      .authenticationSASL(['SCRAM-SHA-256'])
      .authenticationSASLContinue(Buffer.from('r=nonce,s=c2FsdA==,i=4096'))
      .authenticationSASLFinal(Buffer.from('v=proof'))
      .authenticationMD5Password(hex('0a 0b 0c 0d'))
      .authenticationCleartextPassword()
      .authenticationOk()
      .parameterStatus('server_version', '17.0 (pgtenant)')
      .backendKeyData(4242, 0x7fffffff)
      .noticeResponse({ severity: 'WARNING', code: '01000', message: 'careful', detail: 'more' })
      .readyForQuery('T')
      .flush();
    const m = decode(out) as unknown as Array<Record<string, unknown>>;
    expect(m.map((x) => x['name'])).toEqual([
      'authenticationSASL',
      'authenticationSASLContinue',
      'authenticationSASLFinal',
      'authenticationMD5Password',
      'authenticationCleartextPassword',
      'authenticationOk',
      'parameterStatus',
      'backendKeyData',
      'notice',
      'readyForQuery',
    ]);
    expect(m[0]).toMatchObject({ mechanisms: ['SCRAM-SHA-256'] });
    expect(m[1]).toMatchObject({ data: 'r=nonce,s=c2FsdA==,i=4096' });
    expect(m[2]).toMatchObject({ data: 'v=proof' });
    expect(m[3]).toMatchObject({ salt: hex('0a 0b 0c 0d') });
    expect(m[6]).toMatchObject({ parameterName: 'server_version', parameterValue: '17.0 (pgtenant)' });
    expect(m[7]).toMatchObject({ processID: 4242, secretKey: 0x7fffffff });
    expect(m[8]).toMatchObject({ severity: 'WARNING', code: '01000', message: 'careful', detail: 'more' });
    expect(m[9]).toMatchObject({ status: 'T' });
    expect(m.every((x) => typeof x['length'] === 'number')).toBe(true);
  });

  it('errorResponseFor turns a PgError into an ErrorResponse clients understand', () => {
    const [err] = decode(errorResponseFor(invalidPassword('acme'))) as unknown as Array<Record<string, unknown>>;
    expect(err).toMatchObject({
      name: 'error',
      severity: 'FATAL',
      code: '28P01',
      message: 'password authentication failed for user "acme"',
      detail: undefined,
      hint: undefined,
    });
    const withHint = new PgError('57P03', 'tenant "acme" is suspended', 'FATAL', 'why', 'ask the operator');
    const [e2] = decode(errorResponseFor(withHint)) as unknown as Array<Record<string, unknown>>;
    expect(e2).toMatchObject({ code: '57P03', message: 'tenant "acme" is suspended', detail: 'why', hint: 'ask the operator' });
  });

  it('errorResponseFor gives independent buffers', () => {
    const a = errorResponseFor(new PgError('08P01', 'one'));
    const b = errorResponseFor(new PgError('08P01', 'two'));
    expect(a.toString('latin1')).toContain('Mone');
    expect(b.toString('latin1')).toContain('Mtwo');
  });
});
