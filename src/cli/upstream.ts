// Opens a pg.Pool on the upstream (management) URL for one CLI command, and always closes it.
import pg from 'pg';
import { redactUrl, requireUpstream, type Config } from '../config.js';
import type { Logger } from '../logger.js';
import { withCheckedClient } from '../tenants/control-schema.js';

function describe(err: unknown): string {
  const e = err as { message?: string; code?: string; errors?: { message?: string }[] };
  // Node reports a refused dual-stack connect as an AggregateError with an empty message.
  return e.message || e.errors?.map((x) => x.message).join('; ') || e.code || String(err);
}

/** Runs fn with a pool on the upstream; a failure to connect becomes one readable line. */
export async function withUpstream<T>(config: Config, log: Logger, fn: (pool: pg.Pool) => Promise<T>, opts: { max?: number } = {}): Promise<T> {
  const url = requireUpstream(config);
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.max ?? 2,
    application_name: 'pgtenant-cli',
    connectionTimeoutMillis: config.connectTimeout,
  });
  pool.on('error', (err) => log.debug({ err: err.message }, 'idle upstream connection lost'));
  try {
    try {
      (await pool.connect()).release();
    } catch (err) {
      throw new Error(`cannot connect to upstream ${redactUrl(url)}: ${describe(err)}`, { cause: err });
    }
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

/** Runs fn on one upstream connection whose control schema has been checked. */
export function withControlSchema<T>(config: Config, log: Logger, fn: (client: pg.ClientBase) => Promise<T>): Promise<T> {
  return withUpstream(config, log, (pool) => withCheckedClient(pool, fn));
}
