// CommandComplete tags that change a backend's session state, and what transaction mode does about each.

export interface TagEffect {
  /** The backend gets DISCARD ALL before another client. */
  readonly dirty: true;
  /** The server dropped prepared statements: the proxy forgets which ones the backend has. */
  readonly forgetsStatements: boolean;
  /** What the client is told when the state it made cannot follow it to its next transaction. */
  readonly warning: string | null;
}

const reset = (warning: string | null = null, forgetsStatements = false): TagEffect => ({ dirty: true, forgetsStatements, warning });

const EFFECTS: ReadonlyMap<string, TagEffect> = new Map([
  ['SET', reset()],
  ['RESET', reset()],
  ['LOAD', reset()],
  ['DISCARD PLANS', reset()],
  ['DISCARD TEMP', reset()],
  ['DISCARD SEQUENCES', reset()],
  ['DISCARD ALL', reset(null, true)],
  ['DEALLOCATE', reset(null, true)],
  ['DEALLOCATE ALL', reset(null, true)],
  // Could be TEMP: a temporary table would shadow the next client's table of that name.
  ['CREATE TABLE', reset()],
  ['CREATE VIEW', reset()],
  ['CREATE SEQUENCE', reset()],
  ['LISTEN', reset('LISTEN does not work with pool_mode transaction: notifications stop when this transaction ends')],
  ['PREPARE', reset('SQL PREPARE does not survive pool_mode transaction: use protocol-level prepared statements (Parse/Bind)')],
  ['DECLARE CURSOR', reset('cursors WITH HOLD do not survive pool_mode transaction')],
]);

/** The first four bytes of every tag above (a 3-letter tag with its NUL), as big-endian integers. */
const PREFIXES: ReadonlySet<number> = new Set([...EFFECTS.keys()].map((tag) => Buffer.from(tag + '\0', 'latin1').readUInt32BE(0)));

/**
 * False when the tag in `bytes[0, length)` (NUL-terminated) surely has no effect, read without making a string:
 * the transaction relay checks every CommandComplete, and nearly all are SELECT, INSERT, UPDATE or COMMIT.
 */
export function mayChangeSession(bytes: Buffer, length: number): boolean {
  return length >= 4 && PREFIXES.has(bytes.readUInt32BE(0));
}

/** The effect of a command tag, or null for the (many) that leave session state alone. */
export function tagEffect(tag: string): TagEffect | null {
  return EFFECTS.get(tag) ?? null;
}
