// Reads migration files: `tenant/VERSION_name.sql` and `shared/VERSION_name.sql`, ordered by version.
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { TenantError } from '../tenants/errors.js';
import { isNoTransactionFile, nonTransactionalStatements, transactionControlStatements } from './sql.js';

export interface MigrationFile {
  version: string;
  name: string;
  path: string;
  sql: string;
  /** sha256 of the file's bytes, hex. */
  checksum: string;
  /** False for a file marked `-- pgtenant:no-transaction`: its statements then run one by one. */
  transaction: boolean;
}

/** The marker that lets a file run outside the per-tenant transaction. */
export const NO_TRANSACTION_MARKER = '-- pgtenant:no-transaction';

export interface MigrationSet {
  tenant: MigrationFile[];
  shared: MigrationFile[];
}

/** `20260101000000_create_notes.sql`: a version of digits, then a name. */
const FILE_NAME = /^([0-9]+)_([A-Za-z0-9_-]+)\.sql$/;

async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function loadKind(dir: string): Promise<MigrationFile[]> {
  if (!(await isDirectory(dir))) return [];
  const files: MigrationFile[] = [];
  const seen = new Map<string, string>();
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    // Only .sql files are migrations; .gitkeep, READMEs and folders are left alone.
    if (!entry.isFile() || !entry.name.endsWith('.sql')) continue;
    const m = FILE_NAME.exec(entry.name);
    if (!m) {
      throw new TenantError('invalid_migration', `migration file ${path.join(dir, entry.name)}: expected a name like 20260101000000_create_notes.sql`);
    }
    const [, version, name] = m as unknown as [string, string, string];
    const other = seen.get(version);
    if (other) throw new TenantError('invalid_migration', `migrations ${other} and ${entry.name} in ${dir} share version ${version}`);
    seen.set(version, entry.name);
    const filePath = path.join(dir, entry.name);
    const bytes = await readFile(filePath);
    const sql = bytes.toString('utf8');
    const transaction = !isNoTransactionFile(sql);
    refuseUnrunnable(filePath, sql, transaction);
    files.push({ version, name, path: filePath, sql, checksum: createHash('sha256').update(bytes).digest('hex'), transaction });
  }
  return files.sort((a, b) => (a.version < b.version ? -1 : a.version > b.version ? 1 : 0));
}

/**
 * Refuses, before anything runs, a file that would break the migrator's transaction (BEGIN, COMMIT, ...) or
 * that PostgreSQL would refuse inside one (CREATE INDEX CONCURRENTLY, ...) unless it is marked to run outside one.
 */
function refuseUnrunnable(file: string, sql: string, transaction: boolean): void {
  const control = transactionControlStatements(sql)[0];
  if (control) {
    throw new TenantError(
      'invalid_migration',
      `migration file ${file} line ${control.line}: ${control.reason} ('${control.statement}'); pgtenant runs each file in its own transaction, remove it`,
    );
  }
  const outside = transaction ? nonTransactionalStatements(sql)[0] : undefined;
  if (outside) {
    throw new TenantError(
      'invalid_migration',
      `migration file ${file} line ${outside.line}: ${outside.reason} ('${outside.statement}'); ` +
        `put '${NO_TRANSACTION_MARKER}' on the file's first line to run its statements one by one outside a transaction ` +
        '(a failure then leaves earlier statements applied, so write them to be rerun, e.g. IF NOT EXISTS)',
    );
  }
}

/** Loads both kinds; a missing `tenant/` or `shared/` folder means none of that kind, a missing `dir` is an error. */
export async function loadMigrations(dir: string): Promise<MigrationSet> {
  if (!(await isDirectory(dir))) throw new TenantError('invalid_migration', `migrations folder ${dir} does not exist`);
  const [tenant, shared] = await Promise.all([loadKind(path.join(dir, 'tenant')), loadKind(path.join(dir, 'shared'))]);
  return { tenant, shared };
}
