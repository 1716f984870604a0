// Lexes migration SQL like psql does: splits statements and flags those a transactional migration must not contain.

export interface SqlStatement {
  text: string;
  /** 1-based line where the statement starts */
  line: number;
}

export interface StatementProblem {
  line: number;
  /** first ~60 chars, one line */
  statement: string;
  reason: string;
}

type TokenKind = 'word' | 'quoted' | 'string' | 'number' | 'param' | 'punct';

interface Token {
  kind: TokenKind;
  start: number;
  end: number;
  /** What detection patterns see: keywords upper-cased, literals and quoted names as bare placeholders. */
  shape: string;
}

interface Piece {
  tokens: Token[];
  line: number;
}

interface Scan {
  pieces: Piece[];
  lineComments: { start: number; text: string }[];
}

// PostgreSQL identifiers may contain `$` after the first character, so `a$b$` is a name, not a dollar quote.
const WORD = /[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*/y;
const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y;
const PARAM = /\$[0-9]+/y;
const NUMBER = /[0-9][A-Za-z0-9_.]*/y;
const WHITESPACE = new Set([' ', '\t', '\n', '\r', '\f', '\v']);
const PLACEHOLDER: Partial<Record<TokenKind, string>> = { quoted: '"', string: "'", param: '$' };

function matchAt(re: RegExp, sql: string, at: number): string | undefined {
  re.lastIndex = at;
  return re.exec(sql)?.[0];
}

/** Index just past the closing quote; a doubled quote escapes it, and so does a backslash in E'' strings. */
function endOfQuoted(sql: string, open: number, backslash: boolean): number {
  const q = sql[open];
  for (let i = open + 1; i < sql.length; i++) {
    if (backslash && sql[i] === '\\') i++;
    else if (sql[i] === q) {
      if (sql[i + 1] !== q) return i + 1;
      i++;
    }
  }
  return sql.length;
}

/** Block comments nest in PostgreSQL, unlike in the SQL standard and most other lexers. */
function endOfBlockComment(sql: string, open: number): number {
  let depth = 0;
  for (let i = open; i < sql.length; ) {
    if (sql.startsWith('/*', i)) {
      depth++;
      i += 2;
    } else if (sql.startsWith('*/', i)) {
      i += 2;
      if (--depth === 0) return i;
    } else i++;
  }
  return sql.length;
}

/** One token starting at `i` (not whitespace, not a comment): its kind and end. Unterminated quotes run to the end. */
function lexToken(sql: string, i: number): [TokenKind, number] {
  const c = sql[i];
  if (c === "'") return ['string', endOfQuoted(sql, i, false)];
  if (c === '"') return ['quoted', endOfQuoted(sql, i, false)];
  if (c === '$') {
    const param = matchAt(PARAM, sql, i);
    if (param) return ['param', i + param.length];
    const tag = matchAt(DOLLAR_TAG, sql, i);
    if (!tag) return ['punct', i + 1];
    const close = sql.indexOf(tag, i + tag.length);
    return ['string', close < 0 ? sql.length : close + tag.length];
  }
  const word = matchAt(WORD, sql, i);
  if (word) {
    const end = i + word.length;
    const prefix = word.toUpperCase();
    if (prefix === 'E' && sql[end] === "'") return ['string', endOfQuoted(sql, end, true)];
    if (prefix === 'U' && sql[end] === '&' && (sql[end + 1] === "'" || sql[end + 1] === '"')) {
      return [sql[end + 1] === "'" ? 'string' : 'quoted', endOfQuoted(sql, end + 1, false)];
    }
    return ['word', end];
  }
  const num = matchAt(NUMBER, sql, i);
  return num ? ['number', i + num.length] : ['punct', i + 1];
}

/** Offsets must be asked for in increasing order, which a single forward scan does. */
function lineCounter(sql: string): (offset: number) => number {
  let pos = 0;
  let line = 1;
  return (offset) => {
    for (; pos < offset; pos++) if (sql.charCodeAt(pos) === 10) line++;
    return line;
  };
}

const ROUTINE = /^CREATE (OR REPLACE )?(FUNCTION|PROCEDURE)\b/;

/**
 * psql's rule for SQL-standard bodies (BEGIN ATOMIC ... END): in CREATE FUNCTION/PROCEDURE, BEGIN opens a block,
 * CASE nests only inside one, END closes; all counted outside parentheses, where a semicolon cannot end anyway.
 */
function blockDelta(tokens: readonly Token[], word: string, depth: number): number {
  if (word !== 'BEGIN' && word !== 'CASE' && word !== 'END') return 0;
  if (!ROUTINE.test(tokens.slice(0, 4).map((t) => t.shape).join(' '))) return 0;
  if (word === 'BEGIN') return 1;
  if (word === 'CASE') return depth > 0 ? 1 : 0;
  return depth > 0 ? -1 : 0;
}

function scan(sql: string): Scan {
  const pieces: Piece[] = [];
  const lineComments: Scan['lineComments'] = [];
  const lineOf = lineCounter(sql);
  let tokens: Token[] = [];
  let parens = 0;
  let blocks = 0;
  const finish = (): void => {
    if (tokens[0]) pieces.push({ tokens, line: lineOf(tokens[0].start) });
    tokens = [];
    parens = blocks = 0;
  };
  for (let i = 0; i < sql.length; ) {
    const c = sql[i]!;
    if (WHITESPACE.has(c)) i++;
    else if (sql.startsWith('--', i)) {
      const nl = sql.indexOf('\n', i);
      const end = nl < 0 ? sql.length : nl;
      lineComments.push({ start: i, text: sql.slice(i, end) });
      i = end;
    } else if (sql.startsWith('/*', i)) i = endOfBlockComment(sql, i);
    else if (c === ';' && parens === 0 && blocks === 0) {
      finish();
      i++;
    } else {
      const [kind, end] = lexToken(sql, i);
      const text = sql.slice(i, end);
      const shape = kind === 'word' ? text.toUpperCase() : (PLACEHOLDER[kind] ?? text);
      tokens.push({ kind, start: i, end, shape });
      if (c === '(') parens++;
      else if (c === ')' && parens > 0) parens--;
      else if (kind === 'word' && parens === 0) blocks += blockDelta(tokens, shape, blocks);
      i = end;
    }
  }
  finish();
  return { pieces, lineComments };
}

function textOf(sql: string, piece: Piece): string {
  return sql.slice(piece.tokens[0]!.start, piece.tokens[piece.tokens.length - 1]!.end);
}

export function splitStatements(sql: string): SqlStatement[] {
  return scan(sql).pieces.map((p) => ({ text: textOf(sql, p), line: p.line }));
}

/** A pattern over a statement's shape (tokens joined by single spaces); `$1` in `name` is capture group 1. */
interface Rule {
  pattern: RegExp;
  name?: string;
}

const NON_TRANSACTIONAL: readonly Rule[] = [
  { pattern: /^(CREATE (UNIQUE )?INDEX CONCURRENTLY)\b/ },
  { pattern: /^(DROP INDEX CONCURRENTLY)\b/ },
  // CONCURRENTLY is a reserved word for names, so anywhere in REINDEX it is the option, unless set false.
  { pattern: /^REINDEX\b.*\bCONCURRENTLY\b(?! (FALSE|OFF|0)\b)/, name: 'REINDEX CONCURRENTLY' },
  { pattern: /^REINDEX (?:\( [^)]*\) )?(SCHEMA|DATABASE|SYSTEM)\b/, name: 'REINDEX $1' },
  { pattern: /^ALTER TABLE\b.*\bDETACH PARTITION\b.*\bCONCURRENTLY\b/, name: 'ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY' },
  { pattern: /^(VACUUM)\b/ },
  { pattern: /^((CREATE|DROP) (DATABASE|TABLESPACE|SUBSCRIPTION))\b/ },
  { pattern: /^ALTER DATABASE \S+ SET TABLESPACE\b/, name: 'ALTER DATABASE ... SET TABLESPACE' },
  { pattern: /^(ALTER SYSTEM)\b/ },
  { pattern: /^(DISCARD ALL)\b/ },
];

// PREPARE TRANSACTION takes a string; `PREPARE transaction AS ...` is a prepared statement named "transaction".
const TRANSACTION_CONTROL: readonly Rule[] = [
  {
    pattern:
      /^(BEGIN|START TRANSACTION|COMMIT PREPARED|COMMIT|END|ROLLBACK PREPARED|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE TRANSACTION(?= '))\b/,
  },
];

function preview(text: string): string {
  const flat = text.replace(/\s+/g, ' ');
  return flat.length > 60 ? `${flat.slice(0, 59)}…` : flat;
}

function findProblems(sql: string, rules: readonly Rule[], reason: (name: string) => string): StatementProblem[] {
  const problems: StatementProblem[] = [];
  for (const piece of scan(sql).pieces) {
    const shape = piece.tokens.map((t) => t.shape).join(' ');
    for (const rule of rules) {
      const m = rule.pattern.exec(shape);
      if (!m) continue;
      problems.push({ line: piece.line, statement: preview(textOf(sql, piece)), reason: reason((rule.name ?? '$1').replace('$1', m[1] ?? m[0])) });
      break;
    }
  }
  return problems;
}

/** Statements PostgreSQL refuses inside a transaction block (CREATE INDEX CONCURRENTLY, ...). */
export function nonTransactionalStatements(sql: string): StatementProblem[] {
  return findProblems(sql, NON_TRANSACTIONAL, (name) => `${name} cannot run inside a transaction`);
}

/** BEGIN/START TRANSACTION/COMMIT/END/ROLLBACK/ABORT/SAVEPOINT/RELEASE/PREPARE TRANSACTION/COMMIT PREPARED...: the migrator owns the transaction. */
export function transactionControlStatements(sql: string): StatementProblem[] {
  return findProblems(sql, TRANSACTION_CONTROL, (name) => `${name} is transaction control, which the migrator owns`);
}

const MARKER = /^--\s*pgtenant\s*:\s*no-transaction(?![\w-])/i;

/** True when the file's leading comment lines (before any statement) contain the marker `-- pgtenant:no-transaction`. */
export function isNoTransactionFile(sql: string): boolean {
  const { pieces, lineComments } = scan(sql);
  const firstStatement = pieces[0]?.tokens[0]?.start ?? Infinity;
  return lineComments.some((c) => c.start < firstStatement && MARKER.test(c.text));
}
