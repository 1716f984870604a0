// Cached tenant lookups for the proxy: TTL cache, coalesced queries, and LISTEN/NOTIFY to drop entries at once.
import { EventEmitter } from 'node:events';
import pg from 'pg';
import { silentLogger, type Logger } from '../logger.js';
import { TenantError } from './errors.js';
import { isValidTenantId } from './ids.js';
import { DISCONNECT_CHANNEL, TENANT_CHANNEL, TENANT_COLUMNS, toRecord, type TenantRecord, type TenantRow } from './types.js';

export interface TenantDirectoryOptions {
  connectionString: string;
  /** How long a found tenant stays cached; NOTIFY drops it sooner. */
  ttlMs: number;
  /** How long "no such tenant" stays cached (default: 2 s, at most ttlMs). */
  negativeTtlMs?: number;
  /**
   * Milliseconds to connect, and for a lookup to answer (default 5000): a server that stops answering fails
   * lookups (the client gets 57P03) rather than holding logins until their startup timeout.
   */
  timeoutMs?: number;
  log?: Logger;
}

interface Entry {
  record: TenantRecord | null;
  expires: number;
}

/** What the auth query returns for a role: its secret (SCRAM verifier, MD5 hash or null) and login rules. */
export interface RoleSecret {
  secret: string | null;
  /** When the password expires, in epoch milliseconds (Infinity for 'infinity'); null when it never does. */
  validUntil: number | null;
  canLogin: boolean;
}

/** Secrets are kept briefly: a password changed outside pgtenant sends no NOTIFY. */
const SECRET_TTL_MS = 5000;

const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 10_000;

/**
 * Events: 'change' (id) when a NOTIFY names a tenant; 'disconnect' (id) when one says an operator may have asked
 * every proxy to end the tenant's sessions (any role can NOTIFY: the listener checks the tenant's row); 'reset' when the LISTEN connection was lost and the whole cache was dropped
 * (changes in between were missed).
 */
export class TenantDirectory extends EventEmitter {
  private readonly log: Logger;
  private readonly pool: pg.Pool;
  private readonly cache = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<TenantRecord | null>>();
  private readonly secrets = new Map<string, { value: Promise<RoleSecret | null>; expires: number }>();
  private readonly negativeTtlMs: number;
  private listener: pg.Client | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoffMs = BACKOFF_MIN_MS;
  private closed = false;

  constructor(private readonly opts: TenantDirectoryOptions) {
    super();
    this.log = (opts.log ?? silentLogger).child({ component: 'tenant-directory' });
    this.negativeTtlMs = Math.min(opts.negativeTtlMs ?? 2000, opts.ttlMs);
    const timeoutMs = opts.timeoutMs ?? 5000;
    this.pool = new pg.Pool({
      connectionString: opts.connectionString,
      max: 4,
      application_name: 'pgtenant-directory',
      connectionTimeoutMillis: timeoutMs,
      query_timeout: timeoutMs,
    });
    // An idle pooled client losing its server must not crash the proxy; the pool replaces it.
    this.pool.on('error', (err) => this.log.warn({ err: err.message }, 'tenant lookup connection lost'));
  }

  /** Opens the LISTEN connection; rejects if the first attempt fails. */
  async start(): Promise<void> {
    await this.listen();
  }

  async lookup(id: string): Promise<TenantRecord | null> {
    if (!isValidTenantId(id)) return null;
    const hit = this.cache.get(id);
    if (hit && hit.expires > Date.now()) return hit.record;
    const pending = this.inflight.get(id);
    if (pending) return pending;
    const query = this.fetch(id).then(
      (record) => {
        // A NOTIFY (or reset) during the query removed our in-flight entry: the answer may be stale, do not keep it.
        if (this.inflight.get(id) === query) {
          this.inflight.delete(id);
          // Without a LISTEN connection a cached answer could miss its NOTIFY; answer without keeping it.
          if (!this.listener) return record;
          const ttl = record ? this.opts.ttlMs : this.negativeTtlMs;
          this.cache.set(id, { record, expires: Date.now() + ttl });
        }
        return record;
      },
      (err: unknown) => {
        if (this.inflight.get(id) === query) this.inflight.delete(id);
        throw err;
      },
    );
    this.inflight.set(id, query);
    return query;
  }

  /**
   * The role's secret through the auth query (pgtenant.role_secret), cached for a few seconds and dropped on
   * any tenant NOTIFY. The query runs on the proxy's own connections: nothing a client sends reaches it.
   */
  roleSecret(role: string): Promise<RoleSecret | null> {
    const hit = this.secrets.get(role);
    if (hit && hit.expires > Date.now()) return hit.value;
    const value = this.pool
      .query<{ secret: string | null; valid_until: Date | number | null; can_login: boolean }>(
        'SELECT secret, valid_until, can_login FROM pgtenant.role_secret($1)',
        [role],
      )
      .then(
        // pg gives timestamptz 'infinity' as the number Infinity rather than a Date: Number() takes both.
        ({ rows }) =>
          rows[0]
            ? { secret: rows[0].secret, validUntil: rows[0].valid_until === null ? null : Number(rows[0].valid_until), canLogin: rows[0].can_login }
            : null,
        (err: { code?: string; message?: string }) => {
          this.secrets.delete(role);
          throw authQueryError(err);
        },
      );
    this.secrets.set(role, { value, expires: Date.now() + SECRET_TTL_MS });
    return value;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    const listener = this.listener;
    this.listener = undefined;
    this.clear();
    await Promise.all([listener?.end().catch(() => undefined), this.pool.end()]);
  }

  private async fetch(id: string): Promise<TenantRecord | null> {
    try {
      const { rows } = await this.pool.query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM pgtenant.tenants WHERE id = $1`, [id]);
      return rows[0] ? toRecord(rows[0]) : null;
    } catch (err) {
      const code = (err as { code?: string }).code ?? '';
      if (['42P01', '3F000'].includes(code)) {
        throw new TenantError('not_initialized', "control schema pgtenant is not installed in the upstream database: run 'pgtenant init'", { cause: err });
      }
      // undefined_column: a proxy upgraded before its control schema.
      if (code === '42703') {
        throw new TenantError('not_initialized', "control schema pgtenant is older than this pgtenant: run 'pgtenant init'", { cause: err });
      }
      throw err;
    }
  }

  private clear(): void {
    this.cache.clear();
    this.inflight.clear();
    this.secrets.clear();
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.opts.connectionString,
      application_name: 'pgtenant-listen',
      connectionTimeoutMillis: this.opts.timeoutMs ?? 5000,
      query_timeout: this.opts.timeoutMs ?? 5000,
      keepAlive: true,
    });
    let lost = false;
    const onLost = (err?: Error) => {
      if (lost) return;
      lost = true;
      if (this.listener === client) this.listener = undefined;
      if (this.closed) return;
      this.log.warn({ err: err?.message }, 'tenant LISTEN connection lost; cache cleared, reconnecting');
      this.resetCache();
      this.scheduleReconnect();
    };
    client.on('notification', (msg) => {
      if (!msg.payload) return;
      if (msg.channel === DISCONNECT_CHANNEL) {
        // The next lookup must read the row, whose disconnect count is what counts.
        this.cache.delete(msg.payload);
        this.inflight.delete(msg.payload);
        this.emit('disconnect', msg.payload);
      } else if (msg.channel === TENANT_CHANNEL) {
        this.cache.delete(msg.payload);
        this.inflight.delete(msg.payload);
        this.secrets.clear();
        this.emit('change', msg.payload);
      }
    });
    client.on('error', onLost);
    client.on('end', () => onLost());
    try {
      await client.connect();
      await client.query(`LISTEN ${TENANT_CHANNEL}; LISTEN ${DISCONNECT_CHANNEL}`);
    } catch (err) {
      lost = true; // the caller decides: start() rejects, a reconnect schedules the next try
      await client.end().catch(() => undefined);
      throw err;
    }
    if (this.closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.listener = client;
    this.backoffMs = BACKOFF_MIN_MS;
  }

  private resetCache(): void {
    this.clear();
    this.emit('reset');
  }

  private scheduleReconnect(): void {
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.reconnectTimer = setTimeout(() => {
      this.listen().then(
        () => {
          // Changes may have happened while we were not listening.
          this.resetCache();
          this.log.info('tenant LISTEN connection restored');
        },
        (err: Error) => {
          if (this.closed) return;
          this.log.warn({ err: err.message, retryInMs: this.backoffMs }, 'tenant LISTEN reconnect failed');
          this.scheduleReconnect();
        },
      );
    }, delay);
    this.reconnectTimer.unref?.();
  }
}

/** Why the auth query failed, said so an operator knows what to run. */
function authQueryError(err: { code?: string; message?: string }): Error {
  if (err.code === '42883' || err.code === '42P01' || err.code === '3F000') {
    return new TenantError('not_initialized', "the auth query pgtenant.role_secret is missing: run 'pgtenant init'", { cause: err });
  }
  if (err.code === '42501') {
    return new TenantError(
      'insufficient_privilege',
      "the auth query cannot read pg_authid: run 'pgtenant init' as a superuser, or start the proxy with --auth relay",
      { cause: err },
    );
  }
  return err instanceof Error ? err : new Error(err.message ?? 'auth query failed');
}
