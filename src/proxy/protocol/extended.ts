// The statement names in Parse, Bind, Describe and Close frames: read and rewritten in place of a copy (pure, no I/O).
import { protocolViolation } from '../errors.js';
import { Frontend } from './constants.js';

const HEADER = 5;

/** Where a NUL-terminated string starting at `from` ends (the NUL's index). */
function cstringEnd(frame: Buffer, from: number, what: string): number {
  const nul = frame.indexOf(0, from);
  if (nul < 0) throw protocolViolation(`invalid ${what} message: unterminated string`);
  return nul;
}

/** A statement name inside a frame: its bytes (latin1, so any bytes round-trip) and where they sit. */
export interface NameAt {
  readonly name: string;
  readonly start: number;
  readonly end: number;
}

/** Parse: the statement name comes first; the query text and parameter types follow it. */
export function parseName(frame: Buffer): NameAt {
  const end = cstringEnd(frame, HEADER, 'Parse');
  return { name: frame.toString('latin1', HEADER, end), start: HEADER, end };
}

/** Bind: the portal name, then the statement name. */
export function bindStatementName(frame: Buffer): NameAt {
  const start = cstringEnd(frame, HEADER, 'Bind') + 1;
  const end = cstringEnd(frame, start, 'Bind');
  return { name: frame.toString('latin1', start, end), start, end };
}

/** Describe and Close: 'S' for a statement or 'P' for a portal, then the name. */
export function describedName(frame: Buffer): NameAt & { readonly kind: number } {
  if (frame.length < HEADER + 2) throw protocolViolation('invalid Describe or Close message: too short');
  const kind = frame[HEADER]!;
  const start = HEADER + 1;
  const end = cstringEnd(frame, start, 'Describe or Close');
  return { kind, name: frame.toString('latin1', start, end), start, end };
}

/**
 * The frame with the name at `at` replaced and its length field fixed. `frame` may be only the start of a
 * message (its names): the length field then still counts the rest, which follows unchanged.
 */
export function renamed(frame: Buffer, at: NameAt, name: string): Buffer {
  const nameLength = Buffer.byteLength(name, 'latin1');
  const growth = nameLength - (at.end - at.start);
  const out = Buffer.allocUnsafe(frame.length + growth);
  frame.copy(out, 0, 0, at.start);
  out.write(name, at.start, 'latin1');
  frame.copy(out, at.start + nameLength, at.end);
  out.writeInt32BE(frame.readInt32BE(1) + growth, 1);
  return out;
}

/** Close of a prepared statement, as a client would send it. */
export function closeStatementFrame(name: string): Buffer {
  const nameLength = Buffer.byteLength(name, 'latin1');
  const out = Buffer.allocUnsafe(HEADER + 1 + nameLength + 1);
  out[0] = Frontend.Close;
  out.writeInt32BE(out.length - 1, 1);
  out[HEADER] = 0x53; // 'S'
  out.write(name, HEADER + 1, 'latin1');
  out[out.length - 1] = 0;
  return out;
}
