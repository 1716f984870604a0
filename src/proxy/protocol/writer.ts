// Writes the messages the proxy sends to clients as the server side, into one reusable growing buffer.
import type { PgError } from '../errors.js';
import { AuthenticationCode, Backend } from './constants.js';

export type ErrorFields = {
  severity: string;
  code: string;
  message: string;
  detail?: string;
  hint?: string;
};

const INT32_MIN = -0x8000_0000;
const UINT32_MAX = 0xffff_ffff;

/** A NUL inside a field would end it early and desynchronise the client, so error text drops them. */
const stripNul = (s: string): string => (s.includes('\0') ? s.replaceAll('\0', '') : s);

/**
 * Append messages, then flush() to get them as one Buffer (a copy) and reset.
 * One writer serves a whole connection: the buffer grows once and is reused.
 */
export class BackendWriter {
  private buffer: Buffer;
  private offset = 0;

  constructor(initialSize = 256) {
    this.buffer = Buffer.allocUnsafe(initialSize);
  }

  /** All bytes appended since the last flush, copied, and the writer emptied. */
  flush(): Buffer {
    const out = Buffer.allocUnsafe(this.offset);
    this.buffer.copy(out, 0, 0, this.offset);
    this.offset = 0;
    return out;
  }

  authenticationOk(): this {
    return this.authentication(AuthenticationCode.Ok, () => {});
  }

  authenticationCleartextPassword(): this {
    return this.authentication(AuthenticationCode.CleartextPassword, () => {});
  }

  authenticationMD5Password(salt: Buffer): this {
    if (salt.length !== 4) throw new RangeError('MD5 salt must be 4 bytes');
    return this.authentication(AuthenticationCode.MD5Password, () => this.bytes(salt));
  }

  authenticationSASL(mechanisms: readonly string[]): this {
    return this.authentication(AuthenticationCode.SASL, () => {
      for (const mechanism of mechanisms) this.cstring(mechanism);
      this.byte(0);
    });
  }

  authenticationSASLContinue(data: Buffer): this {
    return this.authentication(AuthenticationCode.SASLContinue, () => this.bytes(data));
  }

  authenticationSASLFinal(data: Buffer): this {
    return this.authentication(AuthenticationCode.SASLFinal, () => this.bytes(data));
  }

  parameterStatus(name: string, value: string): this {
    return this.message(Backend.ParameterStatus, () => this.cstring(name).cstring(value));
  }

  /** secretKey is the 4-byte key of protocol 3.0, given signed or unsigned. */
  backendKeyData(processId: number, secretKey: number): this {
    return this.message(Backend.BackendKeyData, () => this.int32(processId).int32(secretKey));
  }

  readyForQuery(status: 'I' | 'T' | 'E'): this {
    return this.message(Backend.ReadyForQuery, () => this.byte(status.charCodeAt(0)));
  }

  errorResponse(e: ErrorFields): this {
    return this.noticeOrError(Backend.ErrorResponse, e);
  }

  noticeResponse(e: ErrorFields): this {
    return this.noticeOrError(Backend.NoticeResponse, e);
  }

  /**
   * The version field carries the full protocol number (major << 16 | minor), which
   * is what PostgreSQL sends and libpq compares against, though the spec calls it
   * the newest minor version.
   */
  negotiateProtocolVersion(newestMinor: number, unrecognized: readonly string[]): this {
    if (!Number.isInteger(newestMinor) || newestMinor < 0 || newestMinor > 0xffff) {
      throw new RangeError(`invalid minor protocol version ${newestMinor}`);
    }
    return this.message(Backend.NegotiateProtocolVersion, () => {
      this.int32((3 << 16) | newestMinor).int32(unrecognized.length);
      for (const option of unrecognized) this.cstring(option);
    });
  }

  private noticeOrError(type: number, e: ErrorFields): this {
    return this.message(type, () => {
      // V is the never-translated severity; clients since 9.6 prefer it over S.
      this.field('S', e.severity).field('V', e.severity).field('C', e.code).field('M', e.message);
      this.field('D', e.detail).field('H', e.hint);
      this.byte(0);
    });
  }

  /** Undefined values are skipped so a message relayed from an upstream notice cannot throw here. */
  private field(tag: string, value: string | undefined): this {
    if (value === undefined) return this;
    return this.byte(tag.charCodeAt(0)).cstring(stripNul(String(value)));
  }

  private authentication(code: number, rest: () => unknown): this {
    return this.message(Backend.Authentication, () => {
      this.int32(code);
      rest();
    });
  }

  /** Writes header and body; a body that throws leaves no partial message behind. */
  private message(type: number, body: () => unknown): this {
    const start = this.offset;
    try {
      this.ensure(5);
      this.buffer[start] = type;
      this.offset += 5;
      body();
    } catch (err) {
      this.offset = start;
      throw err;
    }
    this.buffer.writeInt32BE(this.offset - start - 1, start + 1);
    return this;
  }

  private byte(value: number): this {
    this.ensure(1);
    this.buffer[this.offset++] = value;
    return this;
  }

  private int32(value: number): this {
    if (!Number.isInteger(value) || value < INT32_MIN || value > UINT32_MAX) {
      throw new RangeError(`${value} does not fit in 32 bits`);
    }
    this.ensure(4);
    this.offset = this.buffer.writeInt32BE(value | 0, this.offset);
    return this;
  }

  private cstring(value: string): this {
    if (value.includes('\0')) throw new TypeError('protocol strings cannot contain NUL');
    const length = Buffer.byteLength(value, 'utf8');
    this.ensure(length + 1);
    this.offset += this.buffer.write(value, this.offset, 'utf8');
    this.buffer[this.offset++] = 0;
    return this;
  }

  private bytes(value: Buffer): this {
    this.ensure(value.length);
    this.offset += value.copy(this.buffer, this.offset);
    return this;
  }

  private ensure(n: number): void {
    if (this.offset + n <= this.buffer.length) return;
    let size = Math.max(this.buffer.length * 2, 64);
    while (size < this.offset + n) size *= 2;
    const grown = Buffer.allocUnsafe(size);
    this.buffer.copy(grown, 0, 0, this.offset);
    this.buffer = grown;
  }
}

const shared = new BackendWriter();

/** The one way a PgError becomes bytes for a client. */
export function errorResponseFor(err: PgError): Buffer {
  shared.errorResponse({
    severity: err.severity,
    code: err.code,
    message: err.message,
    detail: err.detail,
    hint: err.hint,
  });
  return shared.flush();
}
