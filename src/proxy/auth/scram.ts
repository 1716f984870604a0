// Proxy-side password checks from a role's stored secret: SCRAM-SHA-256 as server and pass-through client, and MD5.
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { PgError, connectionFailure, featureNotSupported } from '../errors.js';

/** A parsed `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` secret (pg_authid.rolpassword). */
export interface ScramSecret {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/**
 * What a successful client exchange yields and what logging into the backend needs: the secret plus the
 * ClientKey recovered from the client's proof. Salt and iterations are kept so a changed password is noticed.
 */
export interface ScramKeys extends ScramSecret {
  clientKey: Buffer;
}

const KEY_LENGTH = 32; // SHA-256
const NONCE_BYTES = 18; // what PostgreSQL uses
const MAX_ITERATIONS = 0x7fffffff; // PostgreSQL's scram_iterations limit (INT_MAX)

const hmac = (key: Buffer, data: Buffer): Buffer => createHmac('sha256', key).update(data).digest();
const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest();

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

// Buffer.from(s, 'base64') skips junk silently; a proof or key must be exactly what the RFC allows.
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const decodeBase64 = (s: string): Buffer | null => (BASE64.test(s) ? Buffer.from(s, 'base64') : null);

/** RFC 5802 `printable`: %x21-2B / %x2D-7E, i.e. visible ASCII without a comma. */
const NONCE = /^[\x21-\x2b\x2d-\x7e]+$/;
const EXTENSION = /^[A-Za-z]=/;

/** Parses a role's SCRAM-SHA-256 secret; null when it is not one (an MD5 or plain secret) or is malformed. */
export function parseScramSecret(rolpassword: string): ScramSecret | null {
  const m = /^SCRAM-SHA-256\$([1-9][0-9]{0,9}):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(rolpassword);
  if (!m) return null;
  const iterations = Number(m[1]);
  const salt = decodeBase64(m[2]!);
  const storedKey = decodeBase64(m[3]!);
  const serverKey = decodeBase64(m[4]!);
  if (iterations > MAX_ITERATIONS || !salt || salt.length === 0) return null;
  if (storedKey?.length !== KEY_LENGTH || serverKey?.length !== KEY_LENGTH) return null;
  return { iterations, salt, storedKey, serverKey };
}

/** PostgreSQL's wording, so a client sees the same error whether the proxy or the server checks it. */
const malformed = (detail: string) => new PgError('08P01', 'malformed SCRAM message', 'FATAL', detail);

/**
 * SCRAM messages are handled as latin1 text: one char per byte, so the AuthMessage is rebuilt from
 * exactly the bytes the peer sent, whatever their encoding (the username need not be valid UTF-8).
 */
function messageText(message: Buffer, name: string, fail: (detail: string) => PgError): string {
  if (message.length === 0) throw fail(`The ${name} is empty.`);
  if (message.includes(0)) throw fail(`The ${name} contains a NUL byte.`);
  return message.toString('latin1');
}

/** The value of `<name>=value`, or the error for a missing or different attribute. */
function attribute(part: string | undefined, name: string, where: string, fail: (detail: string) => PgError): string {
  if (part === undefined || part[0] !== name) throw fail(`Expected attribute "${name}" in ${where}.`);
  if (part[1] !== '=') throw fail(`Expected character "=" for attribute "${name}" in ${where}.`);
  return part.slice(2);
}

/** What the server offered and the client chose, for channel binding. */
export interface ChannelBinding {
  /** SCRAM-SHA-256-PLUS was offered (the client's connection is TLS and the certificate allows it). */
  readonly offered: boolean;
  /** The client chose SCRAM-SHA-256-PLUS. */
  readonly selected: boolean;
  /** The tls-server-end-point data of the proxy's certificate, when offered. */
  readonly endPoint: Buffer | null;
}

const NO_BINDING: ChannelBinding = { offered: false, selected: false, endPoint: null };

/** Server side of one SCRAM-SHA-256(-PLUS) exchange with one client, checked against the role's secret. */
export class ScramServerExchange {
  private readonly serverNonce: string;
  private state: 'initial' | 'first-sent' | 'done' = 'initial';
  private gs2Header = '';
  private clientFirstBare = '';
  private serverFirstMessage = '';
  private combinedNonce = '';

  /** `serverNonce` (printable, no commas) is for tests; by default 18 random bytes, base64. */
  constructor(
    private readonly secret: ScramSecret,
    serverNonce: string = randomBytes(NONCE_BYTES).toString('base64'),
    private readonly binding: ChannelBinding = NO_BINDING,
  ) {
    if (!NONCE.test(serverNonce)) throw new TypeError('a SCRAM nonce must be printable ASCII without commas');
    this.serverNonce = serverNonce;
  }

  /**
   * client-first-message (the SASLInitialResponse data) -> server-first-message.
   * Throws PgError 08P01 when malformed or when its channel-binding flag does not fit what was offered and chosen,
   * 0A000 for an authorization identity or a mandatory extension, as PostgreSQL does.
   * The username in n= is ignored, as PostgreSQL ignores it: the startup packet's user is the one that counts.
   */
  serverFirst(clientFirst: Buffer): Buffer {
    if (this.state !== 'initial') throw new Error('serverFirst() may be called once per exchange');
    const text = messageText(clientFirst, 'client-first-message', malformed);
    const parts = text.split(',');
    const flag = parts[0]!;
    this.checkBindingFlag(flag);
    const authzid = parts[1];
    if (authzid === undefined) throw malformed('Comma expected after the channel-binding flag in client-first-message.');
    if (authzid.startsWith('a=') && authzid.length > 2) {
      throw featureNotSupported('client uses authorization identity, but it is not supported');
    }
    if (authzid !== '') throw malformed('Unexpected attribute in place of the authorization identity in client-first-message.');
    if (parts[2]?.startsWith('m=')) throw featureNotSupported('client requires an unsupported SCRAM extension');
    attribute(parts[2], 'n', 'client-first-message', malformed);
    const clientNonce = attribute(parts[3], 'r', 'client-first-message', malformed);
    if (!NONCE.test(clientNonce)) throw malformed('The client nonce is empty or contains invalid characters.');
    for (const extension of parts.slice(4)) {
      if (!EXTENSION.test(extension)) throw malformed('Malformed extension in client-first-message.');
    }

    this.gs2Header = `${flag},${authzid},`;
    this.clientFirstBare = parts.slice(2).join(',');
    this.combinedNonce = clientNonce + this.serverNonce;
    this.serverFirstMessage = `r=${this.combinedNonce},s=${this.secret.salt.toString('base64')},i=${this.secret.iterations}`;
    this.state = 'first-sent';
    return Buffer.from(this.serverFirstMessage, 'latin1');
  }

  /** The GS2 channel-binding flag against what was offered and chosen, with PostgreSQL's errors. */
  private checkBindingFlag(flag: string): void {
    const { offered, selected } = this.binding;
    if (selected) {
      if (flag === 'p=tls-server-end-point') return;
      if (flag.startsWith('p=')) throw malformed('unsupported SCRAM channel-binding type');
      throw malformed('The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.');
    }
    if (flag.startsWith('p')) {
      throw malformed('The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.');
    }
    // 'y' is "I could bind, but the server offered no -PLUS": a lie when it was offered, i.e. a downgrade.
    if (flag === 'y' && offered) {
      throw new PgError(
        '08P01',
        'SCRAM channel binding negotiation error',
        'FATAL',
        'The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.',
      );
    }
    if (flag !== 'n' && flag !== 'y') throw malformed('Unexpected channel-binding flag in client-first-message.');
  }

  /**
   * client-final-message -> the server-final-message and the recovered keys when the proof is right;
   * null when it is wrong (the caller answers 28P01). Throws PgError 08P01 when malformed, including
   * channel-binding data other than the client's own GS2 header and a nonce other than the combined one.
   */
  clientFinal(clientFinal: Buffer): { serverFinal: Buffer; keys: ScramKeys } | null {
    if (this.state !== 'first-sent') throw new Error('clientFinal() must follow serverFirst(), once');
    this.state = 'done';
    const text = messageText(clientFinal, 'client-final-message', malformed);
    const parts = text.split(',');
    const binding = decodeBase64(attribute(parts[0], 'c', 'client-final-message', malformed));
    if (!binding) throw malformed('Malformed channel-binding data in client-final-message.');
    const expected = Buffer.from(this.gs2Header, 'latin1');
    if (!binding.equals(this.binding.selected ? Buffer.concat([expected, this.binding.endPoint!]) : expected)) {
      throw new PgError('08P01', 'SCRAM channel binding check failed');
    }
    const nonce = attribute(parts[1], 'r', 'client-final-message', malformed);
    if (nonce !== this.combinedNonce) throw new PgError('08P01', 'invalid SCRAM response', 'FATAL', 'Nonce does not match.');
    if (parts.length < 3) throw malformed('Expected attribute "p" in client-final-message.');
    for (const extension of parts.slice(2, -1)) {
      if (!EXTENSION.test(extension) || extension[0] === 'p') throw malformed('Garbage found at the end of client-final-message.');
    }
    const proof = decodeBase64(attribute(parts.at(-1), 'p', 'client-final-message', malformed));
    if (proof?.length !== KEY_LENGTH) throw malformed('Malformed proof in client-final-message.');

    const authMessage = Buffer.from(`${this.clientFirstBare},${this.serverFirstMessage},${parts.slice(0, -1).join(',')}`, 'latin1');
    const { storedKey, serverKey, salt, iterations } = this.secret;
    const clientKey = xor(proof, hmac(storedKey, authMessage));
    if (!timingSafeEqual(sha256(clientKey), storedKey)) return null;
    const serverFinal = Buffer.from(`v=${hmac(serverKey, authMessage).toString('base64')}`, 'latin1');
    return { serverFinal, keys: { clientKey, storedKey, serverKey, salt, iterations } };
  }
}

/** Errors about the backend's side of the exchange: not the client's fault, so not 08P01. */
const backendMalformed = (detail: string) => new PgError('08006', 'malformed SCRAM message from the upstream server', 'FATAL', detail);

/**
 * Client side of SCRAM-SHA-256 towards the backend, proving the role with the recovered ClientKey alone:
 * the proof only needs ClientKey and StoredKey, never the password or SaltedPassword.
 */
export class ScramClientExchange {
  private readonly nonce: string;
  private expectedServerSignature: Buffer | null = null;

  /** `nonce` (printable, no commas) is for tests; by default 18 random bytes, base64. */
  constructor(
    private readonly keys: ScramKeys,
    nonce: string = randomBytes(NONCE_BYTES).toString('base64'),
  ) {
    if (!NONCE.test(nonce)) throw new TypeError('a SCRAM nonce must be printable ASCII without commas');
    this.nonce = nonce;
  }

  private get clientFirstBare(): string {
    // An empty n= as libpq sends: the server takes the user from the startup packet.
    return `n=,r=${this.nonce}`;
  }

  /** The client-first-message, for SASLInitialResponse (mechanism SCRAM-SHA-256). */
  clientFirst(): Buffer {
    return Buffer.from(`n,,${this.clientFirstBare}`, 'latin1');
  }

  /**
   * server-first-message -> client-final-message. Throws PgError 08006 when the message is malformed,
   * its nonce does not extend ours, or its salt or iteration count are not the keys' (the role's
   * password changed since the client authenticated, so the recovered ClientKey is useless).
   */
  clientFinal(serverFirst: Buffer): Buffer {
    const text = messageText(serverFirst, 'server-first-message', backendMalformed);
    const parts = text.split(',');
    if (parts[0]?.startsWith('m=')) throw backendMalformed('The server requires an unsupported SCRAM extension.');
    const nonce = attribute(parts[0], 'r', 'server-first-message', backendMalformed);
    const salt = decodeBase64(attribute(parts[1], 's', 'server-first-message', backendMalformed));
    const iterationsText = attribute(parts[2], 'i', 'server-first-message', backendMalformed);
    for (const extension of parts.slice(3)) {
      if (!EXTENSION.test(extension)) throw backendMalformed('Malformed extension in server-first-message.');
    }
    if (!NONCE.test(nonce) || !nonce.startsWith(this.nonce) || nonce.length === this.nonce.length) {
      throw connectionFailure('the upstream server sent a SCRAM nonce that does not extend ours');
    }
    if (!salt || salt.length === 0) throw backendMalformed('Malformed salt in server-first-message.');
    if (!/^[1-9][0-9]{0,9}$/.test(iterationsText)) throw backendMalformed('Malformed iteration count in server-first-message.');
    if (!salt.equals(this.keys.salt) || Number(iterationsText) !== this.keys.iterations) {
      throw connectionFailure("the role's SCRAM secret on the upstream server changed (salt or iteration count) since the client authenticated");
    }

    const withoutProof = `c=${Buffer.from('n,,').toString('base64')},r=${nonce}`;
    const authMessage = Buffer.from(`${this.clientFirstBare},${text},${withoutProof}`, 'latin1');
    const proof = xor(this.keys.clientKey, hmac(this.keys.storedKey, authMessage));
    this.expectedServerSignature = hmac(this.keys.serverKey, authMessage);
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'latin1');
  }

  /** Checks the server-final-message; throws PgError 08006 when it carries e= or a wrong v= signature. */
  verifyServerFinal(serverFinal: Buffer): void {
    const expected = this.expectedServerSignature;
    if (!expected) throw new Error('verifyServerFinal() must follow clientFinal()');
    const text = messageText(serverFinal, 'server-final-message', backendMalformed);
    const first = text.split(',')[0]!;
    if (first.startsWith('e=')) throw connectionFailure(`the upstream server refused SCRAM authentication: ${first.slice(2)}`);
    const signature = decodeBase64(attribute(first, 'v', 'server-final-message', backendMalformed));
    // A wrong signature means whoever answered does not hold the role's ServerKey.
    if (signature?.length !== KEY_LENGTH || !timingSafeEqual(signature, expected)) {
      throw connectionFailure('incorrect server signature from the upstream server');
    }
  }
}

/** True for PostgreSQL's MD5 secret format: `md5` + 32 lowercase hex digits (md5 of password || username). */
export function isMd5Secret(rolpassword: string): boolean {
  return /^md5[0-9a-f]{32}$/.test(rolpassword);
}

/** The reply to AuthenticationMD5Password, from the secret alone: 'md5' + md5(secretHex || salt). */
export function md5Response(md5Secret: string, salt: Buffer): string {
  if (!isMd5Secret(md5Secret)) throw new TypeError('not an MD5 secret');
  if (salt.length !== 4) throw new RangeError('an MD5 salt is 4 bytes');
  return 'md5' + createHash('md5').update(Buffer.concat([Buffer.from(md5Secret.slice(3), 'latin1'), salt])).digest('hex');
}

/** Constant-time check of a client's reply to AuthenticationMD5Password against the role's MD5 secret. */
export function verifyMd5Response(md5Secret: string, salt: Buffer, reply: string): boolean {
  const expected = Buffer.from(md5Response(md5Secret, salt), 'utf8');
  const actual = Buffer.from(reply, 'utf8');
  // Only the length can leak, and every right answer has the same one.
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}
