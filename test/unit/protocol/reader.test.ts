// MessageReader framing: every split of a startup+auth stream, limits checked as soon as lengths are known.
import { describe, expect, it } from 'vitest';
import { PgError } from '../../../src/proxy/errors.js';
import { MAX_CLIENT_MESSAGE, MAX_STARTUP_PACKET } from '../../../src/proxy/protocol/constants.js';
import { MessageReader } from '../../../src/proxy/protocol/reader.js';
import { encodeStartupMessage } from '../../../src/proxy/protocol/startup.js';
import { bytewise, hex, prng, randomSplit, splitsInTwo, typed } from './bytes.js';

const sslRequest = hex('00 00 00 08 04 d2 16 2f');
const startup = encodeStartupMessage({ user: 'acme', database: 'app', application_name: 'psql' });
const messages = [
  typed('p', 'n,,n=,r=clientnonce\0'),
  typed('p', 'c=biws,r=nonce,p=proof'),
  typed('p', ''), // an empty body is still a whole message
  typed('Q', 'select 1\0'),
];
const stream = Buffer.concat([sslRequest, startup, ...messages]);
const expected = [
  { startup: sslRequest },
  { startup },
  ...messages.map((m) => ({ type: m[0], body: m.subarray(5) })),
];

/** Feeds chunks, reading two startup packets then typed messages, as the proxy does. */
function run(chunks: Buffer[]): unknown[] {
  const reader = new MessageReader();
  const out: unknown[] = [];
  for (const chunk of chunks) {
    reader.push(chunk);
    for (;;) {
      if (out.length < 2) {
        const packet = reader.readStartupPacket();
        if (!packet) break;
        out.push({ startup: Buffer.from(packet) });
      } else {
        const message = reader.readMessage();
        if (!message) break;
        // The frame is the message exactly as sent, header included, ready to forward.
        expect(message.frame[0]).toBe(message.type);
        expect(message.frame.readInt32BE(1)).toBe(message.body.length + 4);
        expect(message.frame.subarray(5)).toEqual(message.body);
        out.push({ type: message.type, body: Buffer.from(message.body) });
      }
    }
  }
  expect(reader.buffered).toBe(0);
  return out;
}

const violation = (f: () => unknown): PgError => {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(PgError);
    expect((err as PgError).code).toBe('08P01');
    return err as PgError;
  }
  throw new Error('expected a protocol violation');
};

describe('MessageReader framing', () => {
  it('reads everything from one chunk', () => {
    expect(run([stream])).toEqual(expected);
  });

  it('reads the same whatever the split point', () => {
    for (const chunks of splitsInTwo(stream)) expect(run(chunks)).toEqual(expected);
  });

  it('reads the same fed one byte at a time', () => {
    expect(run(bytewise(stream))).toEqual(expected);
  });

  it('reads the same for random splits (seeded)', () => {
    const random = prng(20240611);
    for (let i = 0; i < 300; i++) expect(run(randomSplit(stream, random))).toEqual(expected);
  });

  it('returns null until a packet is whole and counts buffered bytes', () => {
    const reader = new MessageReader();
    reader.push(startup.subarray(0, 3));
    expect(reader.readStartupPacket()).toBeNull();
    reader.push(startup.subarray(3, 10));
    expect(reader.readStartupPacket()).toBeNull();
    expect(reader.buffered).toBe(10);
    reader.push(startup.subarray(10));
    expect(reader.readStartupPacket()).toEqual(startup);
    expect(reader.readStartupPacket()).toBeNull();
    expect(reader.readMessage()).toBeNull();
    expect(reader.buffered).toBe(0);
  });
});

describe('MessageReader.takeRemaining', () => {
  it('hands over bytes pipelined after SSLRequest, across chunks, and empties the reader', () => {
    const reader = new MessageReader();
    const pipelined = Buffer.concat([sslRequest, startup]);
    reader.push(pipelined.subarray(0, 5));
    reader.push(pipelined.subarray(5, 11));
    reader.push(pipelined.subarray(11));
    expect(reader.readStartupPacket()).toEqual(sslRequest);
    expect(reader.buffered).toBe(startup.length);
    expect(reader.takeRemaining()).toEqual(startup);
    expect(reader.buffered).toBe(0);
    expect(reader.takeRemaining()).toEqual(Buffer.alloc(0));
    expect(reader.readStartupPacket()).toBeNull();
  });

  it('hands over a partial message when switching to relay mode', () => {
    const reader = new MessageReader();
    const tail = Buffer.concat(messages);
    reader.push(tail.subarray(0, messages[0]!.length + 3));
    expect(reader.readMessage()?.body).toEqual(messages[0]!.subarray(5));
    expect(reader.readMessage()).toBeNull();
    expect(reader.takeRemaining()).toEqual(messages[1]!.subarray(0, 3));
  });
});

describe('MessageReader limits', () => {
  const lengthOnly = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n >>> 0);
    return b;
  };

  it.each([
    ['0', 0],
    ['4', 4],
    ['7', 7],
    ['MAX_STARTUP_PACKET + 1', MAX_STARTUP_PACKET + 1],
    ['2^31', 2 ** 31],
    ['2^32 - 1', 2 ** 32 - 1],
  ])('rejects a startup length of %s from the 4 length bytes alone', (_name, n) => {
    const reader = new MessageReader();
    reader.push(lengthOnly(n).subarray(0, 3));
    expect(reader.readStartupPacket()).toBeNull();
    reader.push(lengthOnly(n).subarray(3));
    expect(violation(() => reader.readStartupPacket()).message).toBe('invalid length of startup packet');
  });

  it('accepts a startup packet of exactly MAX_STARTUP_PACKET bytes', () => {
    const packet = Buffer.alloc(MAX_STARTUP_PACKET);
    packet.writeInt32BE(MAX_STARTUP_PACKET);
    const reader = new MessageReader();
    reader.push(packet.subarray(0, 100));
    expect(reader.readStartupPacket()).toBeNull();
    reader.push(packet.subarray(100));
    expect(reader.readStartupPacket()?.length).toBe(MAX_STARTUP_PACKET);
  });

  it('rejects a real oversized startup packet', () => {
    const big = encodeStartupMessage({ user: 'u', application_name: 'x'.repeat(MAX_STARTUP_PACKET) });
    const reader = new MessageReader();
    reader.push(big.subarray(0, 4));
    violation(() => reader.readStartupPacket());
  });

  it.each([
    ['0', 0],
    ['3', 3],
    ['MAX_CLIENT_MESSAGE + 1', MAX_CLIENT_MESSAGE + 1],
    ['2^31', 2 ** 31],
    ['2^32 - 1', 2 ** 32 - 1],
  ])('rejects a message length of %s as soon as the header is known', (_name, n) => {
    const reader = new MessageReader();
    const header = Buffer.concat([hex('70'), lengthOnly(n)]);
    reader.push(header.subarray(0, 4));
    expect(reader.readMessage()).toBeNull();
    reader.push(header.subarray(4));
    expect(violation(() => reader.readMessage()).message).toBe('invalid message length');
  });

  it('accepts a message of exactly MAX_CLIENT_MESSAGE', () => {
    const reader = new MessageReader();
    const message = typed('p', Buffer.alloc(MAX_CLIENT_MESSAGE - 4));
    reader.push(message.subarray(0, 5));
    expect(reader.readMessage()).toBeNull();
    reader.push(message.subarray(5));
    expect(reader.readMessage()?.body.length).toBe(MAX_CLIENT_MESSAGE - 4);
  });
});
