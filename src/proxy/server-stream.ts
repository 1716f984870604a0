// Transaction mode, server to client: frames the server's messages, drops answers to the proxy's own Close and Parse, and reads where the transaction stands.
import { mayChangeSession, tagEffect } from './command-tags.js';
import { Backend } from './protocol/constants.js';
import { Pieces } from './pieces.js';
import { BackendWriter } from './protocol/writer.js';
import type { ServerAnswers } from './server-answers.js';
import type { BackendStatements } from './upstream.js';

const HEADER = 5;
const IDLE = 0x49; // 'I'
const PARSE_COMPLETE = 0x31;
const CLOSE_COMPLETE = 0x33;
const COMMAND_COMPLETE = 0x43;
/** Enough of a CommandComplete for any tag that matters, and of an ErrorResponse for its SQLSTATE. */
const CAPTURE = 64;
const FEATURE_NOT_SUPPORTED = Buffer.from('0A000', 'latin1');
const CODE_FIELD = 0x43; // 'C'

/** What process() returns: written and cleared by the caller before any other chunk is processed, so one serves all relays. */
const SERVER_OUT = new Pieces();

/**
 * Only headers are read, plus the status byte of ReadyForQuery and up to CAPTURE bytes of CommandComplete and
 * ErrorResponse, copied into one buffer per client: the usual chunk passes whole, with nothing allocated.
 */
export class ServerStream {
  /** ReadyForQuery messages, cumulative: one per client sync point. */
  readies = 0;
  /** The transaction status of the last ReadyForQuery. */
  status = IDLE;
  /** Transactions finished (ReadyForQuery back to idle after other messages). */
  transactions = 0;
  /** Type of the last message whose header was read. */
  lastType = 0;
  /** The client changed session state on this backend (SET, LISTEN, a ParameterStatus): reset before reuse. */
  dirty = false;
  /** Warnings for the client about what transaction mode cannot carry, sent at the next boundary (rare: made then). */
  private pendingNotices: string[] | null = null;
  private sinceReady = 0;
  /** Allocated at the first header split across chunks (idle clients are many; splits are rare). */
  private header: Buffer | null = null;
  private headerSeen = 0;
  private remaining = 0;
  private type = 0;
  private wantStatus = false;
  private readonly capture = Buffer.alloc(CAPTURE);
  private captureLength = 0;
  private captureWant = 0;
  /** The linked backend's statements, set by each process() call. */
  private statements: BackendStatements | null = null;

  constructor(private readonly answers: ServerAnswers) {}

  /** Between messages: nothing half read or half passed on. */
  get atBoundary(): boolean {
    return this.headerSeen === 0 && this.remaining === 0;
  }

  /** A backend was linked for a new transaction: it starts clean. */
  linked(): void {
    this.dirty = false;
    this.sinceReady = 0;
  }

  /** What goes to the client for this chunk, in order (usually the chunk itself); null when the server breaks the protocol. */
  process(chunk: Buffer, statements: BackendStatements): Pieces | null {
    this.statements = statements;
    const out = SERVER_OUT;
    out.clear();
    let pass = 0;
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.remaining > 0) {
        i = this.body(chunk, i);
      } else if (this.headerSeen === 0 && n - i >= HEADER) {
        const length = chunk.readInt32BE(i + 1);
        if (length < 4) return null;
        if (this.serverHeader(chunk[i]!, length)) {
          out.add(chunk.subarray(pass, i));
          pass = i + HEADER;
        }
        i += HEADER;
      } else {
        if (this.headerSeen === 0) out.add(chunk.subarray(pass, i));
        (this.header ??= Buffer.alloc(HEADER))[this.headerSeen++] = chunk[i++]!;
        pass = i;
        if (this.headerSeen === HEADER) {
          this.headerSeen = 0;
          const length = this.header!.readInt32BE(1);
          if (length < 4) return null;
          if (!this.serverHeader(this.header![0]!, length)) out.add(Buffer.from(this.header!));
        }
      }
    }
    if (this.headerSeen === 0) out.add(pass === 0 ? chunk : chunk.subarray(pass, n));
    if (this.pendingNotices && this.atBoundary) {
      const writer = new BackendWriter(256);
      for (const message of this.pendingNotices) writer.noticeResponse({ severity: 'WARNING', code: '0A000', message });
      out.add(writer.flush());
      this.pendingNotices = null;
    }
    return out;
  }

  /** Passes body bytes, reading the status byte and the captured prefix on the way; returns the new position. */
  private body(chunk: Buffer, i: number): number {
    if (this.wantStatus) {
      this.status = chunk[i]!;
      this.wantStatus = false;
      if (this.status === IDLE && this.sinceReady > 0) this.transactions++;
      this.sinceReady = 0;
    }
    const step = Math.min(this.remaining, chunk.length - i);
    if (this.captureLength < this.captureWant) {
      // Byte by byte: at most CAPTURE bytes, and Buffer.copy of part of a chunk would allocate a view each time.
      const take = Math.min(step, this.captureWant - this.captureLength);
      const capture = this.capture;
      for (let k = 0; k < take; k++) capture[this.captureLength + k] = chunk[i + k]!;
      this.captureLength += take;
      if (this.captureLength === this.captureWant) this.captured();
    }
    this.remaining -= step;
    return i + step;
  }

  /** Reads one header; true when the message (a bodiless answer to the proxy's own Close or Parse) is dropped. */
  private serverHeader(type: number, length: number): boolean {
    this.type = type;
    this.lastType = type;
    this.remaining = length - 4;
    this.captureLength = 0;
    this.captureWant = 0;
    switch (type) {
      case Backend.ReadyForQuery:
        this.readies++;
        this.wantStatus = this.remaining > 0;
        this.answers.ready();
        return false;
      case PARSE_COMPLETE:
      case CLOSE_COMPLETE:
        this.sinceReady++;
        return this.answers.completed() && length === 4;
      case Backend.ErrorResponse:
        // The server skips to the next Sync: what it owed for the rest of this batch never comes.
        if (this.statements) this.answers.failed(this.statements.names);
        this.captureWant = Math.min(CAPTURE, this.remaining);
        break;
      case COMMAND_COMPLETE:
        this.captureWant = Math.min(CAPTURE, this.remaining);
        break;
      case Backend.ParameterStatus:
        this.dirty = true;
        break;
    }
    this.sinceReady++;
    if (this.captureWant === 0 && (type === Backend.ErrorResponse || type === COMMAND_COMPLETE)) this.captured();
    return false;
  }

  /** A CommandComplete tag or the start of an ErrorResponse, whole. */
  private captured(): void {
    if (this.type === COMMAND_COMPLETE) {
      // Most tags (SELECT, INSERT, COMMIT) are told apart by their first bytes, without making a string.
      if (!mayChangeSession(this.capture, this.captureLength)) return;
      const nul = this.capture.indexOf(0);
      const end = nul >= 0 && nul < this.captureLength ? nul : this.captureLength;
      const effect = tagEffect(this.capture.toString('latin1', 0, end));
      if (!effect) return;
      this.dirty = true;
      if (effect.forgetsStatements) this.statements?.forget();
      if (effect.warning) (this.pendingNotices ??= []).push(effect.warning);
    } else if (this.statements && sqlstateIs(this.capture, this.captureLength, FEATURE_NOT_SUPPORTED)) {
      // "cached plan must not change result type" after a migration: every backend of the pool prepares
      // afresh, so the tenant's clients see the error once, not once per backend.
      this.statements.expire();
      this.dirty = true;
    }
  }
}

/** True when the ErrorResponse fields in `bytes[0, length)` carry this SQLSTATE (its 'C' field, not any text). */
function sqlstateIs(bytes: Buffer, length: number, code: Buffer): boolean {
  let i = 0;
  while (i < length && bytes[i] !== 0) {
    if (bytes[i] === CODE_FIELD) {
      if (i + 1 + code.length >= length) return false;
      for (let k = 0; k < code.length; k++) if (bytes[i + 1 + k] !== code[k]) return false;
      return bytes[i + 1 + code.length] === 0;
    }
    const nul = bytes.indexOf(0, i + 1);
    if (nul < 0 || nul >= length) return false;
    i = nul + 1;
  }
  return false;
}
