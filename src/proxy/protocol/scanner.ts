// Hot-path framer for relaying after login: follows message headers across chunks without copying.
import { Backend, Frontend } from './constants.js';

const HEADER = 5;
const READY_FOR_QUERY = Backend.ReadyForQuery;
const TERMINATE = Frontend.Terminate;
const QUERY = Frontend.Query;
const EXECUTE = Frontend.Execute;
const SYNC = Frontend.Sync;
const FUNCTION_CALL = Frontend.FunctionCall;
const FLUSH = Frontend.Flush;
const COPY_DATA = Frontend.CopyData;
const COPY_DONE = Frontend.CopyDone;
const COPY_FAIL = Frontend.CopyFail;
const IDLE = 0x49; // 'I'

/** Which end of the connection writes the stream: some type letters mean different messages on each side. */
export type StreamSide = 'frontend' | 'backend';

/**
 * Walks the type+length headers of a byte stream chunk by chunk, keeping only a
 * few numbers of state, so the relay can forward chunks untouched. It watches
 * both directions' interesting messages at once: ReadyForQuery only comes from
 * the server and Terminate only from the client, so their letters never clash.
 */
export class HeaderScanner {
  /** Type byte of the last message whose header completed; 0 before any. */
  lastType = 0;
  /** Headers seen so far, cumulative. */
  messages = 0;
  /** Status byte ('I', 'T' or 'E') of the last ReadyForQuery seen; 0 before any. */
  readyForQueryStatus = 0;
  sawTerminate = false;
  /**
   * Frontend: where the Terminate header starts in the chunk just scanned, so a pooled backend never gets it;
   * -1 when it started in an earlier chunk (its type byte is already forwarded), -2 before any Terminate.
   */
  terminateAt = -2;
  /** Frontend: messages since the last sync point that still need one (Parse, Bind, ... without Sync yet). */
  unsynced = 0;

  // Counters read by the metrics at scrape time: a few integer additions per message, nothing allocated.
  /** Frontend: Query and Execute messages, the client's statements. */
  queries = 0;
  /** Frontend: Query, Sync and FunctionCall messages, each answered by exactly one ReadyForQuery. */
  syncs = 0;
  /** Backend: ReadyForQuery messages. */
  readies = 0;
  /** Backend: ReadyForQuery(idle) after other messages, i.e. the end of a transaction, implicit or explicit. */
  transactions = 0;

  /** 0 at a message boundary, else how many header bytes (1..4) are already seen. */
  private headerSeen = 0;
  private pendingType = 0;
  private pendingLength = 0;
  /** Body bytes still to skip before the next header. */
  private remaining = 0;
  /** The next body byte is a ReadyForQuery status. */
  private wantStatus = false;
  /** Backend: messages since the last ReadyForQuery; a ReadyForQuery right after another closed no work. */
  private sinceReady = 0;
  private workBeforeReady = false;
  private readonly frontend: boolean;

  /** `side` only matters for the counters; framing is the same both ways. */
  constructor(side: StreamSide = 'backend') {
    this.frontend = side === 'frontend';
  }

  /** True between messages: no header or body is half seen, so a whole message may be injected. */
  get atBoundary(): boolean {
    return this.headerSeen === 0 && this.remaining === 0;
  }

  /** Returns 0, or -1 when a length field is below 4 (the caller should close). */
  scan(chunk: Buffer): number {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.remaining > 0) {
        if (this.wantStatus) {
          this.readyForQueryStatus = chunk[i]!;
          this.wantStatus = false;
          if (this.readyForQueryStatus === IDLE && this.workBeforeReady) this.transactions++;
        }
        const step = Math.min(this.remaining, n - i);
        this.remaining -= step;
        i += step;
      } else if (this.headerSeen === 0 && n - i >= HEADER) {
        if (!this.header(chunk[i]!, chunk.readInt32BE(i + 1), i)) return -1;
        i += HEADER;
      } else if (this.headerSeen === 0) {
        this.pendingType = chunk[i++]!;
        this.pendingLength = 0;
        this.headerSeen = 1;
      } else {
        // Shifting four bytes into a JS int yields the signed int32, so 2^31 and up read as negative.
        this.pendingLength = (this.pendingLength << 8) | chunk[i++]!;
        if (++this.headerSeen === HEADER) {
          this.headerSeen = 0;
          if (!this.header(this.pendingType, this.pendingLength, -1)) return -1;
        }
      }
    }
    return 0;
  }

  /** `start` is the header's offset in the current chunk, or -1 when it began in an earlier one. */
  private header(type: number, length: number, start: number): boolean {
    if (length < 4) return false;
    this.lastType = type;
    this.messages++;
    this.remaining = length - 4;
    if (this.frontend) {
      if (type === QUERY) {
        this.queries++;
        this.syncs++;
        this.unsynced = 0;
      } else if (type === SYNC || type === FUNCTION_CALL) {
        this.syncs++;
        this.unsynced = 0;
      } else if (type === TERMINATE) {
        this.sawTerminate = true;
        this.terminateAt = start;
      } else if (type !== FLUSH && type !== COPY_DATA && type !== COPY_DONE && type !== COPY_FAIL) {
        // Copy messages belong to the Query that started the copy, which was already a sync point.
        if (type === EXECUTE) this.queries++;
        this.unsynced++;
      }
    } else if (type === READY_FOR_QUERY) {
      this.wantStatus = this.remaining > 0;
      this.readies++;
      this.workBeforeReady = this.sinceReady > 0;
      this.sinceReady = 0;
    } else this.sinceReady++;
    return true;
  }
}
