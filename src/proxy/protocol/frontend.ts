// Parsers for the typed messages a client sends while authenticating (all carried by 'p' messages).
import { isUtf8 } from 'node:buffer';
import { protocolViolation } from '../errors.js';

/** PasswordMessage: one string whose terminator must be the last byte, as PostgreSQL requires. */
export function parsePasswordMessage(body: Buffer): string {
  if (body.length === 0 || body.indexOf(0) !== body.length - 1) {
    throw protocolViolation('invalid password packet size');
  }
  const password = body.subarray(0, body.length - 1);
  if (!isUtf8(password)) throw protocolViolation('invalid byte sequence for encoding "UTF8" in password packet');
  return password.toString('utf8');
}

/** SASLInitialResponse: mechanism name, then an Int32 length (-1 for none) and that many bytes. */
export function parseSASLInitialResponse(body: Buffer): { mechanism: string; response: Buffer | null } {
  const nul = body.indexOf(0);
  if (nul < 0 || body.length < nul + 5) throw protocolViolation('malformed SASLInitialResponse message');
  const mechanism = body.toString('utf8', 0, nul);
  const length = body.readInt32BE(nul + 1);
  const start = nul + 5;
  if (length === -1) {
    if (body.length !== start) throw protocolViolation('malformed SASLInitialResponse message');
    return { mechanism, response: null };
  }
  if (length < 0 || body.length !== start + length) {
    throw protocolViolation('malformed SASLInitialResponse message');
  }
  return { mechanism, response: body.subarray(start) };
}

/** SASLResponse: the whole body is mechanism data. */
export function parseSASLResponse(body: Buffer): Buffer {
  return body;
}
