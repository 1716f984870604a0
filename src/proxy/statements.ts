// A client's named prepared statements in transaction mode, under names the proxy controls on every backend.
import { createHash } from 'node:crypto';
import { parseName, renamed, type NameAt } from './protocol/extended.js';

export interface Statement {
  /** The name on backends: derived from the text and parameter types, so equal statements share it. */
  readonly server: string;
  /** The client's Parse, renamed: what prepares it on a backend that lacks it. */
  readonly parse: Buffer;
}

/**
 * Backends belong to one (tenant, role, database) pool, so a name only ever meets statements of the same
 * tenant: tenants never share a plan. The hash covers everything after the name (query text, parameter types).
 */
export function serverStatementName(frame: Buffer, at: NameAt): string {
  return 'pgtenant_' + createHash('sha256').update(frame.subarray(at.end + 1)).digest('hex').slice(0, 40);
}

export class ClientStatements {
  // Made at the first named Parse: most clients of a transaction pooler (psql, pgbench -M simple) never send one.
  private byName: Map<string, Statement> | null = null;

  /** Records a named Parse; a name given again replaces the old statement (PostgreSQL would refuse with 42P05). */
  define(frame: Buffer): Statement | null {
    const at = parseName(frame);
    if (at.name === '') return null;
    const server = serverStatementName(frame, at);
    const statement = { server, parse: renamed(frame, at, server) };
    (this.byName ??= new Map()).set(at.name, statement);
    return statement;
  }

  get(name: string): Statement | undefined {
    return this.byName?.get(name);
  }

  delete(name: string): void {
    this.byName?.delete(name);
  }

  get size(): number {
    return this.byName?.size ?? 0;
  }
}
