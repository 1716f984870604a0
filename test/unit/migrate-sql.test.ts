// The migration SQL lexer: quoting forms, psql-style statement splitting, and the statements a transaction must not hold.
import { describe, expect, it } from 'vitest';
import { isNoTransactionFile, nonTransactionalStatements, splitStatements, transactionControlStatements } from '../../src/migrate/sql.js';

const texts = (sql: string): string[] => splitStatements(sql).map((s) => s.text);
const reasons = (problems: { reason: string }[]): string[] => problems.map((p) => p.reason);

describe('splitStatements: quoting', () => {
  it('keeps semicolons and keywords inside single-quoted strings with doubled quotes', () => {
    expect(texts("INSERT INTO t VALUES ('it''s; COMMIT; VACUUM'); SELECT 2")).toEqual(["INSERT INTO t VALUES ('it''s; COMMIT; VACUUM')", 'SELECT 2']);
  });

  it('treats backslash as an ordinary character in standard strings', () => {
    expect(texts("SELECT 'C:\\'; SELECT 2;")).toEqual(["SELECT 'C:\\'", 'SELECT 2']);
  });

  it('honours backslash escapes in E strings, upper and lower case', () => {
    expect(texts("SELECT E'it\\'s; BEGIN'; SELECT e'\\\\'; SELECT 3")).toEqual(["SELECT E'it\\'s; BEGIN'", "SELECT e'\\\\'", 'SELECT 3']);
    expect(texts("SELECT E'a''b; c'; SELECT 2")).toEqual(["SELECT E'a''b; c'", 'SELECT 2']);
  });

  it('does not take an identifier ending in e for an E string prefix', () => {
    // `some'x\'` is the name `some` then a standard string that ends at the second quote.
    expect(texts("SELECT some'x\\'; SELECT 2")).toEqual(["SELECT some'x\\'", 'SELECT 2']);
  });

  it('keeps semicolons inside double-quoted identifiers with doubled quotes', () => {
    expect(texts('CREATE TABLE "a;""BEGIN""; b" (x int); SELECT 2')).toEqual(['CREATE TABLE "a;""BEGIN""; b" (x int)', 'SELECT 2']);
  });

  it('keeps semicolons inside U& strings and identifiers', () => {
    expect(texts("SELECT U&'d\\0061t; a' AS U&\"x;y\"; SELECT 2")).toEqual(["SELECT U&'d\\0061t; a' AS U&\"x;y\"", 'SELECT 2']);
  });

  it('keeps semicolons inside $$ and $tag$ dollar quotes, with different tags nested', () => {
    const sql = [
      'CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $fn$',
      'BEGIN',
      "  EXECUTE $q$ SELECT 'x'; COMMIT; $q$;",
      '  PERFORM $$;$$;',
      'END',
      '$fn$;',
      'SELECT 2;',
    ].join('\n');
    const out = splitStatements(sql);
    expect(out.map((s) => s.line)).toEqual([1, 7]);
    expect(out[0]!.text.endsWith('END\n$fn$')).toBe(true);
    expect(out[1]!.text).toBe('SELECT 2');
  });

  it('reads $1 as a parameter, not the start of a dollar quote', () => {
    expect(texts('PREPARE q(int, int) AS SELECT $1 + $2; SELECT $$a;b$$; SELECT 3')).toEqual([
      'PREPARE q(int, int) AS SELECT $1 + $2',
      'SELECT $$a;b$$',
      'SELECT 3',
    ]);
  });

  it('reads `$` inside an identifier as part of the name', () => {
    expect(texts('SELECT a$b$ FROM t; SELECT 2')).toEqual(['SELECT a$b$ FROM t', 'SELECT 2']);
  });

  it('does not split inside parentheses', () => {
    expect(texts('SELECT (1; 2); SELECT 3')).toEqual(['SELECT (1; 2)', 'SELECT 3']);
  });
});

describe('splitStatements: comments', () => {
  it('ignores semicolons and quotes in line comments', () => {
    expect(texts("SELECT 1 -- not the end; it's a comment\n+ 1; SELECT 2")).toEqual(["SELECT 1 -- not the end; it's a comment\n+ 1", 'SELECT 2']);
  });

  it('nests block comments like PostgreSQL', () => {
    const sql = "/* outer /* inner; */ still comment; VACUUM; ' */ SELECT 1; /*/ x; */ SELECT 2";
    expect(texts(sql)).toEqual(['SELECT 1', 'SELECT 2']);
    expect(nonTransactionalStatements(sql)).toEqual([]);
  });

  it('drops comment-only and empty pieces and trims comments around a statement', () => {
    expect(texts(';;\n-- only a comment\n;/* block */;  SELECT 1 /* tail */ ;\n-- trailer')).toEqual(['SELECT 1']);
  });

  it('returns nothing for empty or blank input', () => {
    for (const sql of ['', '   \n\t', '-- x', '/* a /* b */ c */', ';']) expect(splitStatements(sql), JSON.stringify(sql)).toEqual([]);
  });

  it('keeps a last statement without a trailing semicolon', () => {
    expect(texts('SELECT 1;\nSELECT 2\n')).toEqual(['SELECT 1', 'SELECT 2']);
  });

  it('runs an unterminated quote or comment to the end of input', () => {
    expect(texts("SELECT 1; SELECT 'open; SELECT 3")).toEqual(['SELECT 1', "SELECT 'open; SELECT 3"]);
    expect(texts('SELECT 1; SELECT $x$ open; SELECT 3')).toEqual(['SELECT 1', 'SELECT $x$ open; SELECT 3']);
    expect(texts('SELECT 1 /* open; SELECT 3')).toEqual(['SELECT 1']);
  });
});

describe('splitStatements: SQL-standard function bodies', () => {
  const atomic = [
    'CREATE OR REPLACE FUNCTION grade(score int) RETURNS text',
    'LANGUAGE sql',
    'BEGIN ATOMIC',
    "  SELECT CASE WHEN score > 90 THEN 'A' ELSE 'B' END;",
    "  SELECT (CASE score WHEN 1 THEN 'one' END);",
    "  SELECT CASE WHEN score > 1 THEN CASE WHEN score > 2 THEN 'x' END END;",
    'END;',
    'CREATE INDEX CONCURRENTLY grade_idx ON t (x);',
  ].join('\n');

  it('keeps BEGIN ATOMIC ... END with CASE ... END inside as one statement', () => {
    const out = splitStatements(atomic);
    expect(out).toHaveLength(2);
    expect(out[0]!.text.startsWith('CREATE OR REPLACE FUNCTION')).toBe(true);
    expect(out[0]!.text.endsWith('END END;\nEND')).toBe(true);
    expect(out[1]).toEqual({ text: 'CREATE INDEX CONCURRENTLY grade_idx ON t (x)', line: 8 });
    expect(nonTransactionalStatements(atomic).map((p) => p.line)).toEqual([8]);
    expect(transactionControlStatements(atomic)).toEqual([]);
  });

  it('handles procedures, lower case, and keywords hidden in the body', () => {
    const sql = 'create procedure p() language sql begin atomic insert into t values (1); vacuum_log(); delete from t; end; select 2';
    expect(texts(sql)).toEqual(['create procedure p() language sql begin atomic insert into t values (1); vacuum_log(); delete from t; end', 'select 2']);
    expect(nonTransactionalStatements(sql)).toEqual([]);
    expect(transactionControlStatements(sql)).toEqual([]);
  });

  it('ends a RETURN-form function with CASE ... END at its semicolon', () => {
    expect(texts('CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql RETURN CASE WHEN x > 0 THEN 1 ELSE 0 END; SELECT 2')).toHaveLength(2);
  });

  it('counts BEGIN/CASE/END only in CREATE FUNCTION/PROCEDURE', () => {
    expect(texts('BEGIN; SELECT CASE WHEN true THEN 1 END; END; SELECT 4')).toEqual(['BEGIN', 'SELECT CASE WHEN true THEN 1 END', 'END', 'SELECT 4']);
    expect(texts('CREATE TABLE t (c int); BEGIN; SELECT 3')).toHaveLength(3);
  });

  it('ignores BEGIN/END inside a plpgsql dollar-quoted body', () => {
    expect(texts('CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$; SELECT 2')).toHaveLength(2);
  });
});

describe('splitStatements: line numbers', () => {
  it('reports the line of the first token, skipping comments and blank lines', () => {
    const sql = '-- header\n\nSELECT 1; SELECT 2;\n/* a\n b */\n\n  UPDATE t\n  SET x = 1;\r\nSELECT\r\n3';
    expect(splitStatements(sql)).toEqual([
      { text: 'SELECT 1', line: 3 },
      { text: 'SELECT 2', line: 3 },
      { text: 'UPDATE t\n  SET x = 1', line: 7 },
      { text: 'SELECT\r\n3', line: 9 },
    ]);
  });

  it('counts newlines inside strings and dollar quotes', () => {
    expect(splitStatements("SELECT 'a\nb';\nSELECT $$\n\n$$;\nSELECT 3").map((s) => s.line)).toEqual([1, 3, 6]);
  });
});

describe('isNoTransactionFile', () => {
  it('finds the marker among the leading comments, case- and whitespace-tolerant', () => {
    expect(isNoTransactionFile('-- pgtenant:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);')).toBe(true);
    expect(isNoTransactionFile('-- Adds an index.\n\n--PGTENANT : No-Transaction  \n/* why */\nSELECT 1')).toBe(true);
    expect(isNoTransactionFile('\t--   pgtenant:no-transaction (CIC below)\nSELECT 1')).toBe(true);
    expect(isNoTransactionFile('-- pgtenant:no-transaction')).toBe(true);
  });

  it('ignores a marker after the first statement, in a block comment, in a string, or misspelt', () => {
    expect(isNoTransactionFile('SELECT 1;\n-- pgtenant:no-transaction\nSELECT 2')).toBe(false);
    expect(isNoTransactionFile('SELECT 1 -- pgtenant:no-transaction\n')).toBe(false);
    expect(isNoTransactionFile('/* -- pgtenant:no-transaction */ SELECT 1')).toBe(false);
    expect(isNoTransactionFile("SELECT '-- pgtenant:no-transaction'")).toBe(false);
    expect(isNoTransactionFile('-- pgtenant:no-transactional\nSELECT 1')).toBe(false);
    expect(isNoTransactionFile('-- see pgtenant:no-transaction\nSELECT 1')).toBe(false);
    expect(isNoTransactionFile('')).toBe(false);
  });
});

describe('nonTransactionalStatements', () => {
  const flagged: [string, string][] = [
    ['CREATE INDEX CONCURRENTLY i ON t (x)', 'CREATE INDEX CONCURRENTLY'],
    ['create unique index concurrently if not exists i on t (x)', 'CREATE UNIQUE INDEX CONCURRENTLY'],
    ['DROP INDEX CONCURRENTLY IF EXISTS i', 'DROP INDEX CONCURRENTLY'],
    ['REINDEX TABLE CONCURRENTLY t', 'REINDEX CONCURRENTLY'],
    ['REINDEX (CONCURRENTLY) INDEX i', 'REINDEX CONCURRENTLY'],
    ['REINDEX (VERBOSE, CONCURRENTLY true) TABLE t', 'REINDEX CONCURRENTLY'],
    ['REINDEX SCHEMA s', 'REINDEX SCHEMA'],
    ['REINDEX (VERBOSE) DATABASE', 'REINDEX DATABASE'],
    ['ALTER TABLE ONLY m DETACH PARTITION m_2024 CONCURRENTLY', 'ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY'],
    ['VACUUM', 'VACUUM'],
    ['vacuum (analyze) t', 'VACUUM'],
    ['CREATE DATABASE d', 'CREATE DATABASE'],
    ['DROP DATABASE IF EXISTS d', 'DROP DATABASE'],
    ["CREATE TABLESPACE ts LOCATION '/x'", 'CREATE TABLESPACE'],
    ['DROP TABLESPACE ts', 'DROP TABLESPACE'],
    ["ALTER SYSTEM SET work_mem = '64MB'", 'ALTER SYSTEM'],
    ["CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p", 'CREATE SUBSCRIPTION'],
    ['DROP SUBSCRIPTION s', 'DROP SUBSCRIPTION'],
    ['ALTER DATABASE "d" SET TABLESPACE ts', 'ALTER DATABASE ... SET TABLESPACE'],
    ['DISCARD ALL', 'DISCARD ALL'],
  ];

  it.each(flagged)('flags %s', (statement, construct) => {
    const problems = nonTransactionalStatements(`-- lead\nSELECT 1;\n/* c */ ${statement};\nSELECT 2`);
    expect(problems).toEqual([{ line: 3, statement, reason: `${construct} cannot run inside a transaction` }]);
  });

  const allowed = [
    'CREATE INDEX i ON t (x)',
    'CREATE UNIQUE INDEX i ON t ("concurrently")',
    'CREATE INDEX "concurrently" ON t (x)',
    'CREATE VIEW v AS SELECT 1 AS concurrently',
    'ALTER TABLE t RENAME COLUMN a TO "concurrently"',
    'REINDEX TABLE t',
    'REINDEX (CONCURRENTLY false) TABLE t',
    'ALTER TABLE m DETACH PARTITION m_2024',
    "SELECT 'VACUUM'",
    "COMMENT ON TABLE t IS 'CREATE INDEX CONCURRENTLY later'",
    'ANALYZE t',
    'CLUSTER',
    'DISCARD PLANS',
    'ALTER DATABASE d SET work_mem = 1',
    'DO $$ BEGIN EXECUTE $q$VACUUM$q$; END $$',
    'CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC SELECT 1; END',
    '-- VACUUM\nSELECT 1',
    'SELECT 1 /* DROP DATABASE d */',
  ];

  it.each(allowed)('leaves %s alone', (statement) => {
    expect(nonTransactionalStatements(`${statement};`)).toEqual([]);
  });

  it('shortens the statement to one line of about 60 characters', () => {
    const [problem] = nonTransactionalStatements(`CREATE INDEX CONCURRENTLY a_rather_long_index_name\n    ON some_table_with_a_long_name (first_column, second_column)`);
    expect(problem!.statement).toBe('CREATE INDEX CONCURRENTLY a_rather_long_index_name ON some_…');
    expect(problem!.statement).toHaveLength(60);
    expect(problem!.statement).not.toContain('\n');
  });

  it('finds nothing in empty input', () => {
    expect(nonTransactionalStatements('')).toEqual([]);
  });
});

describe('transactionControlStatements', () => {
  const flagged: [string, string][] = [
    ['BEGIN', 'BEGIN'],
    ['begin work', 'BEGIN'],
    ['START TRANSACTION ISOLATION LEVEL SERIALIZABLE', 'START TRANSACTION'],
    ['COMMIT', 'COMMIT'],
    ['COMMIT AND CHAIN', 'COMMIT'],
    ['END', 'END'],
    ['ROLLBACK', 'ROLLBACK'],
    ['ROLLBACK TO SAVEPOINT s', 'ROLLBACK'],
    ['ABORT', 'ABORT'],
    ['SAVEPOINT s', 'SAVEPOINT'],
    ['RELEASE SAVEPOINT s', 'RELEASE'],
    ["PREPARE TRANSACTION 'gid'", 'PREPARE TRANSACTION'],
    ["COMMIT PREPARED 'gid'", 'COMMIT PREPARED'],
    ["ROLLBACK PREPARED 'gid'", 'ROLLBACK PREPARED'],
  ];

  it.each(flagged)('flags %s', (statement, construct) => {
    expect(transactionControlStatements(`\n\n  ${statement}  ;`)).toEqual([
      { line: 3, statement, reason: `${construct} is transaction control, which the migrator owns` },
    ]);
  });

  it('flags each one in a wrapped file, on its own line', () => {
    const problems = transactionControlStatements('BEGIN;\nCREATE TABLE t (x int);\nCOMMIT;\n');
    expect(problems.map((p) => [p.line, p.statement])).toEqual([
      [1, 'BEGIN'],
      [3, 'COMMIT'],
    ]);
  });

  const allowed = [
    "DO $$ BEGIN RAISE NOTICE 'x'; END $$",
    "DO LANGUAGE plpgsql $body$ BEGIN COMMIT; END $body$",
    "COMMENT ON TABLE t IS 'COMMIT'",
    'CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END',
    'PREPARE transaction AS SELECT 1',
    'PREPARE q AS SELECT 1',
    'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE',
    'SELECT "begin" FROM t',
    "SELECT E'\\'; COMMIT; \\''",
    '/* BEGIN; */ SELECT 1 -- COMMIT',
    'CREATE TABLE ends (end_at timestamptz)',
  ];

  it.each(allowed)('leaves %s alone', (statement) => {
    expect(transactionControlStatements(`${statement};`)).toEqual([]);
  });

  it('finds nothing in empty input', () => {
    expect(transactionControlStatements('')).toEqual([]);
  });
});
