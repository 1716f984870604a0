// Property-based fuzzing of the pure protocol codecs: only documented errors, the same result however the bytes are chunked, exact length limits.
/*
 * Codecs under test: decodeStartupPacket (startup.ts), MessageReader (reader.ts, the startup-phase framing),
 * HeaderScanner (scanner.ts), ClientStream (client-stream.ts) and ServerStream (server-stream.ts).
 *
 * PGTENANT_FUZZ_RUNS  multiplies every property's number of runs (default 1; e.g. 50 for a long run).
 * PGTENANT_FUZZ_SEED  the fast-check seed for every property (default: drawn once per run). The seed is printed
 *                     in the closing "fuzz: N cases" line, and fast-check prints seed and path of a failure.
 *
 * A synchronous endless loop cannot be caught by a test timeout, so a watchdog thread holds a copy of the input
 * being processed: when one case stays busy for HANG_MS it prints that input and kills this test process.
 */
import { Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ClientStream } from '../../../src/proxy/client-stream.js';
import { tagEffect } from '../../../src/proxy/command-tags.js';
import { PgError } from '../../../src/proxy/errors.js';
import {
  CANCEL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  MAX_CLIENT_MESSAGE,
  MAX_STARTUP_PACKET,
  PROTOCOL_VERSION_3_0,
  SSL_REQUEST_CODE,
} from '../../../src/proxy/protocol/constants.js';
import { MessageReader } from '../../../src/proxy/protocol/reader.js';
import { HeaderScanner, type StreamSide } from '../../../src/proxy/protocol/scanner.js';
import {
  decodeStartupPacket,
  encodeCancelRequest,
  encodeStartupMessage,
  type StartupPacket,
} from '../../../src/proxy/protocol/startup.js';
import { BackendWriter } from '../../../src/proxy/protocol/writer.js';
import { ServerAnswers } from '../../../src/proxy/server-answers.js';
import { ServerStream } from '../../../src/proxy/server-stream.js';
import { BackendStatements } from '../../../src/proxy/upstream.js';
import { FUZZ_MULTIPLIER, FUZZ_SEED, fuzzRuns } from '../../support/fuzz.js';

// ---------------------------------------------------------------------------------------------------------------
// Run budget, seed, case count, hang watchdog

const MULTIPLIER = FUZZ_MULTIPLIER;
const SEED = FUZZ_SEED;
const HANG_MS = 10_000;
const runs = fuzzRuns;
// Endless loops are the watchdog's to catch; the test timeout only has to leave room for the runs asked for.
vi.setConfig({ testTimeout: 60_000 * Math.max(1, MULTIPLIER) });

let cases = 0;

const BUSY = 0;
const TICK = 1;
const INPUT_LENGTH = 2;
const LABEL_LENGTH = 3;
const watch = new Int32Array(new SharedArrayBuffer(16));
const inputBytes = new Uint8Array(new SharedArrayBuffer(64 * 1024));
const labelBytes = new Uint8Array(new SharedArrayBuffer(1024));
const watchdog = new Worker(
  `
const { workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { watch, inputBytes, labelBytes, hangMs, seed } = workerData;
let lastTick = -1;
let since = Date.now();
setInterval(() => {
  const tick = Atomics.load(watch, ${TICK});
  if (Atomics.load(watch, ${BUSY}) === 0 || tick !== lastTick) {
    lastTick = tick;
    since = Date.now();
    return;
  }
  if (Date.now() - since < hangMs) return;
  const label = Buffer.from(labelBytes.subarray(0, Atomics.load(watch, ${LABEL_LENGTH}))).toString('utf8');
  const input = Buffer.from(inputBytes.subarray(0, Atomics.load(watch, ${INPUT_LENGTH}))).toString('hex');
  fs.writeSync(2, '\\nfuzz: HANG for ' + hangMs + ' ms in "' + label + '" (seed ' + seed + '), input bytes: ' + input + '\\n');
  process.kill(process.pid, 'SIGKILL');
}, 250);
`,
  { eval: true, workerData: { watch, inputBytes, labelBytes, hangMs: HANG_MS, seed: SEED } },
);
watchdog.unref();

beforeEach(() => {
  const label = Buffer.from(expect.getState().currentTestName ?? '', 'utf8').subarray(0, labelBytes.length);
  labelBytes.set(label);
  Atomics.store(watch, LABEL_LENGTH, label.length);
});

afterAll(async () => {
  await watchdog.terminate();
  console.log(`fuzz: ${cases} cases (protocol codecs, seed ${SEED}, PGTENANT_FUZZ_RUNS=${MULTIPLIER})`);
});

/** One fuzz case: counted, and watched for an endless loop with its input on record. */
function fuzzCase<T>(input: Buffer, body: () => T): T {
  cases++;
  const n = Math.min(input.length, inputBytes.length);
  inputBytes.set(input.subarray(0, n));
  Atomics.store(watch, INPUT_LENGTH, n);
  Atomics.add(watch, TICK, 1);
  Atomics.store(watch, BUSY, 1);
  try {
    return body();
  } finally {
    Atomics.store(watch, BUSY, 0);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Bytes, chunkings, mutations

const NUL = Buffer.from([0]);
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};
const i16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n, 0);
  return b;
};
const cstring = (s: string | Buffer): Buffer => Buffer.concat([typeof s === 'string' ? Buffer.from(s, 'utf8') : s, NUL]);
/** A typed message: type byte, Int32 length (itself included), body. */
const frame = (type: number | string, ...body: Buffer[]): Buffer => {
  const b = Buffer.concat(body);
  return Buffer.concat([Buffer.from([typeof type === 'string' ? type.charCodeAt(0) : type]), u32(4 + b.length), b]);
};
/** The same frame with a length field of our choosing. */
const withLength = (type: number, length: number, body: Buffer = Buffer.alloc(0)): Buffer =>
  Buffer.concat([Buffer.from([type]), u32(length), body]);
/** An Int32 length field as the protocol reads it: signed, so 2^31 and above are negative. */
const signed = (n: number): number => n | 0;

/** Lengths at and around every limit: the header sizes, the startup limits, the auth-message limit, the Int32 range. */
const EDGE_LENGTHS = [
  0, 1, 3, 4, 5, 7, 8, 9, 10, 16, 10_000, 10_001, MAX_CLIENT_MESSAGE, MAX_CLIENT_MESSAGE + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
] as const;
const edgeLength = fc.constantFrom(...EDGE_LENGTHS);

const bytes = (maxLength: number, minLength = 0): fc.Arbitrary<Buffer> =>
  fc.uint8Array({ minLength, maxLength }).map((a) => Buffer.from(a));

/** Chunk sizes, cycled over a stream; zeros make empty chunks. */
const chunkSizes = fc.oneof(
  fc.array(fc.integer({ min: 0, max: 48 }), { minLength: 1, maxLength: 12 }),
  fc.array(fc.integer({ min: 1, max: 4096 }), { minLength: 1, maxLength: 4 }),
  fc.constant([1]),
);

/** Cuts a stream into chunks (copies, so nothing leans on shared memory). */
function chunked(stream: Buffer, sizes: readonly number[]): Buffer[] {
  const steps = sizes.some((s) => s > 0) ? sizes : [1];
  const out: Buffer[] = [];
  let i = 0;
  let k = 0;
  while (i < stream.length) {
    const size = steps[k++ % steps.length]!;
    out.push(Buffer.from(stream.subarray(i, i + size)));
    i += size;
  }
  return out;
}

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'duplicate'; at: number; length: number }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'insert'; at: number; bytes: Buffer }
  | { kind: 'int32'; at: number; value: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: bytes(16, 1) }),
  fc.record({ kind: fc.constant('int32' as const), at: fc.nat(), value: edgeLength }),
);
const mutations = fc.array(mutation, { minLength: 1, maxLength: 4 });

/** Bit flips, truncation, duplication, deletion, insertion and edge lengths written anywhere. */
function mutate(input: Buffer, list: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of list) {
    const at = b.length === 0 ? 0 : m.at % (b.length + 1);
    switch (m.kind) {
      case 'flip':
        if (at < b.length) b[at]! ^= 1 << m.bit;
        break;
      case 'truncate':
        b = b.subarray(0, at);
        break;
      case 'duplicate':
        b = Buffer.concat([b.subarray(0, at + m.length), b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.length)]);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      case 'int32':
        if (at + 4 <= b.length) b.writeUInt32BE(m.value >>> 0, at);
        break;
    }
  }
  return Buffer.from(b);
}

/** Buffer.equals first: toEqual walks buffers byte by byte, too slow inside properties; it still explains a mismatch. */
function expectBytes(actual: Buffer, expected: Buffer, message?: string): void {
  if (!actual.equals(expected)) expect(actual.toString('hex'), message).toBe(expected.toString('hex'));
}

/** Runs `fn`; a PgError becomes its code, anything else is thrown on (and fails the property). */
function pgErrorCode(fn: () => void, allowed: readonly string[]): string | null {
  try {
    fn();
    return null;
  } catch (err) {
    if (!(err instanceof PgError)) throw err;
    if (!allowed.includes(err.code)) throw new Error(`unexpected SQLSTATE ${err.code}: ${err.message}`);
    if (err.message === '') throw new Error(`PgError ${err.code} without a message`);
    return err.code;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// decodeStartupPacket

/**
 * What startup.ts documents: 08P01 for lengths and layout (as PostgreSQL), 0A000 for a protocol version other
 * than 3.x, 28000 for a packet without a user (as PostgreSQL).
 */
const STARTUP_CODES = ['08P01', '0A000', '28000'] as const;

type Decoded = { packet: StartupPacket } | { code: string };

function decode(packet: Buffer): Decoded {
  try {
    return { packet: decodeStartupPacket(packet) };
  } catch (err) {
    if (!(err instanceof PgError)) throw err;
    expect(STARTUP_CODES).toContain(err.code);
    expect(err.severity).toBe('FATAL');
    expect(err.message).not.toBe('');
    return { code: err.code };
  }
}

const request = (code: number, length = 8, extra: Buffer = Buffer.alloc(0)): Buffer => Buffer.concat([u32(length), u32(code), extra]);

/** The one encoding of a decoded packet: the decoder accepts nothing it could not have produced itself. */
function reencode(p: StartupPacket): Buffer {
  switch (p.kind) {
    case 'StartupMessage':
      return encodeStartupMessage(p.parameters, p.minorVersion);
    case 'SSLRequest':
      return request(SSL_REQUEST_CODE);
    case 'GSSENCRequest':
      return request(GSSENC_REQUEST_CODE);
    case 'CancelRequest':
      return encodeCancelRequest(p.processId, p.secretKey);
  }
}

const noNul = (s: string) => s.replaceAll('\0', '');
const paramName = fc.oneof(
  fc.constantFrom('database', 'options', 'application_name', 'client_encoding', 'search_path', 'role', '_pq_.x', 'DateStyle'),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }).map(noNul).filter((s) => s !== '' && s !== 'user'),
);
const paramValue = fc.oneof(
  { weight: 5, arbitrary: fc.string({ unit: 'binary', maxLength: 24 }).map(noNul) },
  { weight: 1, arbitrary: fc.constantFrom('', '-c search_path=evil', '-c a=b -c c=d', '--x=y', '-c') },
  // Huge values around the 10000-byte packet limit, in `options` or elsewhere.
  { weight: 1, arbitrary: fc.integer({ min: 9_900, max: 10_100 }).map((n) => '-c application_name=' + 'x'.repeat(n - 20)) },
);
/** Startup parameters with unique, non-empty, NUL-free names and a non-empty user first. */
const startupParams = fc
  .tuple(
    fc.string({ unit: 'binary', minLength: 1, maxLength: 16 }).map(noNul).filter((s) => s !== ''),
    fc.uniqueArray(fc.tuple(paramName, paramValue), { selector: ([name]) => name, maxLength: 6 }),
  )
  .map(([user, rest]) => new Map<string, string>([['user', user], ...rest]));

const version = fc.oneof(
  fc.constant(PROTOCOL_VERSION_3_0),
  fc.integer({ min: 0, max: 0xffff }).map((minor) => PROTOCOL_VERSION_3_0 + minor),
  fc.constantFrom(SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE, 0x00020000, 0x00040000, 0, -1),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
);

/** Packets whose length field is right, so the decoder gets past it: a code and any body. */
const framedPacket = fc.tuple(version, bytes(64)).map(([code, body]) => {
  const p = Buffer.concat([u32(0), u32(code), body]);
  p.writeUInt32BE(p.length, 0);
  return p;
});
/** A bare startup body with lists of name/value strings glued by NULs, no validity promised. */
const looseStartup = fc
  .array(fc.oneof(fc.constantFrom('user', 'database', '', 'options'), fc.string({ unit: 'binary', maxLength: 8 })), { maxLength: 8 })
  .chain((strings) => fc.tuple(fc.constant(strings), fc.boolean()))
  .map(([strings, terminated]) => {
    const body = Buffer.concat([...strings.map((s) => cstring(s)), terminated ? NUL : Buffer.alloc(0)]);
    return Buffer.concat([u32(8 + body.length), u32(PROTOCOL_VERSION_3_0), body]);
  });
const anyStartupBytes = fc.oneof(
  framedPacket,
  looseStartup,
  bytes(40),
  fc.tuple(startupParams, mutations).map(([p, m]) => mutate(encodeStartupMessage(p), m)),
  fc.tuple(framedPacket, mutations).map(([p, m]) => mutate(p, m)),
);

describe('decodeStartupPacket', () => {
  it('any bytes: a packet or a documented PgError, and what is accepted is exactly its own encoding', () => {
    fc.assert(
      fc.property(anyStartupBytes, (packet) =>
        fuzzCase(packet, () => {
          const d = decode(packet);
          if ('packet' in d) expectBytes(reencode(d.packet), packet);
        }),
      ),
      runs(3000),
    );
  });

  it('valid parameters round-trip, and a packet is accepted exactly when it fits in 10000 bytes', () => {
    fc.assert(
      fc.property(startupParams, fc.integer({ min: 0, max: 0xffff }), (params, minor) => {
        const packet = encodeStartupMessage(params, minor);
        fuzzCase(packet, () => {
          const d = decode(packet);
          if (packet.length > MAX_STARTUP_PACKET) {
            expect(d).toEqual({ code: '08P01' });
            return;
          }
          if (!('packet' in d) || d.packet.kind !== 'StartupMessage') throw new Error(`valid packet refused: ${JSON.stringify(d)}`);
          expect([...d.packet.parameters]).toEqual([...params]);
          expect(d.packet.minorVersion).toBe(minor);
        });
      }),
      runs(600),
    );
  });

  /** A StartupMessage of exactly `size` bytes (size >= 16) whose user is padded to fit. */
  const startupOfSize = (size: number): Buffer => {
    const packet = encodeStartupMessage({ user: 'u'.repeat(size - 15) });
    expect(packet.length).toBe(size);
    return packet;
  };

  it('length field: accepted exactly when it equals the packet size and lies within 8..10000', () => {
    const size = fc.oneof(
      fc.constantFrom(8, 9, 15, 16, 17, 9_999, 10_000, 10_001, 10_002),
      fc.integer({ min: 0, max: 10_010 }),
    );
    const lengthField = fc.oneof(edgeLength, fc.integer({ min: 0, max: 10_010 }));
    fc.assert(
      fc.property(size, lengthField, fc.boolean(), (actualSize, field, sameAsSize) => {
        const length = sameAsSize ? actualSize : field;
        const body = actualSize >= 16 ? startupOfSize(actualSize) : Buffer.concat([u32(0), u32(PROTOCOL_VERSION_3_0), Buffer.alloc(Math.max(0, actualSize - 8))]).subarray(0, actualSize);
        const packet = Buffer.from(body);
        if (packet.length >= 4) packet.writeUInt32BE(length >>> 0, 0);
        fuzzCase(packet, () => {
          const d = decode(packet);
          const lengthOk = packet.length >= 8 && signed(length) === packet.length && packet.length <= MAX_STARTUP_PACKET;
          if (!lengthOk) expect(d).toEqual({ code: '08P01' });
          else if (packet.length >= 16) expect('packet' in d).toBe(true);
          // 8..15 bytes hold no user: a layout error or, with just the terminator, "no user name" as PostgreSQL says.
          else expect(['08P01', '28000']).toContain('code' in d ? d.code : 'accepted');
        });
      }),
      runs(1200),
    );
  });

  it('SSLRequest, GSSENCRequest and CancelRequest: accepted only at their exact sizes (8, 8, 16..268)', () => {
    const code = fc.constantFrom(SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE);
    fc.assert(
      fc.property(code, fc.oneof(fc.integer({ min: 8, max: 300 }), fc.constantFrom(8, 11, 12, 15, 16, 17, 267, 268, 269)), bytes(300), (c, size, filler) => {
        const packet = Buffer.concat([u32(size), u32(c), filler, Buffer.alloc(300)]).subarray(0, size);
        fuzzCase(packet, () => {
          const d = decode(packet);
          const ok = c === CANCEL_REQUEST_CODE ? size >= 16 && size <= 268 : size === 8;
          if (ok) {
            expect('packet' in d).toBe(true);
            expectBytes(reencode((d as { packet: StartupPacket }).packet), packet);
          } else expect(d).toEqual({ code: '08P01' });
        });
      }),
      runs(600),
    );
  });

  it('a proper prefix of a valid packet is refused with 08P01, whether or not its length field is fixed', () => {
    fc.assert(
      fc.property(startupParams, fc.nat(), fc.boolean(), (params, cut, fixLength) => {
        const whole = encodeStartupMessage(params);
        const packet = Buffer.from(whole.subarray(0, cut % whole.length));
        if (fixLength && packet.length >= 4) packet.writeUInt32BE(packet.length, 0);
        fuzzCase(packet, () => {
          const d = decode(packet);
          // With its length fixed, a cut that ends on a NUL may still be a complete, shorter packet: only then accepted.
          if ('packet' in d) {
            expect(fixLength).toBe(true);
            expectBytes(reencode(d.packet), packet);
          } else if (!fixLength || packet[packet.length - 1] !== 0) expect(d.code).toBe('08P01');
        });
      }),
      runs(600),
    );
  });

  const invalidUtf8 = fc.constantFrom(
    [0xff],
    [0xc3, 0x28], // a lead byte without its continuation
    [0x80], // a lone continuation byte
    [0xc0, 0xaf], // an overlong '/'
    [0xe0, 0x80, 0xaf], // an overlong '/'
    [0xed, 0xa0, 0x80], // a UTF-16 surrogate
    [0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
    [0xe2, 0x82], // a sequence cut short
    [0xf8, 0x88, 0x80, 0x80, 0x80], // five bytes
  );

  it('non-UTF-8 bytes in any name or value are refused with 08P01', () => {
    fc.assert(
      fc.property(startupParams, fc.nat(), fc.boolean(), fc.nat(), invalidUtf8, (params, which, inName, offset, bad) => {
        const entries = [...params].map(([k, v]) => [Buffer.from(k, 'utf8'), Buffer.from(v, 'utf8')] as [Buffer, Buffer]);
        const target = entries[which % entries.length]!;
        const field = inName ? 0 : 1;
        const at = offset % (target[field].length + 1);
        target[field] = Buffer.concat([target[field].subarray(0, at), Buffer.from(bad), target[field].subarray(at)]);
        const body = Buffer.concat([...entries.flatMap(([k, v]) => [cstring(k), cstring(v)]), NUL]);
        const packet = Buffer.concat([u32(8 + body.length), u32(PROTOCOL_VERSION_3_0), body]);
        fuzzCase(packet, () => expect(decode(packet)).toEqual({ code: '08P01' }));
      }),
      runs(600),
    );
  });

  it('empty parameter names and duplicate keys are refused with 08P01', () => {
    const variant = fc.constantFrom('empty name', 'duplicate', 'duplicate user', 'name without value');
    fc.assert(
      fc.property(startupParams, variant, fc.nat(), paramValue, (params, kind, where, value) => {
        const list: Array<[string, string]> = [...params];
        const at = where % (list.length + 1);
        const names = [...params.keys()];
        const extra: Array<[string, string]> =
          kind === 'empty name' ? [['', value]] : kind === 'duplicate user' ? [['user', value]] : kind === 'duplicate' ? [[names[where % names.length]!, value]] : [];
        list.splice(at, 0, ...extra);
        let body = Buffer.concat([...list.flatMap(([k, v]) => [cstring(k), cstring(v)]), NUL]);
        // A lone name: the list then has an odd number of strings.
        if (kind === 'name without value') body = Buffer.concat([body.subarray(0, body.length - 1), cstring('lonely'), NUL]);
        const packet = Buffer.concat([u32(8 + body.length), u32(PROTOCOL_VERSION_3_0), body]);
        fuzzCase(packet, () => expect(decode(packet)).toEqual({ code: '08P01' }));
      }),
      runs(600),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// MessageReader: the startup-phase framing

type ReadResult = { startup: string } | { type: number; body: string } | { error: string };

/** Feeds chunks as the client connection does: after each, reads while whole packets are there; stops at an error. */
function readAll(chunks: readonly Buffer[], startupReads: number): { reads: ReadResult[]; consumed: Buffer[]; rest: Buffer | null } {
  const reader = new MessageReader();
  const reads: ReadResult[] = [];
  const consumed: Buffer[] = [];
  for (const chunk of chunks) {
    reader.push(chunk);
    for (;;) {
      const before = reader.buffered;
      let got = false;
      const code = pgErrorCode(() => {
        if (reads.length < startupReads) {
          const p = reader.readStartupPacket();
          if (p) {
            reads.push({ startup: p.toString('hex') });
            consumed.push(Buffer.from(p));
            got = true;
          }
        } else {
          const m = reader.readMessage();
          if (m) {
            expect(m.frame[0]).toBe(m.type);
            expectBytes(m.frame.subarray(5), m.body);
            reads.push({ type: m.type, body: m.body.toString('hex') });
            consumed.push(Buffer.from(m.frame));
            got = true;
          }
        }
      }, ['08P01']);
      if (code) {
        reads.push({ error: code });
        return { reads, consumed, rest: null };
      }
      if (!got) break;
      // Every packet handed out consumed at least a header: the loop cannot spin.
      expect(reader.buffered).toBeLessThanOrEqual(before - 5);
    }
  }
  return { reads, consumed, rest: Buffer.from(reader.takeRemaining()) };
}

const startupPhasePacket = fc.oneof(
  fc.constant(request(SSL_REQUEST_CODE)),
  fc.constant(request(GSSENC_REQUEST_CODE)),
  startupParams.map((p) => encodeStartupMessage(p)),
  framedPacket,
);
const anyTypedMessage = fc.tuple(fc.integer({ min: 0, max: 255 }), bytes(64)).map(([t, body]) => frame(t, body));
const readerStream = fc
  .tuple(
    fc.array(startupPhasePacket, { maxLength: 3 }),
    fc.array(fc.oneof(anyTypedMessage, fc.tuple(fc.integer({ min: 0, max: 255 }), edgeLength).map(([t, l]) => withLength(t, l))), { maxLength: 6 }),
    fc.oneof(fc.constant(Buffer.alloc(0)), bytes(12)),
    fc.option(mutations, { nil: null }),
  )
  .map(([packets, messages, tail, m]) => {
    const stream = Buffer.concat([...packets, ...messages, tail]);
    return { stream: m ? mutate(stream, m) : stream, startupReads: packets.length };
  });

describe('MessageReader', () => {
  it('reads the same packets, messages and error however the stream is chunked, and loses or invents no byte', () => {
    fc.assert(
      fc.property(readerStream, chunkSizes, ({ stream, startupReads }, sizes) =>
        fuzzCase(stream, () => {
          const whole = readAll([stream], startupReads);
          const split = readAll(chunked(stream, sizes), startupReads);
          expect(split.reads).toEqual(whole.reads);
          if (whole.rest) {
            expectBytes(split.rest!, whole.rest);
            expectBytes(Buffer.concat([...whole.consumed, whole.rest]), stream);
          }
        }),
      ),
      runs(1600),
    );
  });

  it('startup length field: refused with 08P01 as soon as it is read when outside 8..10000, else waits for the packet', () => {
    fc.assert(
      fc.property(fc.oneof(edgeLength, fc.integer({ min: 0, max: 10_010 })), bytes(8), chunkSizes, (length, trailing, sizes) => {
        const header = u32(length);
        fuzzCase(header, () => {
          const reader = new MessageReader();
          for (const b of header.subarray(0, 3)) {
            reader.push(Buffer.from([b]));
            expect(reader.readStartupPacket()).toBeNull();
          }
          reader.push(header.subarray(3));
          const n = signed(length);
          if (n < 8 || n > MAX_STARTUP_PACKET) {
            expect(pgErrorCode(() => reader.readStartupPacket(), ['08P01'])).toBe('08P01');
            return;
          }
          expect(reader.readStartupPacket()).toBeNull();
          const rest = Buffer.concat([Buffer.alloc(n - 4, 0x61), trailing]);
          let packet: Buffer | null = null;
          let fed = 4;
          for (const c of chunked(rest, sizes)) {
            reader.push(c);
            fed += c.length;
            packet = reader.readStartupPacket();
            if (packet) break;
            if (fed >= n) throw new Error(`no packet after ${fed} of its ${n} bytes`);
          }
          expect(packet?.length).toBe(n);
          expect(packet?.readUInt32BE(0)).toBe(n);
        });
      }),
      runs(600),
    );
  });

  it('message length field: refused with 08P01 as soon as it is read when outside 4..2^20, else waits for the body', () => {
    fc.assert(
      fc.property(fc.oneof(edgeLength, fc.integer({ min: 0, max: 20_000 })), fc.integer({ min: 0, max: 255 }), (length, type, ) => {
        const header = withLength(type, length);
        fuzzCase(header, () => {
          const reader = new MessageReader();
          reader.push(header.subarray(0, 4));
          expect(reader.readMessage()).toBeNull();
          reader.push(header.subarray(4));
          const n = signed(length);
          if (n < 4 || n > MAX_CLIENT_MESSAGE) {
            expect(pgErrorCode(() => reader.readMessage(), ['08P01'])).toBe('08P01');
            return;
          }
          if (n > 4) {
            expect(reader.readMessage()).toBeNull();
            reader.push(Buffer.alloc(n - 5, 0x62));
            expect(reader.readMessage()).toBeNull();
            reader.push(Buffer.from([0x63]));
          }
          const m = reader.readMessage();
          expect(m?.type).toBe(type);
          expect(m?.body.length).toBe(n - 4);
          expect(reader.buffered).toBe(0);
        });
      }),
      runs(500),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// HeaderScanner

type ScanState = {
  bad: boolean;
  lastType: number;
  messages: number;
  readyForQueryStatus: number;
  sawTerminate: boolean;
  atBoundary: boolean;
  queries: number;
  syncs: number;
  unsynced: number;
  readies: number;
  transactions: number;
};

/** Scans chunks as the relay does, stopping at the first -1 (the relay closes then). */
function scanAll(side: StreamSide, chunks: readonly Buffer[]): ScanState {
  const s = new HeaderScanner(side);
  let bad = false;
  for (const chunk of chunks) {
    const r = s.scan(chunk);
    if (r !== 0 && r !== -1) throw new Error(`scan() returned ${r}`);
    if (r < 0) {
      bad = true;
      break;
    }
  }
  const { lastType, messages, readyForQueryStatus, sawTerminate, atBoundary, queries, syncs, unsynced, readies, transactions } = s;
  return { bad, lastType, messages, readyForQueryStatus, sawTerminate, atBoundary, queries, syncs, unsynced, readies, transactions };
}

/** The headers of a stream read whole: a simple reference for the scanner's framing. */
function referenceFrames(stream: Buffer): { bad: boolean; types: number[]; atBoundary: boolean } {
  const types: number[] = [];
  let at = 0;
  while (at + 5 <= stream.length) {
    const length = stream.readInt32BE(at + 1);
    if (length < 4) return { bad: true, types, atBoundary: false };
    types.push(stream[at]!);
    at += 1 + length;
  }
  return { bad: false, types, atBoundary: at === stream.length };
}

const TYPE_LETTERS = 'QPBESXHdcfFDCZTNKRpvA123';
const messageType = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...[...TYPE_LETTERS].map((c) => c.charCodeAt(0))) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) },
);
const framedMessage = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(messageType, bytes(24)).map(([t, b]) => frame(t, b)) },
  { weight: 2, arbitrary: fc.constantFrom('I', 'T', 'E').map((s) => frame('Z', Buffer.from(s))) },
  { weight: 1, arbitrary: fc.constant(frame('Z')) },
  // Long bodies made of header look-alikes: only the framing can tell them from messages.
  { weight: 1, arbitrary: fc.integer({ min: 100, max: 3000 }).map((n) => frame('d', Buffer.alloc(n, 0x5a))) },
);
const scannerStream = fc
  .tuple(
    fc.array(framedMessage, { maxLength: 12 }),
    fc.oneof(
      fc.constant(Buffer.alloc(0)),
      bytes(12),
      fc.tuple(messageType, edgeLength).map(([t, l]) => withLength(t, l)),
    ),
    fc.option(mutations, { nil: null }),
  )
  .map(([messages, tail, m]) => {
    const stream = Buffer.concat([...messages, tail]);
    return m ? mutate(stream, m) : stream;
  });

describe('HeaderScanner', () => {
  it('the same state however the stream is chunked, and the same headers as a whole-buffer reference', () => {
    fc.assert(
      fc.property(scannerStream, chunkSizes, fc.constantFrom<StreamSide>('frontend', 'backend'), (stream, sizes, side) =>
        fuzzCase(stream, () => {
          const whole = scanAll(side, [stream]);
          const split = scanAll(side, chunked(stream, sizes));
          expect(split).toEqual(whole);
          const ref = referenceFrames(stream);
          expect(whole.bad).toBe(ref.bad);
          expect(whole.messages).toBe(ref.types.length);
          expect(whole.lastType).toBe(ref.types.at(-1) ?? 0);
          if (!ref.bad) expect(whole.atBoundary).toBe(ref.atBoundary);
        }),
      ),
      runs(1600),
    );
  });

  it('length field: -1 exactly when below 4 as a signed Int32, else the body is skipped to the byte', () => {
    fc.assert(
      fc.property(edgeLength, messageType, fc.boolean(), fc.constantFrom<StreamSide>('frontend', 'backend'), (length, type, bytewise, side) => {
        const header = withLength(type, length);
        fuzzCase(header, () => {
          const s = new HeaderScanner(side);
          const results = bytewise ? [...header].map((b) => s.scan(Buffer.from([b]))) : [s.scan(header)];
          const n = signed(length);
          if (n < 4) {
            expect(results.at(-1)).toBe(-1);
            return;
          }
          expect(results.every((r) => r === 0)).toBe(true);
          expect(s.messages).toBe(1);
          expect(s.atBoundary).toBe(n === 4);
          // Bodies up to 10000 bytes are fed in full; for longer ones, a part must leave the scanner mid-message.
          const body = Buffer.alloc(Math.min(n - 4, 10_000), 0x5a);
          expect(s.scan(body)).toBe(0);
          expect(s.atBoundary).toBe(n - 4 <= 10_000);
          expect(s.messages).toBe(1);
        });
      }),
      runs(400),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// ClientStream (transaction mode, client to server)

/** The SQLSTATEs client-stream.ts documents: 08P01 for malformed messages, 54000 for a named Parse over 8 MiB. */
const CLIENT_STREAM_CODES = ['08P01', '54000'] as const;
/** MAX_NAMED_PARSE in client-stream.ts (not exported). */
const MAX_NAMED_PARSE = 8 * 1024 * 1024;

/** Client statement names, a long one included (longer than the 1,024 bytes the stream first gathers when a message spans chunks). */
const STATEMENT_NAMES = ['s1', 's2', 'ñame', 'n'.repeat(3000)];
/** Short names only, for streams that are mutated: a mutation may still join a name to what follows it. */
const SHORT_NAMES = STATEMENT_NAMES.slice(0, 3);

type FrontOp =
  | { op: 'query'; text: string }
  | { op: 'parse'; name: number; text: string; types: number }
  | { op: 'bind'; pick: number; portal: string; values: number[] }
  | { op: 'describe' | 'close'; statement: boolean; pick: number }
  | { op: 'execute' | 'sync' | 'flush' | 'copydone' }
  | { op: 'copy' | 'call'; body: Buffer }
  | { op: 'other'; type: number; body: Buffer };

const sqlText = fc.oneof(fc.constantFrom('select 1', 'select $1::int', 'begin', 'commit', ''), fc.string({ maxLength: 30 }).map(noNul));
const frontOp: fc.Arbitrary<FrontOp> = fc.oneof(
  fc.record({ op: fc.constant('query' as const), text: sqlText }),
  fc.record({ op: fc.constant('parse' as const), name: fc.integer({ min: -2, max: STATEMENT_NAMES.length - 1 }), text: sqlText, types: fc.integer({ min: 0, max: 3 }) }),
  fc.record({
    op: fc.constant('bind' as const),
    pick: fc.nat(),
    portal: fc.constantFrom('', 'p1'),
    values: fc.array(fc.oneof(fc.integer({ min: -1, max: 8 }), fc.constant(5000)), { maxLength: 3 }),
  }),
  fc.record({ op: fc.constantFrom('describe' as const, 'close' as const), statement: fc.boolean(), pick: fc.nat() }),
  fc.record({ op: fc.constantFrom('execute' as const, 'sync' as const, 'flush' as const, 'copydone' as const) }),
  fc.record({ op: fc.constantFrom('copy' as const, 'call' as const), body: bytes(40) }),
  // Any other type; P, B, D, C and X are the generator's own (above and at the end).
  fc.record({ op: fc.constant('other' as const), type: fc.integer({ min: 0, max: 255 }).filter((t) => !'PBDCX'.includes(String.fromCharCode(t))), body: bytes(24) }),
);

/**
 * Turns ops into a stream a well-behaved client could send: Bind and Describe name only statements it prepared
 * and has not closed (or the unnamed one). `unnamedOnly` keeps every statement unnamed (pass-through streams).
 */
function frontendStream(ops: readonly FrontOp[], unnamedOnly: boolean, names: readonly string[] = STATEMENT_NAMES): Buffer {
  const defined: string[] = [];
  const pick = (n: number): string => {
    if (unnamedOnly) return '';
    const k = n % (defined.length + 1);
    return k === defined.length ? '' : defined[k]!;
  };
  const parts: Buffer[] = [];
  for (const o of ops) {
    switch (o.op) {
      case 'query':
        parts.push(frame('Q', cstring(o.text)));
        break;
      case 'parse': {
        const name = unnamedOnly || o.name < 0 ? '' : names[o.name % names.length]!;
        if (name && !defined.includes(name)) defined.push(name);
        parts.push(frame('P', cstring(name), cstring(o.text), i16(o.types), ...Array.from({ length: o.types }, () => u32(23))));
        break;
      }
      case 'bind': {
        const values = o.values.map((n) => (n < 0 ? u32(-1) : Buffer.concat([u32(n), Buffer.alloc(n, 0x5a)])));
        parts.push(frame('B', cstring(o.portal), cstring(pick(o.pick)), i16(0), i16(values.length), ...values, i16(0)));
        break;
      }
      case 'describe':
      case 'close': {
        const name = o.statement ? pick(o.pick) : 'p1';
        if (o.op === 'close' && o.statement && name) defined.splice(defined.indexOf(name), 1);
        parts.push(frame(o.op === 'describe' ? 'D' : 'C', Buffer.from(o.statement ? 'S' : 'P'), cstring(name)));
        break;
      }
      case 'execute':
        parts.push(frame('E', cstring(''), u32(0)));
        break;
      case 'sync':
        parts.push(frame('S'));
        break;
      case 'flush':
        parts.push(frame('H'));
        break;
      case 'copydone':
        parts.push(frame('c'));
        break;
      case 'copy':
        parts.push(frame('d', o.body));
        break;
      case 'call':
        parts.push(frame('F', o.body));
        break;
      case 'other':
        parts.push(frame(o.type, o.body));
        break;
    }
  }
  return Buffer.concat(parts);
}

const terminateTail = fc.option(bytes(16).map((junk) => Buffer.concat([frame('X'), junk])), { nil: null, freq: 4 });

/** Whether ServerAnswers holds the same queue: probed through its public methods only. */
type Probe = 'completions' | 'failures';
function probeAnswers(answers: ServerAnswers, kind: Probe, universe: readonly string[]): string {
  const out: string[] = [];
  for (let round = 0; round < 4; round++) {
    if (kind === 'completions') {
      let bits = '';
      for (let k = 0; k < 80; k++) bits += answers.completed() ? '1' : '0';
      out.push(bits);
    } else {
      const prepared = new Set(universe);
      answers.failed(prepared);
      out.push(universe.filter((n) => !prepared.has(n)).join(','));
    }
    answers.ready();
  }
  return out.join('|');
}

type ClientRun = {
  error: string | null;
  out: Buffer;
  queries: number;
  syncs: number;
  unsynced: number;
  terminated: boolean;
  atBoundary: boolean;
  prepared: string[];
  probe: string;
};

function runClient(chunks: readonly Buffer[], probe: Probe): ClientRun {
  const answers = new ServerAnswers();
  const cs = new ClientStream(answers);
  const prepared = new Set<string>();
  const outs: Buffer[] = [];
  const error = pgErrorCode(() => {
    for (const chunk of chunks) outs.push(cs.process(chunk, prepared).concat());
  }, CLIENT_STREAM_CODES);
  const names = [...prepared].sort();
  return {
    error,
    out: Buffer.concat(outs),
    queries: cs.queries,
    syncs: cs.syncs,
    unsynced: cs.unsynced,
    terminated: cs.terminated,
    atBoundary: cs.atBoundary,
    prepared: names,
    probe: probeAnswers(answers, probe, names),
  };
}

/** Parses a stream into whole frames; fails unless they tile it. */
function framesOf(stream: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  while (at + 5 <= stream.length) {
    const length = stream.readInt32BE(at + 1);
    expect(length).toBeGreaterThanOrEqual(4);
    out.push(stream.subarray(at, at + 1 + length));
    at += 1 + length;
  }
  expect(at).toBe(stream.length);
  return out;
}

const SERVER_NAME = /^pgtenant_[0-9a-f]{40}$/;
const nameAt = (f: Buffer, from: number): { name: string; end: number } => {
  const end = f.indexOf(0, from);
  expect(end).toBeGreaterThanOrEqual(from);
  return { name: f.toString('latin1', from, end), end };
};

describe('ClientStream', () => {
  const validStream = fc.tuple(fc.array(frontOp, { maxLength: 14 }), terminateTail, fc.boolean());

  it('valid streams: the same output, counters, statements and owed answers however the stream is chunked', () => {
    fc.assert(
      fc.property(validStream, chunkSizes, fc.constantFrom<Probe>('completions', 'failures'), ([ops, tail, unnamed], sizes, probe) => {
        const stream = Buffer.concat([frontendStream(ops, unnamed), tail ?? Buffer.alloc(0)]);
        fuzzCase(stream, () => {
          const whole = runClient([stream], probe);
          const split = runClient(chunked(stream, sizes), probe);
          expect(whole.error).toBeNull();
          expect(split.error).toBeNull();
          expectBytes(split.out, whole.out);
          expect({ ...split, out: null }).toEqual({ ...whole, out: null });
        });
      }),
      runs(1000),
    );
  });

  it('unnamed statements only: the output is the input up to Terminate, byte for byte', () => {
    fc.assert(
      fc.property(fc.array(frontOp, { maxLength: 14 }), terminateTail, chunkSizes, (ops, tail, sizes) => {
        const body = frontendStream(ops, true);
        const stream = Buffer.concat([body, tail ?? Buffer.alloc(0)]);
        fuzzCase(stream, () => {
          const r = runClient(chunked(stream, sizes), 'completions');
          expect(r.error).toBeNull();
          expectBytes(r.out, body);
          expect(r.terminated).toBe(tail !== null);
        });
      }),
      runs(800),
    );
  });

  it('named statements: every backend gets its Parse (after a Close) before any Bind or Describe of it, under a server name', () => {
    // Backends change only between messages, as the relay links a backend per transaction.
    fc.assert(
      fc.property(fc.array(frontOp, { maxLength: 16 }), chunkSizes, fc.array(fc.nat({ max: 3 }), { minLength: 1, maxLength: 8 }), (ops, sizes, switches) => {
        const stream = frontendStream(ops, false);
        fuzzCase(stream, () => {
          const cs = new ClientStream(new ServerAnswers());
          const backends: Array<{ names: Set<string>; out: Buffer[] }> = [{ names: new Set(), out: [] }];
          let current = backends[0]!;
          let k = 0;
          for (const chunk of chunked(stream, sizes)) {
            if (cs.atBoundary) {
              // 0: stay; 1: a fresh backend; 2, 3: go back to an earlier one, which keeps its statements.
              const move = switches[k++ % switches.length]!;
              if (move === 1) backends.push((current = { names: new Set(), out: [] }));
              else if (move > 1) current = backends[move % backends.length]!;
            }
            current.out.push(cs.process(chunk, current.names).concat());
          }
          expect(cs.atBoundary).toBe(true);
          for (const backend of backends) {
            const has = new Set<string>();
            let previous: Buffer | null = null;
            for (const f of framesOf(Buffer.concat(backend.out))) {
              const type = String.fromCharCode(f[0]!);
              if (type === 'P') {
                const { name } = nameAt(f, 5);
                if (name !== '') {
                  expect(name).toMatch(SERVER_NAME);
                  expectBytes(previous ?? Buffer.alloc(0), frame('C', Buffer.from('S'), cstring(name)), 'a named Parse comes right after a Close of its name');
                  has.add(name);
                }
              } else if (type === 'B') {
                const portal = nameAt(f, 5);
                const { name } = nameAt(f, portal.end + 1);
                if (name !== '') {
                  expect(name).toMatch(SERVER_NAME);
                  expect(has.has(name), `Bind of ${name} before its Parse on this backend`).toBe(true);
                }
              } else if ((type === 'D' || type === 'C') && f[5] === 0x53) {
                const { name } = nameAt(f, 6);
                if (type === 'C') has.delete(name);
                else if (name !== '') {
                  expect(name).toMatch(SERVER_NAME);
                  expect(has.has(name), `Describe of ${name} before its Parse on this backend`).toBe(true);
                }
              }
              previous = f;
            }
            // What the stream believes the backend holds is what it was sent.
            for (const name of backend.names) expect(has.has(name)).toBe(true);
          }
        });
      }),
      runs(800),
    );
  });

  it('names up to 64 KiB from the message start pass, whole or byte by byte and the same either way; longer ones are 08P01 either way', () => {
    const limit = 64 * 1024;
    // A Bind of portal and statement names ending at `namesEnd` bytes from its start, and a value after them.
    const bind = (namesEnd: number): Buffer => {
      const statement = 's'.repeat(namesEnd - 5 - 2);
      return frame('B', cstring(''), cstring(statement), Buffer.from([0, 0, 0, 1, 0, 0, 0, 3]), Buffer.from('abc'), Buffer.from([0, 0]));
    };
    for (const namesEnd of [1024, 1025, 3000, limit]) {
      const whole = runClient([bind(namesEnd)], 'completions');
      expect(whole.error, `names ending at ${namesEnd}`).toBeNull();
      for (const sizes of [[1], [7, 1000], [1023, 2]]) {
        const split = runClient(chunked(bind(namesEnd), sizes), 'completions');
        expect(split.error, `names ending at ${namesEnd}, in chunks of ${sizes.join(', ')}`).toBeNull();
        expectBytes(split.out, whole.out);
      }
    }
    const over = bind(limit + 1);
    expect(runClient([over], 'completions').error).toBe('08P01');
    expect(runClient(chunked(over, [1000]), 'completions').error).toBe('08P01');
  });

  it('any bytes, mutated streams, any chunking: only a PgError 08P01 or 54000, and the same outcome as whole', () => {
    const anyClientBytes = fc.oneof(
      bytes(80),
      fc.tuple(fc.array(frontOp, { maxLength: 10 }), fc.boolean(), mutations).map(([ops, unnamed, m]) => mutate(frontendStream(ops, unnamed, SHORT_NAMES), m)),
      fc.tuple(fc.array(fc.tuple(fc.constantFrom(...'PBDCQSXE'), bytes(30)), { maxLength: 8 })).map(([list]) => Buffer.concat(list.map(([t, b]) => frame(t, b)))),
    );
    fc.assert(
      fc.property(anyClientBytes, chunkSizes, (stream, sizes) =>
        fuzzCase(stream, () => {
          const whole = runClient([stream], 'completions');
          const split = runClient(chunked(stream, sizes), 'completions');
          expect(split.error === null ? null : 'error').toBe(whole.error === null ? null : 'error');
          if (whole.error === null) expectBytes(split.out, whole.out);
          else expect(split.error).toBe(whole.error);
        }),
      ),
      runs(1600),
    );
  });

  it('length field: 08P01 when below 4 as a signed Int32; a named Parse over 8 MiB gets 54000; otherwise it waits for the body', () => {
    fc.assert(
      fc.property(edgeLength, fc.constantFrom(...'QPBDCESXHdF'), fc.boolean(), fc.boolean(), (length, letter, named, bytewise) => {
        const type = letter.charCodeAt(0);
        const prefix = letter === 'P' ? Buffer.concat([cstring(named ? 's1' : ''), cstring('select 1')]) : Buffer.alloc(0);
        const n = signed(length);
        const input = Buffer.concat([withLength(type, length), n - 4 >= prefix.length ? prefix : Buffer.alloc(0)]);
        fuzzCase(input, () => {
          const cs = new ClientStream(new ServerAnswers());
          const code = pgErrorCode(() => {
            for (const c of bytewise ? chunked(input, [1]) : [input]) cs.process(c, new Set()).concat();
          }, CLIENT_STREAM_CODES);
          if (n < 4) expect(code).toBe('08P01');
          // An empty Parse, Bind, Describe or Close body holds no name: malformed.
          else if (n === 4 && 'PBDC'.includes(letter)) expect(code).toBe('08P01');
          else if (letter === 'P' && named && 1 + n > MAX_NAMED_PARSE) expect(code).toBe('54000');
          else {
            expect(code).toBeNull();
            expect(cs.terminated).toBe(letter === 'X');
            if (letter !== 'X') expect(cs.atBoundary).toBe(n - 4 === input.length - 5);
          }
        });
      }),
      runs(600),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// ServerStream (transaction mode, server to client)

const writer = () => new BackendWriter(256);
const WARNINGS = ['LISTEN', 'PREPARE', 'DECLARE CURSOR'].map((tag) =>
  writer().noticeResponse({ severity: 'WARNING', code: '0A000', message: tagEffect(tag)!.warning! }).flush(),
);

/** The stream without the proxy's own transaction-mode warnings, and how many there were. */
function withoutWarnings(out: Buffer): { rest: Buffer; warnings: number } {
  let rest = out;
  let warnings = 0;
  for (const w of WARNINGS) {
    for (let at = rest.indexOf(w); at >= 0; at = rest.indexOf(w)) {
      rest = Buffer.concat([rest.subarray(0, at), rest.subarray(at + w.length)]);
      warnings++;
    }
  }
  return { rest, warnings };
}

const TAGS = ['SELECT 1', 'INSERT 0 1', 'BEGIN', 'COMMIT', 'SET', 'RESET', 'LISTEN', 'PREPARE', 'DECLARE CURSOR', 'DISCARD ALL', 'DEALLOCATE', 'CREATE TABLE', 'SETX'];
const backendMessage = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('I', 'T', 'E').map((s) => frame('Z', Buffer.from(s))) },
  { weight: 1, arbitrary: fc.constantFrom(frame('Z'), frame('Z', Buffer.from('IT'))) },
  { weight: 3, arbitrary: fc.constantFrom(frame('1'), frame('2'), frame('3'), frame('1', Buffer.from('x')), frame('3', Buffer.from('x'))) },
  { weight: 3, arbitrary: fc.oneof(fc.constantFrom(...TAGS), fc.string({ maxLength: 70 }).map(noNul)).map((t) => frame('C', cstring(t))) },
  { weight: 1, arbitrary: fc.constantFrom('SET', 'LISTEN', 'x'.repeat(80)).map((t) => frame('C', Buffer.from(t))) },
  {
    weight: 2,
    arbitrary: fc.constantFrom('0A000', '42P01', 'XX000').map((code) => writer().errorResponse({ severity: 'ERROR', code, message: 'm' }).flush()),
  },
  { weight: 1, arbitrary: fc.constant(writer().parameterStatus('TimeZone', 'UTC').flush()) },
  { weight: 1, arbitrary: fc.constant(writer().noticeResponse({ severity: 'NOTICE', code: '00000', message: 'server says hi' }).flush()) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...'DTAdnst'.split('')), bytes(30)).map(([t, b]) => frame(t, b)) },
  { weight: 1, arbitrary: fc.integer({ min: 100, max: 3000 }).map((n) => frame('D', Buffer.alloc(n, 0x31))) },
);

type Owed = 'client' | 'clientNamed' | 'proxy' | 'proxyNamed' | 'sync';
const owedOps = fc.array(fc.constantFrom<Owed>('client', 'clientNamed', 'proxy', 'proxyNamed', 'sync'), { maxLength: 10 });
const STATEMENT_UNIVERSE = ['pgtenant_a', 'pgtenant_b', 'pgtenant_c'];

function owe(answers: ServerAnswers, ops: readonly Owed[]): void {
  for (const [k, op] of ops.entries()) {
    const name = STATEMENT_UNIVERSE[k % STATEMENT_UNIVERSE.length]!;
    if (op === 'client') answers.client();
    else if (op === 'clientNamed') answers.client(name);
    else if (op === 'proxy') answers.proxy();
    else if (op === 'proxyNamed') answers.proxy(name);
    else answers.sync();
  }
}

type ServerRun = {
  nulled: boolean;
  out: Buffer;
  readies: number;
  status: number;
  transactions: number;
  lastType: number;
  dirty: boolean;
  atBoundary: boolean;
  names: string[];
  probe: string;
};

function runServer(chunks: readonly Buffer[], owed: readonly Owed[], probe: Probe): ServerRun {
  const answers = new ServerAnswers();
  owe(answers, owed);
  const ss = new ServerStream(answers);
  const statements = new BackendStatements();
  for (const n of STATEMENT_UNIVERSE.slice(0, 2)) statements.names.add(n);
  const outs: Buffer[] = [];
  let nulled = false;
  for (const chunk of chunks) {
    // ServerStream documents no exception: a protocol break is a null, so any throw fails the property.
    const out = ss.process(chunk, statements);
    if (!out) {
      nulled = true;
      break;
    }
    outs.push(out.concat());
  }
  return {
    nulled,
    out: Buffer.concat(outs),
    readies: ss.readies,
    status: ss.status,
    transactions: ss.transactions,
    lastType: ss.lastType,
    dirty: ss.dirty,
    atBoundary: ss.atBoundary,
    names: [...statements.names].sort(),
    probe: probeAnswers(answers, probe, STATEMENT_UNIVERSE),
  };
}

/**
 * Reference for a framed stream: what reaches the client when `owed` is what the backend owes. A bodiless
 * ParseComplete or CloseComplete answering the proxy's own message is dropped; an error skips to the sync point.
 */
function referenceServerOutput(stream: Buffer, owed: readonly Owed[]): Buffer {
  const queue = [...owed];
  const kept: Buffer[] = [];
  for (const f of framesOf(stream)) {
    const type = String.fromCharCode(f[0]!);
    if (type === 'Z') {
      while (queue.length > 0 && queue.shift() !== 'sync');
    } else if (type === '1' || type === '3') {
      if (queue.length > 0 && queue[0] !== 'sync') {
        const head = queue.shift()!;
        if ((head === 'proxy' || head === 'proxyNamed') && f.length === 5) continue;
      }
    } else if (type === 'E') {
      while (queue.length > 0 && queue[0] !== 'sync') queue.shift();
    }
    kept.push(f);
  }
  return Buffer.concat(kept);
}

describe('ServerStream', () => {
  it('framed streams: the same output, state, statements and owed answers however chunked, and what the reference keeps', () => {
    fc.assert(
      fc.property(fc.array(backendMessage, { maxLength: 14 }), owedOps, chunkSizes, fc.constantFrom<Probe>('completions', 'failures'), (messages, owed, sizes, probe) => {
        const stream = Buffer.concat(messages);
        fuzzCase(stream, () => {
          const whole = runServer([stream], owed, probe);
          const split = runServer(chunked(stream, sizes), owed, probe);
          expect(whole.nulled).toBe(false);
          expect(split.nulled).toBe(false);
          const w = withoutWarnings(whole.out);
          const s = withoutWarnings(split.out);
          expectBytes(s.rest, w.rest);
          expectBytes(w.rest, referenceServerOutput(stream, owed));
          // Warnings wait for a boundary at the end of a chunk: a framed stream ends on one, so all of them came.
          expect(s.warnings).toBe(w.warnings);
          expect({ ...split, out: null }).toEqual({ ...whole, out: null });
        });
      }),
      runs(1200),
    );
  });

  it('any bytes, mutated streams, any chunking: never throws, and a protocol break (null) does not depend on chunking', () => {
    const anyServerBytes = fc.oneof(
      bytes(80),
      fc.tuple(fc.array(backendMessage, { maxLength: 10 }), mutations).map(([m, list]) => mutate(Buffer.concat(m), list)),
      fc.tuple(fc.array(backendMessage, { maxLength: 6 }), messageType, edgeLength).map(([m, t, l]) => Buffer.concat([...m, withLength(t, l)])),
    );
    fc.assert(
      fc.property(anyServerBytes, owedOps, chunkSizes, (stream, owed, sizes) =>
        fuzzCase(stream, () => {
          const whole = runServer([stream], owed, 'completions');
          const split = runServer(chunked(stream, sizes), owed, 'completions');
          expect(split.nulled).toBe(whole.nulled);
          if (!whole.nulled) expectBytes(withoutWarnings(split.out).rest, withoutWarnings(whole.out).rest);
        }),
      ),
      runs(1600),
    );
  });

  it('length field: null exactly when below 4 as a signed Int32, else the body passes through', () => {
    fc.assert(
      fc.property(edgeLength, messageType, fc.boolean(), (length, type, bytewise) => {
        const header = withLength(type, length);
        fuzzCase(header, () => {
          const ss = new ServerStream(new ServerAnswers());
          const statements = new BackendStatements();
          let nulled = false;
          const outs: Buffer[] = [];
          for (const c of bytewise ? chunked(header, [1]) : [header]) {
            const out = ss.process(c, statements);
            if (!out) {
              nulled = true;
              break;
            }
            outs.push(out.concat());
          }
          const n = signed(length);
          expect(nulled).toBe(n < 4);
          if (n < 4) return;
          expectBytes(Buffer.concat(outs), header);
          expect(ss.atBoundary).toBe(n === 4);
        });
      }),
      runs(400),
    );
  });
});
