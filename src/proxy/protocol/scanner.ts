// Hot-path framer for relaying after login: follows message headers across chunks without copying.
import { Backend, Frontend } from './constants.js';

const HEADER = 5;
const READY_FOR_QUERY = Backend.ReadyForQuery;
const TERMINATE = Frontend.Terminate;

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

  /** 0 at a message boundary, else how many header bytes (1..4) are already seen. */
  private headerSeen = 0;
  private pendingType = 0;
  private pendingLength = 0;
  /** Body bytes still to skip before the next header. */
  private remaining = 0;
  /** The next body byte is a ReadyForQuery status. */
  private wantStatus = false;

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
        }
        const step = Math.min(this.remaining, n - i);
        this.remaining -= step;
        i += step;
      } else if (this.headerSeen === 0 && n - i >= HEADER) {
        if (!this.header(chunk[i]!, chunk.readInt32BE(i + 1))) return -1;
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
          if (!this.header(this.pendingType, this.pendingLength)) return -1;
        }
      }
    }
    return 0;
  }

  private header(type: number, length: number): boolean {
    if (length < 4) return false;
    this.lastType = type;
    this.messages++;
    this.remaining = length - 4;
    if (type === READY_FOR_QUERY) this.wantStatus = this.remaining > 0;
    else if (type === TERMINATE) this.sawTerminate = true;
    return true;
  }
}
