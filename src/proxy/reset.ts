// A pooled backend between clients: the next client's startup settings, and the reset (or close) after the last one.
import type { BackendPool } from './pool.js';
import type { BackendConnection } from './upstream.js';
import { quoteIdent } from '../tenants/ids.js';

/** A string literal that reads the same whatever standard_conforming_strings says. */
function literal(value: string): string {
  return `E'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/**
 * Gives a pooled backend (opened without them) the settings the client asked for at startup. Values the
 * server reports (ParameterStatus) and those the proxy set earlier are compared, so a client asking for
 * what the backend already has costs no round trip.
 */
export async function applySettings(backend: BackendConnection, wanted: ReadonlyMap<string, string>): Promise<void> {
  if (wanted.size === 0 && backend.applied.size === 0) return;
  const reported = new Map([...backend.parameters].map(([k, v]) => [k.toLowerCase(), v]));
  const statements: string[] = [];
  const wantedKeys = new Set<string>();
  for (const [name, value] of wanted) {
    const key = name.toLowerCase();
    wantedKeys.add(key);
    if ((backend.applied.get(key) ?? reported.get(key)) === value) continue;
    statements.push(`SELECT pg_catalog.set_config(${literal(name)}, ${literal(value)}, false)`);
  }
  // What an earlier client asked for and this one did not goes back to the server's default.
  const stale = [...backend.applied.keys()].filter((key) => !wantedKeys.has(key));
  for (const key of stale) statements.push(`RESET ${quoteIdent(key)}`);
  if (statements.length === 0) return;
  await backend.query(statements.join('; '));
  for (const key of stale) backend.applied.delete(key);
  for (const [name, value] of wanted) backend.applied.set(name.toLowerCase(), value);
}


/**
 * Returns the backend to a fresh session's state: a transaction left open is rolled back, then DISCARD ALL
 * drops settings, prepared statements, temporary tables, advisory locks and LISTENs. Rejects on an error or
 * when the server does not answer within `timeoutMs`; the caller then closes the backend.
 */
export async function resetBackend(
  backend: BackendConnection,
  state: 'idle' | 'idle_in_transaction',
  timeoutMs: number,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer to the reset within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([
      (async () => {
        if (state === 'idle_in_transaction') await backend.query('ROLLBACK');
        await backend.query('DISCARD ALL');
        backend.statements.forget();
        backend.applied.clear();
        backend.settingsKey = '';
      })(),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Gives a backend back to its pool: as it is when `state` is idle and nothing `dirty` happened, after ROLLBACK
 * and DISCARD ALL otherwise, closed when `state` is null (left half done) or it died. Resolves with the
 * reset's failure, if any: the backend is then closed.
 */
export async function returnToPool(
  pool: BackendPool,
  backend: BackendConnection,
  state: 'idle' | 'idle_in_transaction' | null,
  dirty: boolean,
  timeoutMs: number,
): Promise<Error | null> {
  if (state === null || !backend.alive) {
    pool.release(backend, false);
    return null;
  }
  backend.relayTo(null);
  if (state === 'idle' && !dirty) {
    pool.release(backend, true);
    return null;
  }
  try {
    await resetBackend(backend, state, timeoutMs);
    pool.release(backend, true);
    return null;
  } catch (err) {
    pool.release(backend, false);
    return err as Error;
  }
}
