// HeaderScanner against a whole-buffer reference: every split, one byte at a time, random splits, bad lengths.
import { describe, expect, it } from 'vitest';
import { HeaderScanner, type StreamSide } from '../../../src/proxy/protocol/scanner.js';
import { BackendWriter } from '../../../src/proxy/protocol/writer.js';
import { bytewise, hex, prng, randomSplit, splitsInTwo, typed } from './bytes.js';

const fromServer = Buffer.concat([
  new BackendWriter().authenticationOk().parameterStatus('server_version', '17').backendKeyData(7, 9).readyForQuery('I').flush(),
  typed('T', hex('00 01', '"x"', '00 00 00 00 00 00 00 00 00 00 17 00 04 ff ff ff ff 00 00')),
  typed('D', hex('00 01 00 00 00 01 31')),
  typed('C', 'SELECT 1\0'),
  new BackendWriter().readyForQuery('T').flush(),
  typed('C', 'BEGIN\0'),
  new BackendWriter().errorResponse({ severity: 'ERROR', code: '42P01', message: 'nope' }).readyForQuery('E').flush(),
  typed('d', Buffer.alloc(3000, 0x5a)), // a long body full of 'Z' bytes that must not look like headers
]);

const fromClient = Buffer.concat([
  typed('Q', 'select 1\0'),
  typed('P', '\0select $1\0\0\0'),
  typed('B', hex('00 00 00 00 00 00 00 00')),
  typed('E', hex('00 00 00 00 00')),
  typed('S'),
  typed('X'),
]);

type State = {
  lastType: number;
  messages: number;
  readyForQueryStatus: number;
  sawTerminate: boolean;
  atBoundary: boolean;
  queries: number;
  syncs: number;
  readies: number;
  transactions: number;
};

/** What the scanner should report after seeing the first `seen` bytes, worked out on the whole buffer. */
function reference(stream: Buffer, seen: number, side: StreamSide): State {
  const state: State = {
    lastType: 0,
    messages: 0,
    readyForQueryStatus: 0,
    sawTerminate: false,
    atBoundary: seen === 0,
    queries: 0,
    syncs: 0,
    readies: 0,
    transactions: 0,
  };
  const frontend = side === 'frontend';
  let sinceReady = 0;
  let at = 0;
  while (at + 5 <= seen) {
    const type = String.fromCharCode(stream[at]!);
    const length = stream.readInt32BE(at + 1);
    state.lastType = stream[at]!;
    state.messages++;
    if (frontend) {
      if (type === 'Q' || type === 'E') state.queries++;
      if (type === 'Q' || type === 'S' || type === 'F') state.syncs++;
      if (type === 'X') state.sawTerminate = true;
    } else if (type === 'Z') {
      state.readies++;
      if (at + 6 <= seen) {
        state.readyForQueryStatus = stream[at + 5]!;
        if (state.readyForQueryStatus === 0x49 && sinceReady > 0) state.transactions++;
      }
      sinceReady = 0;
    } else sinceReady++;
    at += 1 + length;
    if (at === seen) state.atBoundary = true;
  }
  return state;
}

const stateOf = (s: HeaderScanner): State => ({
  lastType: s.lastType,
  messages: s.messages,
  readyForQueryStatus: s.readyForQueryStatus,
  sawTerminate: s.sawTerminate,
  atBoundary: s.atBoundary,
  queries: s.queries,
  syncs: s.syncs,
  readies: s.readies,
  transactions: s.transactions,
});

function feed(chunks: Buffer[], side: StreamSide = 'backend'): HeaderScanner {
  const scanner = new HeaderScanner(side);
  for (const chunk of chunks) expect(scanner.scan(chunk)).toBe(0);
  return scanner;
}

describe.each([
  ['server to client', fromServer, 'backend'],
  ['client to server', fromClient, 'frontend'],
] as const)('HeaderScanner, %s', (_name, stream, side) => {
  const whole = reference(stream, stream.length, side);

  it('sees every header in one chunk', () => {
    expect(stateOf(feed([stream], side))).toEqual(whole);
    expect(whole.atBoundary).toBe(true);
  });

  it('agrees with the reference after each byte, fed one byte at a time', () => {
    const scanner = new HeaderScanner(side);
    bytewise(stream).forEach((byte, i) => {
      expect(scanner.scan(byte)).toBe(0);
      expect(stateOf(scanner)).toEqual(reference(stream, i + 1, side));
    });
  });

  it('agrees with the reference at every split point', () => {
    for (const [a, b] of splitsInTwo(stream)) {
      const scanner = new HeaderScanner(side);
      expect(scanner.scan(a!)).toBe(0);
      expect(stateOf(scanner)).toEqual(reference(stream, a!.length, side));
      expect(scanner.scan(b!)).toBe(0);
      expect(stateOf(scanner)).toEqual(whole);
    }
  });

  it('ends in the same state for random splits (seeded)', () => {
    const random = prng(42);
    for (let i = 0; i < 200; i++) expect(stateOf(feed(randomSplit(stream, random, 64), side))).toEqual(whole);
  });
});

describe('HeaderScanner specifics', () => {
  it('reports the last ReadyForQuery status and the other flags', () => {
    const server = feed([fromServer]);
    expect(String.fromCharCode(server.readyForQueryStatus)).toBe('E');
    expect(String.fromCharCode(server.lastType)).toBe('d');
    expect(server.messages).toBe(12);
    expect(server.sawTerminate).toBe(false);
    const client = feed([fromClient], 'frontend');
    expect(client.sawTerminate).toBe(true);
    expect(client.readyForQueryStatus).toBe(0);
    expect(client.messages).toBe(6);
  });

  it('counts statements, sync points, ReadyForQuery and transactions on the side each belongs to', () => {
    // Client: Q (statement, sync), P, B, E (statement), S (sync), X.
    const client = feed([fromClient], 'frontend');
    expect({ queries: client.queries, syncs: client.syncs, readies: client.readies }).toEqual({ queries: 2, syncs: 2, readies: 0 });
    // The same bytes read as a server stream: 'E' is ErrorResponse and 'S' ParameterStatus there, not counted.
    expect(feed([fromClient], 'backend').queries).toBe(0);
    // Server: Z(I) right after the startup messages, Z(T) after SELECT, Z(E) after an error: a transaction only
    // ends at an idle ReadyForQuery, and the first one follows the login messages.
    const server = feed([fromServer]);
    expect({ readies: server.readies, transactions: server.transactions }).toEqual({ readies: 3, transactions: 1 });
  });

  it('counts autocommit statements and explicit transactions once each, and a bare Sync not at all', () => {
    const w = new BackendWriter();
    const stream = Buffer.concat([
      typed('C', 'SELECT 1\0'), w.readyForQuery('I').flush(), // autocommit statement
      w.readyForQuery('I').flush(), // a Sync with nothing before it
      typed('C', 'BEGIN\0'), w.readyForQuery('T').flush(),
      typed('C', 'INSERT 0 1\0'), w.readyForQuery('T').flush(),
      typed('C', 'COMMIT\0'), w.readyForQuery('I').flush(),
    ]);
    for (const chunks of [[stream], bytewise(stream)]) {
      const s = feed(chunks);
      expect({ readies: s.readies, transactions: s.transactions }).toEqual({ readies: 5, transactions: 2 });
    }
  });

  it('picks up a ReadyForQuery status byte that arrives in the next chunk', () => {
    const scanner = feed([hex('5a 00 00 00 05'), hex('54 5a 00')]);
    expect(scanner.readyForQueryStatus).toBe(0x54);
    expect(scanner.messages).toBe(1);
    expect(scanner.atBoundary).toBe(false);
    expect(scanner.scan(hex('00 00 05 49'))).toBe(0);
    expect(scanner.readyForQueryStatus).toBe(0x49);
    expect(scanner.atBoundary).toBe(true);
  });

  it('skips a large body spread over many chunks', () => {
    const header = hex('64 00 10 00 04'); // CopyData, 1 MiB body
    const body = Buffer.alloc(1 << 20, 0x5a);
    const chunks = [header, ...Array.from({ length: 16 }, (_, i) => body.subarray(i << 16, (i + 1) << 16)), hex('53 00 00 00 04')];
    const scanner = feed(chunks);
    expect(scanner.messages).toBe(2);
    expect(String.fromCharCode(scanner.lastType)).toBe('S');
    expect(scanner.readyForQueryStatus).toBe(0);
  });

  it('does not modify the chunks it scans', () => {
    const copy = Buffer.from(fromServer);
    feed([fromServer]);
    expect(fromServer).toEqual(copy);
  });

  it.each([
    ['0', '00 00 00 00'],
    ['3', '00 00 00 03'],
    ['2^31', '80 00 00 00'],
    ['2^32 - 1', 'ff ff ff ff'],
  ])('returns -1 for a length of %s, in one chunk or split', (_name, length) => {
    const bad = Buffer.concat([typed('S'), hex('51', length)]);
    expect(new HeaderScanner().scan(bad)).toBe(-1);
    for (let k = 1; k < bad.length; k++) {
      const scanner = new HeaderScanner();
      expect(scanner.scan(bad.subarray(0, k))).toBe(0);
      expect(scanner.scan(bad.subarray(k))).toBe(-1);
    }
  });

  it('accepts the smallest valid length, 4', () => {
    const scanner = feed([hex('53 00 00 00 04 48 00 00 00 04')]);
    expect(scanner.messages).toBe(2);
    expect(scanner.atBoundary).toBe(true);
  });
});
