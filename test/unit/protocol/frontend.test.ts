// Parsing of the client's authentication messages: PasswordMessage, SASLInitialResponse, SASLResponse.
import { describe, expect, it } from 'vitest';
import { PgError } from '../../../src/proxy/errors.js';
import {
  parsePasswordMessage,
  parseSASLInitialResponse,
  parseSASLResponse,
} from '../../../src/proxy/protocol/frontend.js';
import { hex } from './bytes.js';

const violation = (f: () => unknown, message: string | RegExp) => {
  let caught: unknown;
  try {
    f();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(PgError);
  expect((caught as PgError).code).toBe('08P01');
  expect((caught as PgError).message).toMatch(message);
};

describe('parsePasswordMessage', () => {
  it('reads the password string', () => {
    expect(parsePasswordMessage(hex('"s3cret"', '00'))).toBe('s3cret');
    expect(parsePasswordMessage(hex('00'))).toBe('');
    expect(parsePasswordMessage(Buffer.from('pässwörd\0'))).toBe('pässwörd');
  });

  it('requires exactly one terminator, as the last byte', () => {
    violation(() => parsePasswordMessage(hex('"abc"')), 'invalid password packet size');
    violation(() => parsePasswordMessage(hex('')), 'invalid password packet size');
    violation(() => parsePasswordMessage(hex('"abc"', '00 78')), 'invalid password packet size');
    violation(() => parsePasswordMessage(hex('"a"', '00', '"b"', '00')), 'invalid password packet size');
  });

  it('rejects invalid UTF-8', () => {
    violation(() => parsePasswordMessage(hex('ff fe 00')), /UTF8/);
  });
});

describe('parseSASLInitialResponse', () => {
  it('reads mechanism and response', () => {
    const body = hex('"SCRAM-SHA-256"', '00 00 00 00 0a', '"n,,n=,r=ab"');
    expect(parseSASLInitialResponse(body)).toEqual({ mechanism: 'SCRAM-SHA-256', response: Buffer.from('n,,n=,r=ab') });
  });

  it('reads -1 as no response and 0 as an empty one', () => {
    expect(parseSASLInitialResponse(hex('"M"', '00 ff ff ff ff'))).toEqual({ mechanism: 'M', response: null });
    expect(parseSASLInitialResponse(hex('"M"', '00 00 00 00 00'))).toEqual({ mechanism: 'M', response: Buffer.alloc(0) });
  });

  it.each([
    ['no mechanism terminator', hex('"SCRAM-SHA-256"')],
    ['no length', hex('"M"', '00 00 00')],
    ['length longer than the data', hex('"M"', '00 00 00 00 05 61 62')],
    ['data longer than the length', hex('"M"', '00 00 00 00 01 61 62')],
    ['negative length other than -1', hex('"M"', '00 ff ff ff fe')],
    ['bytes after a -1 length', hex('"M"', '00 ff ff ff ff 61')],
  ])('rejects %s', (_name, body) => {
    violation(() => parseSASLInitialResponse(body), 'malformed SASLInitialResponse message');
  });
});

describe('parseSASLResponse', () => {
  it('is the whole body', () => {
    const body = Buffer.from('c=biws,r=abc,p=xyz');
    expect(parseSASLResponse(body)).toEqual(Buffer.from('c=biws,r=abc,p=xyz'));
  });
});
