// Protocol numbers and message type bytes, named as in the PostgreSQL protocol spec.

/** Protocol 3.0 as sent in a StartupMessage: major 3 in the high 16 bits, minor 0. */
export const PROTOCOL_VERSION_3_0 = 196608;
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

/** Largest startup-phase packet accepted, length field included (same as PostgreSQL). */
export const MAX_STARTUP_PACKET = 10_000;
/**
 * Largest typed message the proxy buffers whole, length field included; only used while authenticating, so an
 * unauthenticated client cannot make it hold more. PostgreSQL takes SASL messages of up to 1024 bytes.
 */
export const MAX_CLIENT_MESSAGE = 1024 + 4;

const code = (letter: string): number => letter.charCodeAt(0);

/** Type bytes of messages a client sends. */
export const Frontend = Object.freeze({
  Query: code('Q'),
  Parse: code('P'),
  Bind: code('B'),
  Execute: code('E'),
  Sync: code('S'),
  Terminate: code('X'),
  /** Also SASLInitialResponse and SASLResponse, told apart by the authentication state. */
  PasswordMessage: code('p'),
  CopyData: code('d'),
  CopyDone: code('c'),
  CopyFail: code('f'),
  Flush: code('H'),
  Describe: code('D'),
  Close: code('C'),
  FunctionCall: code('F'),
});

/** Type bytes of messages the server side sends (only those the proxy writes or watches). */
export const Backend = Object.freeze({
  ReadyForQuery: code('Z'),
  ErrorResponse: code('E'),
  NoticeResponse: code('N'),
  Authentication: code('R'),
  ParameterStatus: code('S'),
  BackendKeyData: code('K'),
  NegotiateProtocolVersion: code('v'),
});

/** Authentication request codes carried in the first body word of an 'R' message. */
export const AuthenticationCode = Object.freeze({
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
});
