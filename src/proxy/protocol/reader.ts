// Accumulates client bytes during startup and authentication and cuts them into whole packets.
import { protocolViolation } from '../errors.js';
import { MAX_CLIENT_MESSAGE, MAX_STARTUP_PACKET } from './constants.js';

const EMPTY = Buffer.alloc(0);

/**
 * Chunks are kept as a list rather than concatenated on each push, so a client
 * trickling bytes costs linear, not quadratic, copying. Bytes are copied only
 * when a packet straddles chunks. This is the slow path: after login the proxy
 * relays with HeaderScanner instead.
 */
export class MessageReader {
  private chunks: Buffer[] = [];
  /** Offset of the first unconsumed byte in chunks[0]. */
  private head = 0;
  private size = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  get buffered(): number {
    return this.size;
  }

  /** One untyped packet (StartupMessage, SSLRequest, ...), its 4-byte length included. */
  readStartupPacket(): Buffer | null {
    if (this.size < 4) return null;
    // Checked before the body arrives so a bogus length cannot make us wait or buffer.
    const length = this.int32At(0);
    if (length < 8 || length > MAX_STARTUP_PACKET) {
      throw protocolViolation('invalid length of startup packet');
    }
    if (this.size < length) return null;
    return this.take(length);
  }

  /** One typed message: `frame` is all of it, as sent (so it can be forwarded as is); `body` follows the length field. */
  readMessage(): { type: number; body: Buffer; frame: Buffer } | null {
    if (this.size < 5) return null;
    const length = this.int32At(1);
    if (length < 4 || length > MAX_CLIENT_MESSAGE) {
      throw protocolViolation('invalid message length');
    }
    if (this.size < 1 + length) return null;
    const message = this.take(1 + length);
    return { type: message[0]!, body: message.subarray(5), frame: message };
  }

  /** The next byte (a message's type); only when something is buffered. */
  firstByte(): number {
    return this.byteAt(0);
  }

  /** Hands over every unconsumed byte and empties the reader. */
  takeRemaining(): Buffer {
    if (this.size === 0) return EMPTY;
    const first = this.chunks[0]!;
    const rest =
      this.chunks.length === 1
        ? first.subarray(this.head)
        : Buffer.concat([first.subarray(this.head), ...this.chunks.slice(1)], this.size);
    this.chunks = [];
    this.head = 0;
    this.size = 0;
    return rest;
  }

  private byteAt(index: number): number {
    let i = index + this.head;
    for (const chunk of this.chunks) {
      if (i < chunk.length) return chunk[i]!;
      i -= chunk.length;
    }
    throw new RangeError('MessageReader: read past buffered bytes');
  }

  /** Signed, so a length of 2^31 or more reads as negative and fails the range check. */
  private int32At(index: number): number {
    return (
      (this.byteAt(index) << 24) |
      (this.byteAt(index + 1) << 16) |
      (this.byteAt(index + 2) << 8) |
      this.byteAt(index + 3)
    );
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let written = 0;
    while (written < n) {
      const chunk = this.chunks[0]!;
      const count = Math.min(n - written, chunk.length - this.head);
      chunk.copy(out, written, this.head, this.head + count);
      written += count;
      this.advance(count);
    }
    return out;
  }

  /** Consumes n bytes, all within chunks[0]. */
  private advance(n: number): void {
    this.head += n;
    this.size -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
