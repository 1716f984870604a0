// One pool's state: its key, idle backends, waiters and counts; BackendPool (pool.ts) does the bookkeeping across pools.
import type { BackendConnection, StatementEpoch } from './upstream.js';

/** What identifies interchangeable backends: only these share a backend, so tenants never do. */
export interface PoolKey {
  readonly tenant: string;
  readonly role: string;
  readonly database: string;
}

/** Opens and logs in a backend for a pool. */
export type Opener = () => Promise<BackendConnection>;

export interface ServerCounts {
  login: number;
  active: number;
  idle: number;
}

/** Told when a backend it waited for is there, or why none will come; never called from inside the acquire call. */
export interface BackendWaiter {
  backendReady(backend: BackendConnection): void;
  backendFailed(err: Error): void;
}

export interface Waiter {
  readonly open: Opener;
  /** False for backends bound to one client's login (relayed auth): those are opened for it, never handed over. */
  readonly reuse: boolean;
  readonly target: BackendWaiter;
  readonly queuedAt: number;
  readonly deadline: number;
}

/** A session's membership of one pool (see BackendPool.join). */
export interface PoolHandle {
  readonly key: PoolKey;
}

export class KeyPool implements PoolHandle {
  /** Most recently used last: hand-outs take from the end, so the oldest idle ones time out. */
  readonly idle: BackendConnection[] = [];
  readonly waiters: Waiter[] = [];
  active = 0;
  opening = 0;
  /** The latest opener a client joined with: it opens backends for every client of the pool, and for minIdle. */
  opener: Opener | null = null;
  /** Sessions that joined and have not left: the pool is kept (with its opener) while there are any. */
  clients = 0;
  /** Set when the tenant was disconnected: backends in use then are closed on release, not reused. */
  retired = false;
  /** Shared by the pool's backends: bumped when their prepared statements must be prepared afresh. */
  readonly statementEpoch: StatementEpoch = { value: 0 };

  constructor(
    readonly id: string,
    readonly key: PoolKey,
    /** Its size: the tenant's own, or the proxy's default; the latest acquire sets it. */
    public limit: number,
  ) {}

  get size(): number {
    return this.idle.length + this.active + this.opening;
  }
}

export const keyId = (k: PoolKey): string => `${k.tenant}\u0000${k.role}\u0000${k.database}`;
