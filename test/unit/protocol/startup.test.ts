// Startup-phase packets: byte layouts, decoding of each kind and each way a packet can be malformed.
import { describe, expect, it } from 'vitest';
import { PgError } from '../../../src/proxy/errors.js';
import { MAX_STARTUP_PACKET } from '../../../src/proxy/protocol/constants.js';
import {
  decodeStartupPacket,
  encodeCancelRequest,
  encodeStartupMessage,
} from '../../../src/proxy/protocol/startup.js';
import { hex } from './bytes.js';

/** A packet with a correct length prefix around the given bytes. */
const packet = (...parts: string[]): Buffer => {
  const body = hex(...parts);
  const out = Buffer.alloc(4 + body.length);
  out.writeInt32BE(out.length);
  body.copy(out, 4);
  return out;
};

const rejects = (p: Buffer, code: string, message: string | RegExp) => {
  let caught: unknown;
  try {
    decodeStartupPacket(p);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(PgError);
  expect((caught as PgError).code).toBe(code);
  expect((caught as PgError).message).toMatch(message);
};

describe('encoding', () => {
  it('writes a StartupMessage as the spec lays it out', () => {
    expect(encodeStartupMessage({ user: 'a' })).toEqual(hex('00 00 00 10 00 03 00 00', '"user"', '00 61 00 00'));
    expect(encodeStartupMessage(new Map([['user', 'a']]), 2)).toEqual(
      hex('00 00 00 10 00 03 00 02', '"user"', '00 61 00 00'),
    );
  });

  it('writes a CancelRequest as the spec lays it out', () => {
    expect(encodeCancelRequest(1234, hex('01 02 03 04'))).toEqual(
      hex('00 00 00 10 04 d2 16 2e 00 00 04 d2 01 02 03 04'),
    );
  });

  it('refuses what cannot be encoded', () => {
    expect(() => encodeStartupMessage({ user: 'a\0b' })).toThrow(TypeError);
    expect(() => encodeStartupMessage({ '': 'x' })).toThrow(TypeError);
    expect(() => encodeCancelRequest(1, Buffer.alloc(3))).toThrow(RangeError);
    expect(() => encodeCancelRequest(1, Buffer.alloc(257))).toThrow(RangeError);
  });
});

describe('decodeStartupPacket', () => {
  it('decodes a StartupMessage with UTF-8 parameters, keeping their order', () => {
    const p = encodeStartupMessage({ user: 'zoë', database: 'acme', options: '-c a=b', _pq_x: '1' });
    const decoded = decodeStartupPacket(p);
    expect(decoded).toEqual({
      kind: 'StartupMessage',
      minorVersion: 0,
      parameters: new Map([
        ['user', 'zoë'],
        ['database', 'acme'],
        ['options', '-c a=b'],
        ['_pq_x', '1'],
      ]),
    });
  });

  it('keeps empty values and reports minor versions for the caller to negotiate', () => {
    const decoded = decodeStartupPacket(encodeStartupMessage({ user: 'u', database: '' }, 2));
    expect(decoded).toEqual({ kind: 'StartupMessage', minorVersion: 2, parameters: new Map([['user', 'u'], ['database', '']]) });
  });

  it('decodes SSLRequest, GSSENCRequest and CancelRequest', () => {
    expect(decodeStartupPacket(hex('00 00 00 08 04 d2 16 2f'))).toEqual({ kind: 'SSLRequest' });
    expect(decodeStartupPacket(hex('00 00 00 08 04 d2 16 30'))).toEqual({ kind: 'GSSENCRequest' });
    expect(decodeStartupPacket(hex('00 00 00 10 04 d2 16 2e ff ff ff fe 0a 0b 0c 0d'))).toEqual({
      kind: 'CancelRequest',
      processId: -2,
      secretKey: hex('0a 0b 0c 0d'),
    });
  });

  it('accepts the longer cancel keys of protocol 3.2', () => {
    const key = Buffer.alloc(256, 7);
    expect(decodeStartupPacket(encodeCancelRequest(99, key))).toEqual({ kind: 'CancelRequest', processId: 99, secretKey: key });
    expect(decodeStartupPacket(encodeCancelRequest(99, key.subarray(0, 32)))).toMatchObject({ secretKey: key.subarray(0, 32) });
  });

  it('rejects cancel keys shorter than 4 or longer than 256 bytes', () => {
    rejects(packet('04 d2 16 2e 00 00 00 01 01 02 03'), '08P01', 'invalid length of cancel request packet');
    rejects(packet('04 d2 16 2e 00 00 00 01', '00 '.repeat(257)), '08P01', 'invalid length of cancel request packet');
    rejects(packet('04 d2 16 2e 00 00 00 01'), '08P01', 'invalid length of cancel request packet');
  });

  it('rejects SSLRequest and GSSENCRequest with a body', () => {
    rejects(packet('04 d2 16 2f 00'), '08P01', 'invalid length of SSLRequest packet');
    rejects(packet('04 d2 16 30 00 00 00 00'), '08P01', 'invalid length of GSSENCRequest packet');
  });

  it('rejects a length field that does not match the packet', () => {
    rejects(hex('00 00 00 09 04 d2 16 2f'), '08P01', 'invalid length of startup packet');
    rejects(hex('00 00 00 07 00 03 00'), '08P01', 'invalid length of startup packet');
    const huge = Buffer.alloc(MAX_STARTUP_PACKET + 1);
    huge.writeInt32BE(huge.length);
    rejects(huge, '08P01', 'invalid length of startup packet');
  });

  it('rejects other major versions as PostgreSQL does (0A000)', () => {
    rejects(packet('00 02 00 00', '"user"', '00 61 00 00'), '0A000', 'unsupported frontend protocol 2.0: server supports 3.0 to 3.0');
    rejects(packet('00 04 00 01', '"user"', '00 61 00 00'), '0A000', 'unsupported frontend protocol 4.1');
    rejects(packet('12 34 56 78'), '0A000', 'unsupported frontend protocol 4660.22136');
  });

  it('rejects malformed parameter lists with 08P01', () => {
    const layout = /invalid startup packet layout/;
    rejects(packet('00 03 00 00'), '08P01', layout); // no terminator at all
    rejects(packet('00 03 00 00', '"user"', '00 61'), '08P01', layout); // value not terminated
    rejects(packet('00 03 00 00', '"user"', '00 61 00'), '08P01', layout); // list terminator missing
    rejects(packet('00 03 00 00', '"user"', '00 61 00', '"database"', '00 00'), '08P01', 'parameter name without a value');
    rejects(packet('00 03 00 00', '"user"', '00 61 00 00', '"x"', '00 79 00 00'), '08P01', layout); // bytes after the end
    rejects(packet('00 03 00 00', '"user"', '00 61 00 00 00'), '08P01', layout); // a stray extra NUL
  });

  it('rejects duplicate parameter names', () => {
    rejects(packet('00 03 00 00', '"user"', '00 61 00', '"user"', '00 62 00 00'), '08P01', 'duplicate startup parameter "user"');
  });

  it('rejects invalid UTF-8', () => {
    rejects(packet('00 03 00 00', '"user"', '00 c3 28 00 00'), '08P01', /UTF8/);
    rejects(packet('00 03 00 00', '"us"', 'ff 00 61 00', '"user"', '00 61 00 00'), '08P01', /UTF8/);
  });

  it('requires a non-empty user, with the SQLSTATE PostgreSQL uses (28000)', () => {
    const noUser = 'no PostgreSQL user name specified in startup packet';
    rejects(packet('00 03 00 00 00'), '28000', noUser);
    rejects(encodeStartupMessage({ database: 'acme' }), '28000', noUser);
    rejects(encodeStartupMessage({ user: '', database: 'acme' }), '28000', noUser);
  });
});
