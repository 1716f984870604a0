// ServerStream (transaction mode, server to client) byte by byte: framing under any split, dropping the proxy's own answers, dirty tags, statement bookkeeping, warnings, bad lengths, zero-copy.
import { describe, expect, it } from 'vitest';
import { mayChangeSession, tagEffect } from '../../../src/proxy/command-tags.js';
import { BackendWriter } from '../../../src/proxy/protocol/writer.js';
import { ServerAnswers } from '../../../src/proxy/server-answers.js';
import { ServerStream } from '../../../src/proxy/server-stream.js';
import { BackendStatements } from '../../../src/proxy/upstream.js';
import { bytewise, hex, prng, randomSplit, splitsInTwo, typed } from './bytes.js';

const w = new BackendWriter();
const ready = (status: 'I' | 'T' | 'E') => w.readyForQuery(status).flush();
const complete = (tag: string) => typed('C', `${tag}\0`);
const error = (code: string, message = 'nope') => w.errorResponse({ severity: 'ERROR', code, message }).flush();
const rowDescription = typed('T', hex('00 01', '"x"', '00 00 00 00 00 00 00 00 00 00 17 00 04 ff ff ff ff 00 00'));
const dataRow = typed('D', hex('00 01 00 00 00 01 31'));
const parseComplete = hex('31 00 00 00 04');
const bindComplete = hex('32 00 00 00 04');
const closeComplete = hex('33 00 00 00 04');

/**
 * Messages that each would change something if read as a header: a dropped CloseComplete or ParseComplete,
 * a ReadyForQuery, a ParameterStatus and a SET (dirty), a 0A000 error (expiry), a LISTEN (a notice), a length of 0 (null).
 */
const lookalikes = Buffer.concat([
  closeComplete,
  parseComplete,
  ready('I'),
  w.parameterStatus('TimeZone', 'UTC').flush(),
  complete('SET'),
  complete('LISTEN'),
  error('0A000'),
  hex('44 00 00 00 00'),
]);
const copyBody = Buffer.concat(Array.from({ length: Math.ceil(3000 / lookalikes.length) }, () => lookalikes));

/** A realistic stream of several transactions; nothing in it is dirty, dropped or warned about. */
const realistic = Buffer.concat([
  rowDescription, dataRow, complete('SELECT 1'), ready('I'),
  ready('I'), // a Sync with nothing before it: no transaction
  complete('BEGIN'), ready('T'),
  complete('INSERT 0 1'), ready('T'),
  error('42P01'), ready('E'),
  complete('ROLLBACK'), ready('I'),
  typed('H', hex('00 00 00')), typed('d', copyBody), typed('c'), complete('COPY 1'), ready('I'),
]);

type State = { readies: number; status: number; transactions: number; lastType: number; atBoundary: boolean; dirty: boolean };

const stateOf = (s: ServerStream): State => ({
  readies: s.readies,
  status: s.status,
  transactions: s.transactions,
  lastType: s.lastType,
  atBoundary: s.atBoundary,
  dirty: s.dirty,
});

/** What ServerStream should report after the first `seen` bytes of a plain stream, and how many header bytes it holds back. */
function reference(stream: Buffer, seen: number): State & { withheld: number } {
  const state = { readies: 0, status: 0x49, transactions: 0, lastType: 0, atBoundary: true, dirty: false, withheld: 0 };
  let sinceReady = 0;
  let at = 0;
  while (at < seen) {
    if (at + 5 > seen) {
      state.withheld = seen - at;
      state.atBoundary = false;
      break;
    }
    const type = stream[at]!;
    state.lastType = type;
    if (type === 0x5a) {
      state.readies++;
      if (at + 6 <= seen) {
        state.status = stream[at + 5]!;
        if (state.status === 0x49 && sinceReady > 0) state.transactions++;
        sinceReady = 0;
      }
    } else sinceReady++;
    at += 1 + stream.readInt32BE(at + 1);
    state.atBoundary = at <= seen;
  }
  return state;
}

const withoutWithheld = ({ withheld: _, ...state }: State & { withheld: number }): State => state;

function fresh(epoch = { value: 0 }) {
  const answers = new ServerAnswers();
  return { answers, server: new ServerStream(answers), statements: new BackendStatements(epoch) };
}

/** Everything process() returned for each chunk, copied at once: the returned pieces are reused by the next call. */
function feed(server: ServerStream, chunks: Buffer[], statements = new BackendStatements()): Buffer[] {
  return chunks.map((chunk) => {
    const out = server.process(chunk, statements);
    expect(out).not.toBeNull();
    return out!.concat();
  });
}

/** Splits a stream into its messages; fails unless they tile it exactly. */
function messages(stream: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  while (at + 5 <= stream.length) {
    const end = at + 1 + stream.readInt32BE(at + 1);
    out.push(stream.subarray(at, end));
    at = end;
  }
  expect(at).toBe(stream.length);
  return out;
}

/** The fields of an ErrorResponse or NoticeResponse by their one-letter codes. */
function fields(message: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  for (const field of message.subarray(5, -1).toString('utf8').split('\0').filter(Boolean)) out[field[0]!] = field.slice(1);
  return out;
}

/** Buffer.equals first: toEqual walks a Buffer byte by byte, too slow for thousands of splits; it still explains a mismatch. */
function expectBytes(actual: Buffer, expected: Buffer, message?: string): void {
  if (!actual.equals(expected)) expect(actual, message).toEqual(expected);
}

const chunkings = (stream: Buffer): [string, Buffer[][]][] => [
  ['whole', [[stream]]],
  ['split in two at every offset', [...splitsInTwo(stream)]],
  ['byte by byte', [bytewise(stream)]],
  ['randomly split (seeds 1..40)', Array.from({ length: 40 }, (_, seed) => randomSplit(stream, prng(seed + 1), seed % 2 ? 64 : 7))],
];

describe('ServerStream framing a realistic server stream', () => {
  const whole = withoutWithheld(reference(realistic, realistic.length));

  it('the reference reads the stream as the server meant it', () => {
    // Guards the reference itself: seven ReadyForQuery, three of them closing a transaction back to idle.
    expect(whole).toEqual({ readies: 7, status: 0x49, transactions: 3, lastType: 0x5a, atBoundary: true, dirty: false });
  });

  it('passes the whole chunk unchanged and reads it as the reference does', () => {
    const { server } = fresh();
    expectBytes(Buffer.concat(feed(server, [realistic])), realistic);
    expect(stateOf(server)).toEqual(whole);
  });

  it('at every split point: passes all but a partial header after the first part, everything after the second', () => {
    for (const [a, b] of splitsInTwo(realistic)) {
      const { server } = fresh();
      const expected = reference(realistic, a!.length);
      const [first] = feed(server, [a!]);
      expectBytes(first!, realistic.subarray(0, a!.length - expected.withheld));
      expect(stateOf(server)).toEqual(withoutWithheld(expected));
      const [second] = feed(server, [b!]);
      expectBytes(Buffer.concat([first!, second!]), realistic);
      expect(stateOf(server)).toEqual(whole);
    }
  });

  it('agrees with the reference after each byte, fed one byte at a time', () => {
    const { server, statements } = fresh();
    const passed: Buffer[] = [];
    bytewise(realistic).forEach((byte, i) => {
      passed.push(...feed(server, [byte], statements));
      const expected = reference(realistic, i + 1);
      expect(stateOf(server)).toEqual(withoutWithheld(expected));
      expect(Buffer.concat(passed).length).toBe(i + 1 - expected.withheld);
    });
    expectBytes(Buffer.concat(passed), realistic);
  });

  it('passes everything and ends in the same state for random splits (seeded)', () => {
    for (let seed = 1; seed <= 100; seed++) {
      const { server } = fresh();
      const chunks = randomSplit(realistic, prng(seed), seed % 2 ? 64 : 9);
      expectBytes(Buffer.concat(feed(server, chunks)), realistic, `seed ${seed}`);
      expect(stateOf(server), `seed ${seed}`).toEqual(whole);
    }
  });

  it('does not modify the chunks it reads', () => {
    const copy = Buffer.from(realistic);
    feed(fresh().server, [realistic]);
    feed(fresh().server, bytewise(realistic));
    expect(realistic).toEqual(copy);
  });
});

describe('ServerStream dropping the answers to the proxy’s own Close and Parse', () => {
  // The proxy closes a stale statement and prepares it again before the client's own Parse, Bind and Execute.
  const batch = Buffer.concat([closeComplete, parseComplete, parseComplete, bindComplete, dataRow, complete('SELECT 1'), ready('I')]);
  const owe = (answers: ServerAnswers) => {
    answers.proxy();
    answers.proxy('s1');
    answers.client();
    answers.sync();
  };

  it.each(chunkings(batch))('drops exactly the proxy’s CloseComplete and ParseComplete, %s', (_name, runs) => {
    for (const chunks of runs) {
      const { answers, server, statements } = fresh();
      statements.names.add('s1');
      owe(answers);
      expectBytes(Buffer.concat(feed(server, chunks, statements)), batch.subarray(10));
      expect([...statements.names]).toEqual(['s1']);
      expect(server.atBoundary).toBe(true);
      expect(server.readies).toBe(1);
    }
  });

  it('drops a CloseComplete whose header arrives in pieces, and passes what surrounds it', () => {
    const stream = Buffer.concat([dataRow, closeComplete, complete('SELECT 1')]);
    const dataRowEnd = dataRow.length;
    // Every way to cut the header, including three pieces with its middle alone in one chunk.
    const cuts = [...splitsInTwo(stream), bytewise(stream), [stream.subarray(0, dataRowEnd + 1), stream.subarray(dataRowEnd + 1, dataRowEnd + 3), stream.subarray(dataRowEnd + 3)]];
    for (const chunks of cuts) {
      const { answers, server } = fresh();
      answers.proxy();
      expectBytes(Buffer.concat(feed(server, chunks)), Buffer.concat([dataRow, complete('SELECT 1')]));
    }
    // The same cuts with the client owed first: the CloseComplete is the client's and passes, its held-back header included.
    for (const chunks of cuts) {
      const { answers, server } = fresh();
      answers.client();
      answers.proxy();
      expectBytes(Buffer.concat(feed(server, chunks)), stream);
    }
  });

  it('passes the client’s own ParseComplete and CloseComplete', () => {
    const stream = Buffer.concat([parseComplete, closeComplete, ready('I')]);
    for (const chunks of [[stream], bytewise(stream)]) {
      const { answers, server } = fresh();
      answers.client('c1');
      answers.client();
      answers.sync();
      expectBytes(Buffer.concat(feed(server, chunks)), stream);
    }
  });

  it('passes a ParseComplete when nothing is owed', () => {
    const { server } = fresh();
    expectBytes(Buffer.concat(feed(server, [parseComplete, closeComplete])), Buffer.concat([parseComplete, closeComplete]));
  });

  it('is not fooled by answer-like bytes inside a body before the real answer', () => {
    // The proxy's Close comes in the second batch; a DataRow full of CloseComplete headers comes before it.
    const stream = Buffer.concat([
      parseComplete, typed('D', copyBody), complete('SELECT 1'), ready('I'),
      closeComplete, parseComplete, ready('I'),
    ]);
    const dropAt = stream.length - 6 - 5 - 5;
    const expected = Buffer.concat([stream.subarray(0, dropAt), stream.subarray(dropAt + 5)]);
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const { answers, server } = fresh();
        answers.client();
        answers.sync();
        answers.proxy();
        answers.client();
        answers.sync();
        expectBytes(Buffer.concat(feed(server, chunks)), expected);
        expect(server.readies).toBe(2);
        expect(server.dirty).toBe(false);
      }
    }
  });

  it('keeps the order of many owed answers across batches', () => {
    // More than fit the queue at first, over several batches, so it grows and wraps around.
    const { answers, server } = fresh();
    for (let batch = 0; batch < 5; batch++) {
      const sent: Buffer[] = [];
      const expected: Buffer[] = [];
      for (let k = 0; k < 13; k++) {
        const byProxy = (k * 7 + batch) % 3 === 0;
        const answer = k % 2 ? parseComplete : closeComplete;
        if (byProxy) answers.proxy();
        else answers.client();
        sent.push(answer);
        if (!byProxy) expected.push(answer);
      }
      answers.sync();
      sent.push(ready('I'));
      expected.push(ready('I'));
      const stream = Buffer.concat(sent);
      const chunks = batch % 2 ? bytewise(stream) : [stream];
      expectBytes(Buffer.concat(feed(server, chunks)), Buffer.concat(expected), `batch ${batch}`);
    }
  });

  it('passes an owed answer that has a body, whole, rather than leaving its body without a header', () => {
    const odd = typed('1', hex('00'));
    const { answers, server } = fresh();
    answers.proxy();
    answers.proxy();
    expectBytes(Buffer.concat(feed(server, [odd, parseComplete])), odd);
  });

  it('after an ErrorResponse, forgets the statements whose Parse never ran, up to the sync point only', () => {
    const stream = Buffer.concat([parseComplete, error('42P01'), ready('E'), parseComplete, bindComplete, ready('I')]);
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const { answers, server, statements } = fresh();
        for (const name of ['s1', 's2', 's3', 'old']) statements.names.add(name);
        answers.proxy('s1'); // prepared: its ParseComplete arrives
        answers.client('s2'); // fails
        answers.proxy('s3'); // never runs: the server skips to Sync
        answers.sync();
        answers.proxy('s4'); // the next batch is untouched by the error
        answers.sync();
        statements.names.add('s4');
        const out = Buffer.concat(feed(server, chunks, statements));
        expect([...statements.names].sort()).toEqual(['old', 's1', 's4']);
        // Both proxy ParseCompletes are dropped: the error did not shift the next batch's answers.
        expectBytes(out, Buffer.concat([error('42P01'), ready('E'), bindComplete, ready('I')]));
      }
    }
  });
});

describe('ServerStream dirty', () => {
  const dirtyTags = ['SET', 'RESET', 'DISCARD ALL', 'LISTEN', 'CREATE TABLE', 'DEALLOCATE', 'DEALLOCATE ALL', 'DISCARD PLANS', 'LOAD', 'PREPARE', 'DECLARE CURSOR'];
  // SETX fails the four-byte prefix check ('SET\0' has its NUL there); RESETX, LISTENING, CREATE INDEX, DISCARD,
  // PREPARE TRANSACTION and LOADED pass it and are told apart only by the whole tag.
  const cleanTags = ['SELECT 1', 'INSERT 0 1', 'UPDATE 3', 'DELETE 0', 'COMMIT', 'BEGIN', 'ROLLBACK', 'SETX', 'RESETX', 'LISTENING', 'CREATE INDEX', 'DISCARD', 'PREPARE TRANSACTION', 'LOADED', ''];

  it.each(dirtyTags)('is set by CommandComplete %j, in any chunking', (tag) => {
    expect(tagEffect(tag)?.dirty).toBe(true);
    const stream = Buffer.concat([complete(tag), ready('I')]);
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const { server } = fresh();
        feed(server, chunks);
        expect(server.dirty).toBe(true);
      }
    }
  });

  it.each(cleanTags)('is not set by CommandComplete %j, in any chunking', (tag) => {
    expect(tagEffect(tag)).toBeNull();
    const stream = Buffer.concat([complete(tag), ready('I')]);
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const { server } = fresh();
        expectBytes(Buffer.concat(feed(server, chunks)), stream);
        expect(server.dirty).toBe(false);
      }
    }
  });

  it('a prefix-sharing tag reaches the full lookup and is still clean there', () => {
    const resetx = Buffer.from('RESETX\0', 'latin1');
    expect(mayChangeSession(resetx, resetx.length)).toBe(true);
    expect(tagEffect('RESETX')).toBeNull();
    const setx = Buffer.from('SETX\0', 'latin1');
    expect(mayChangeSession(setx, setx.length)).toBe(false);
  });

  it('is set by a ParameterStatus, in any chunking', () => {
    const stream = Buffer.concat([complete('SELECT 1'), w.parameterStatus('TimeZone', 'UTC').flush(), ready('I')]);
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const { server } = fresh();
        expectBytes(Buffer.concat(feed(server, chunks)), stream);
        expect(server.dirty).toBe(true);
      }
    }
  });

  it('linked() also starts the transaction count afresh: a ReadyForQuery right after it ends none', () => {
    const { server } = fresh();
    feed(server, [complete('SELECT 1')]);
    server.linked();
    feed(server, [ready('I')]);
    expect(server.transactions).toBe(0);
    feed(server, [complete('SELECT 1'), ready('I')]);
    expect(server.transactions).toBe(1);
  });

  it('stays set across ReadyForQuery and clean tags until linked()', () => {
    const { server } = fresh();
    feed(server, [complete('SET'), ready('I')]);
    feed(server, [complete('SELECT 1'), ready('I')]);
    expect(server.dirty).toBe(true);
    server.linked();
    expect(server.dirty).toBe(false);
    feed(server, [complete('SELECT 1'), ready('I')]);
    expect(server.dirty).toBe(false);
    feed(server, [complete('RESET'), ready('I')]);
    expect(server.dirty).toBe(true);
  });
});

describe('ServerStream and the backend’s prepared statements', () => {
  it.each(['DISCARD ALL', 'DEALLOCATE', 'DEALLOCATE ALL'])('%s makes the backend forget its statements, in any chunking', (tag) => {
    const stream = Buffer.concat([complete(tag), ready('I')]);
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const { server, statements } = fresh();
        statements.names.add('a').add('b');
        feed(server, chunks, statements);
        expect(statements.names.size).toBe(0);
      }
    }
  });

  it.each(['SET', 'DISCARD PLANS', 'SELECT 1', 'PREPARE'])('%s leaves them', (tag) => {
    const { server, statements } = fresh();
    statements.names.add('a');
    feed(server, [complete(tag), ready('I')], statements);
    expect([...statements.names]).toEqual(['a']);
  });

  it('an ErrorResponse with SQLSTATE 0A000 expires them on every backend of the pool and makes this one dirty, in any chunking', () => {
    // A long message so the SQLSTATE is captured from a body that spans many chunks.
    const stale = error('0A000', `cached plan must not change result type ${'x'.repeat(300)}`);
    const stream = Buffer.concat([stale, ready('E')]);
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const epoch = { value: 5 };
        const { server, statements } = fresh(epoch);
        const other = new BackendStatements(epoch);
        statements.names.add('a');
        other.names.add('b');
        expectBytes(Buffer.concat(feed(server, chunks, statements)), stream);
        expect(epoch.value).toBe(6);
        expect(statements.names.size).toBe(0);
        other.refresh();
        expect(other.names.size).toBe(0);
        expect(server.dirty).toBe(true);
      }
    }
  });

  it.each(['42P01', '0A001', '40001', 'XX000'])('an ErrorResponse with SQLSTATE %s leaves them and stays clean', (code) => {
    const epoch = { value: 0 };
    const { server, statements } = fresh(epoch);
    const other = new BackendStatements(epoch);
    statements.names.add('a');
    other.names.add('b');
    feed(server, [error(code), ready('E')], statements);
    other.refresh();
    expect(epoch.value).toBe(0);
    expect([...statements.names]).toEqual(['a']);
    expect([...other.names]).toEqual(['b']);
    expect(server.dirty).toBe(false);
  });

  it('only the SQLSTATE field counts: 0A000 in the message text of another error expires nothing', () => {
    const epoch = { value: 0 };
    const { server, statements } = fresh(epoch);
    statements.names.add('a');
    // RAISE EXCEPTION 'C0A000' puts the bytes of a 0A000 code field in the message.
    feed(server, [error('P0001', 'C0A000'), ready('E')], statements);
    expect(epoch.value).toBe(0);
    expect([...statements.names]).toEqual(['a']);
    expect(server.dirty).toBe(false);
  });

  it('a NoticeResponse carrying 0A000 is not an error: nothing expires', () => {
    const epoch = { value: 0 };
    const { server, statements } = fresh(epoch);
    statements.names.add('a');
    feed(server, [w.noticeResponse({ severity: 'WARNING', code: '0A000', message: 'x' }).flush(), ready('I')], statements);
    expect(epoch.value).toBe(0);
    expect([...statements.names]).toEqual(['a']);
  });
});

describe('ServerStream warnings for what transaction mode cannot carry', () => {
  const warned = ['LISTEN', 'PREPARE', 'DECLARE CURSOR'];

  const notices = (out: Buffer): Buffer[] => messages(out).filter((m) => m[0] === 0x4e);

  it.each(warned)('appends one WARNING 0A000 after %s once the chunk ends at a boundary', (tag) => {
    const stream = Buffer.concat([complete(tag), ready('I')]);
    const { server } = fresh();
    const [out] = feed(server, [stream]);
    expectBytes(out!.subarray(0, stream.length), stream);
    const [notice, ...more] = messages(out!.subarray(stream.length));
    expect(more).toEqual([]);
    expect(notice![0]).toBe(0x4e);
    expect(fields(notice!)).toMatchObject({ S: 'WARNING', V: 'WARNING', C: '0A000', M: tagEffect(tag)!.warning! });
    // Sent once: the next chunk passes alone.
    const next = Buffer.concat([complete('SELECT 1'), ready('I')]);
    const again = server.process(next, new BackendStatements());
    expect(again?.length).toBe(1);
    expect(again?.get(0)).toBe(next);
  });

  it.each(warned)('after %s, waits while a header or a body is half passed', (tag) => {
    const tail = Buffer.concat([dataRow, ready('I')]);
    for (let k = 1; k < tail.length; k++) {
      const { server } = fresh();
      const head = Buffer.concat([complete(tag), tail.subarray(0, k)]);
      const [first] = feed(server, [head]);
      if (k === dataRow.length) {
        // A boundary between the DataRow and the ReadyForQuery: the warning may go here.
        expect(notices(first!)).toHaveLength(1);
        continue;
      }
      // Nothing appended: what passed is the head, less any header bytes held back.
      expectBytes(first!, head.subarray(0, first!.length));
      expect(first!.length).toBeGreaterThan(head.length - 5);
      const [second] = feed(server, [tail.subarray(k)]);
      const out = Buffer.concat([first!, second!]);
      expect(notices(out)).toHaveLength(1);
      expectBytes(out.subarray(0, head.length + tail.length - k), Buffer.concat([complete(tag), tail]));
    }
  });

  it.each(warned)('after %s, in any chunking: exactly one warning, at a boundary, after the tag; removing it gives the stream back', (tag) => {
    const stream = Buffer.concat([rowDescription, dataRow, complete(tag), typed('d', copyBody), ready('T'), complete('SELECT 1'), ready('I')]);
    const tagEnd = rowDescription.length + dataRow.length + complete(tag).length;
    for (const [, runs] of chunkings(stream)) {
      for (const chunks of runs) {
        const { server } = fresh();
        const all = messages(Buffer.concat(feed(server, chunks)));
        const at = all.findIndex((m) => m[0] === 0x4e);
        expect(all.filter((m) => m[0] === 0x4e)).toHaveLength(1);
        expect(Buffer.concat(all.slice(0, at)).length).toBeGreaterThanOrEqual(tagEnd);
        expectBytes(Buffer.concat(all.filter((_, i) => i !== at)), stream);
      }
    }
  });

  it('warns once for each such command answered in the same chunk (LISTEN a; PREPARE p AS ...)', () => {
    const { server } = fresh();
    const out = Buffer.concat(feed(server, [Buffer.concat([complete('LISTEN'), complete('PREPARE'), ready('I')])]));
    expect(notices(out).map((n) => fields(n).M)).toEqual([tagEffect('LISTEN')!.warning, tagEffect('PREPARE')!.warning]);
  });

  it('warns again for a later LISTEN, once per occurrence', () => {
    const { server } = fresh();
    const stream = Buffer.concat([complete('LISTEN'), ready('I')]);
    expect(notices(Buffer.concat(feed(server, [stream])))).toHaveLength(1);
    expect(notices(Buffer.concat(feed(server, [stream])))).toHaveLength(1);
  });

  it.each(['SET', 'DISCARD ALL', 'CREATE TABLE', 'SELECT 1'])('does not warn after %s', (tag) => {
    const stream = Buffer.concat([complete(tag), ready('I')]);
    expectBytes(Buffer.concat(feed(fresh().server, [stream])), stream);
  });
});

describe('mayChangeSession', () => {
  // Every tag in the effects table; tagEffect confirms the list is the table's.
  const tags = [
    'SET', 'RESET', 'LOAD', 'DISCARD PLANS', 'DISCARD TEMP', 'DISCARD SEQUENCES', 'DISCARD ALL', 'DEALLOCATE', 'DEALLOCATE ALL',
    'CREATE TABLE', 'CREATE VIEW', 'CREATE SEQUENCE', 'LISTEN', 'PREPARE', 'DECLARE CURSOR',
  ];
  const tagBytes = (tag: string) => Buffer.from(`${tag}\0`, 'latin1');

  it.each(tags)('is true for the first four bytes of %j', (tag) => {
    expect(tagEffect(tag)).not.toBeNull();
    expect(mayChangeSession(tagBytes(tag), 4)).toBe(true);
    expect(mayChangeSession(tagBytes(tag).subarray(0, 4), 4)).toBe(true);
    expect(mayChangeSession(tagBytes(tag), tag.length + 1)).toBe(true);
  });

  it('the table warns about exactly LISTEN, PREPARE, DECLARE CURSOR and forgets statements on exactly DISCARD ALL and DEALLOCATE [ALL]', () => {
    expect(tags.filter((t) => tagEffect(t)!.warning !== null)).toEqual(['LISTEN', 'PREPARE', 'DECLARE CURSOR']);
    expect(tags.filter((t) => tagEffect(t)!.forgetsStatements)).toEqual(['DISCARD ALL', 'DEALLOCATE', 'DEALLOCATE ALL']);
  });

  it.each(['SELECT 1', 'INSERT 0 1', 'UPDATE 3', 'DELETE 2', 'COMMIT', 'BEGIN', 'ROLLBACK', 'COPY 5', 'FETCH 10', 'SETX'])('is false for %j', (tag) => {
    expect(mayChangeSession(tagBytes(tag), tag.length + 1)).toBe(false);
  });

  it('is false for fewer than four bytes, whatever the buffer holds', () => {
    for (let length = 0; length < 4; length++) {
      expect(mayChangeSession(tagBytes('SET'), length)).toBe(false);
      expect(mayChangeSession(Buffer.from('SET', 'latin1').subarray(0, length), length)).toBe(false);
    }
  });
});

describe('ServerStream and bad lengths', () => {
  it.each([
    ['0', '00 00 00 00'],
    ['3', '00 00 00 03'],
    ['-1', 'ff ff ff ff'],
    ['-2^31', '80 00 00 00'],
  ])('returns null for a length of %s, in one chunk or split', (_name, length) => {
    const bad = Buffer.concat([complete('SELECT 1'), hex('44', length)]);
    expect(fresh().server.process(bad, new BackendStatements())).toBeNull();
    for (let k = 1; k < bad.length; k++) {
      const { server, statements } = fresh();
      expect(server.process(bad.subarray(0, k), statements)).not.toBeNull();
      expect(server.process(bad.subarray(k), statements)).toBeNull();
    }
    const { server, statements } = fresh();
    const results = bytewise(bad).map((byte) => server.process(byte, statements));
    expect(results.slice(0, -1).every((r) => r !== null)).toBe(true);
    expect(results.at(-1)).toBeNull();
  });

  it('returns null for a bad length where a dropped answer was owed', () => {
    const { answers, server, statements } = fresh();
    answers.proxy();
    expect(server.process(hex('33 00 00 00 00'), statements)).toBeNull();
  });

  it('accepts the smallest valid length, 4', () => {
    const { server } = fresh();
    const stream = hex('32 00 00 00 04 6e 00 00 00 04');
    expectBytes(Buffer.concat(feed(server, [stream])), stream);
    expect(server.atBoundary).toBe(true);
    expect(server.lastType).toBe(0x6e);
  });
});

describe('ServerStream without copies', () => {
  it('returns the very chunk it was given when nothing is dropped', () => {
    const { server, statements } = fresh();
    const out = server.process(realistic, statements);
    expect(out?.length).toBe(1);
    expect(out?.get(0)).toBe(realistic);
  });

  it('returns the very chunk for a chunk in the middle of a body, and for one ending mid-body', () => {
    const copy = typed('d', copyBody);
    const { server, statements } = fresh();
    const first = copy.subarray(0, 100);
    const middle = copy.subarray(100, 2000);
    const out1 = server.process(first, statements);
    expect(out1?.length).toBe(1);
    expect(out1?.get(0)).toBe(first);
    const out2 = server.process(middle, statements);
    expect(out2?.length).toBe(1);
    expect(out2?.get(0)).toBe(middle);
  });

  it('returns the very chunk when the client owns the ParseComplete in it', () => {
    const { answers, server, statements } = fresh();
    answers.client('c1');
    answers.sync();
    const chunk = Buffer.concat([parseComplete, bindComplete, complete('SELECT 1'), ready('I')]);
    const out = server.process(chunk, statements);
    expect(out?.length).toBe(1);
    expect(out?.get(0)).toBe(chunk);
  });
});
