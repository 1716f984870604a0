// Backend pools keyed by (tenant, role, database): per-pool and global caps, a fair wait queue, idle and lifetime reaping.
import type { Logger } from '../logger.js';
import { NO_OBSERVER, type ProxyObserver } from './activity.js';
import { adminShutdown, tooManyConnections } from './errors.js';
import { keyId, KeyPool, type BackendWaiter, type Opener, type PoolHandle, type PoolKey, type ServerCounts, type Waiter } from './key-pool.js';
import { BackendStatements, type BackendConnection } from './upstream.js';

export type { BackendWaiter, Opener, PoolHandle, PoolKey, ServerCounts } from './key-pool.js';

/**
 * At the global cap, a backend passes from client to client of its own pool for this long before it yields to a
 * pool that waits for room. Yielding after every transaction makes each one pay for a backend's close and another's
 * login: 50 tenants of 10 busy clients over 20 backends ran 60 tps that way, 280 with 50 ms turns, 530 with 250 ms,
 * 850-1030 with 500 ms and 1100-1270 with 1 s (waits averaging 0.3 s at 500 ms). A waiting pool's wait grows with the
 * turn, times the pools ahead of it over the backends.
 */
const TURN_MS = 500;
/**
 * In transaction mode a turn also lasts this many transactions. On a machine saturated by backend logins (each costs
 * the server a process), transactions slow down, fewer fit in a turn of time, and each turn's login weighs more: a
 * turn of time alone fed on itself (2,000 clients of 200 tenants over 60 backends: a login every 2 transactions,
 * 79 tps, clients waiting past 60 s; with this, a login every 7 and 213 tps). Counting transactions too bounds the
 * logins per transaction however slow they get. A session-mode backend is given back once per session: one will do.
 */
export const TURN_TRANSACTIONS = 8;

export interface PoolLimits {
  /** Backends per pool, unless a tenant has its own size. */
  readonly size: number;
  /** Backends in all pools together; 0 for no cap. */
  readonly maxBackends: number;
  /**
   * Worker processes splitting the limits: each keeps --max-backends / workers (rounded down) and a pool's
   * size / workers (rounded up, so a tenant always gets a backend on every worker).
   */
  readonly workers: number;
  /** Idle backends a pool with clients keeps ready. */
  readonly minIdle: number;
  /** Milliseconds a client waits for a backend before it is refused with 53300. */
  readonly waitTimeout: number;
  /** Milliseconds an idle backend is kept. */
  readonly idleTimeout: number;
  /** Milliseconds after which a backend is closed instead of reused. */
  readonly lifetime: number;
  /** Times a backend comes back to its pool before its turn may end (with TURN_MS): TURN_TRANSACTIONS in transaction mode. */
  readonly turnReleases: number;
}

/**
 * All backends of the proxy. A pool below its own size that cannot open because of the global cap waits
 * in `rotation`, and freed capacity goes round those pools in turn, so one busy tenant cannot hold it all.
 */
export class BackendPool {
  private readonly pools = new Map<string, KeyPool>();
  private readonly owner = new Map<BackendConnection, KeyPool>();
  private readonly rotation: KeyPool[] = [];
  private total = 0;
  private closed = false;
  private readonly reaper: NodeJS.Timeout;
  private waiting = 0;
  /** Backends closed whose sockets have not closed yet (still counted in total). */
  private closing = 0;
  private sweeper: NodeJS.Timeout | null = null;
  private readonly sweepEvery: number;
  /** This worker's share of --max-backends. */
  private maxBackends = 0;

  constructor(
    private limits: PoolLimits,
    private readonly log: Logger,
    private readonly observer: Pick<ProxyObserver, 'backendWaited'> = NO_OBSERVER,
  ) {
    this.configure(limits);
    this.sweepEvery = Math.max(10, Math.min(100, limits.waitTimeout / 10));
    const every = Math.max(100, Math.min(1000, limits.idleTimeout / 2));
    this.reaper = setInterval(() => this.reap(), every);
    this.reaper.unref();
  }

  /**
   * New limits (a reload): they apply from the next acquire or release on; a pool's size follows as its
   * sessions ask for backends. The worker count and the sweep intervals stay as they were at start.
   */
  configure(limits: PoolLimits): void {
    const { maxBackends, workers } = limits;
    this.limits = { ...limits, workers: this.limits.workers };
    this.maxBackends = maxBackends === 0 ? 0 : Math.max(1, Math.floor(maxBackends / workers));
    if (this.pools.size > 0) this.dispatch();
  }

  /**
   * A session joins the pool of its key for its lifetime. `open` (with the credentials of its login) becomes the
   * pool's opener, so sessions need not each keep their own; null for relayed logins, which open their own.
   */
  join(key: PoolKey, open: Opener | null): PoolHandle {
    const pool = this.poolFor(key);
    pool.clients++;
    if (open) pool.opener = open;
    return pool;
  }

  leave(handle: PoolHandle): void {
    (handle as KeyPool).clients--;
  }

  /**
   * A backend of this pool: an idle one, a new one, or one handed over after waiting. `open` is given only
   * for relayed logins (never reused); others use the pool's opener. `size` is the pool's (the tenant's own,
   * or the default).
   */
  acquire(handle: PoolHandle, open: Opener | null = null, size = this.limits.size): Promise<BackendConnection> {
    return new Promise((resolve, reject) => {
      const idle = this.acquireFor(handle, { backendReady: resolve, backendFailed: reject }, size, open);
      if (idle) resolve(idle);
    });
  }

  /**
   * The same without a promise, for transaction mode's hot path: an idle backend is returned at once; otherwise
   * null, and `waiter` hears later (a new backend opened, one handed over, or the reason there is none).
   */
  acquireFor(handle: PoolHandle, waiter: BackendWaiter, size = this.limits.size, open: Opener | null = null): BackendConnection | null {
    const pool = handle as KeyPool;
    const reuse = open === null;
    open ??= pool.opener;
    if (this.closed || !open) {
      const err = this.closed ? adminShutdown('pgtenant is shutting down') : new Error('pool has no opener: join it with one first');
      queueMicrotask(() => waiter.backendFailed(err));
      return null;
    }
    pool.limit = this.share(size);
    // Sessions after a disconnect start afresh; backends from before it still close on release.
    if (pool.retired && pool.active === 0 && pool.opening === 0) pool.retired = false;
    if (reuse) {
      const idle = this.takeIdle(pool);
      if (idle) return idle;
    }
    if (pool.size < pool.limit && this.makeRoom()) this.openFor(pool, open, waiter);
    else this.wait(pool, open, reuse, waiter);
    return null;
  }

  /** Gives a backend back; one that is not `reusable` (dirty, dead, bound to a login) is closed. */
  release(backend: BackendConnection, reusable: boolean): void {
    const pool = this.owner.get(backend);
    if (!pool) {
      backend.close();
      return;
    }
    pool.active--;
    backend.turnServed++;
    const expired = Date.now() - backend.createdAt >= this.limits.lifetime;
    // A pool made smaller keeps no more than its new size.
    const over = pool.size >= pool.limit;
    if (!reusable || expired || over || !backend.alive || this.closed || pool.retired) {
      this.drop(backend);
    } else if (!this.handOver(pool, backend)) {
      this.park(pool, backend);
    }
    this.dispatch();
  }

  /** A tenant's pools take a new size at once: idle backends beyond it close now, those in use when released. */
  resize(tenant: string, size: number): void {
    for (const pool of this.pools.values()) {
      if (pool.key.tenant !== tenant) continue;
      pool.limit = this.share(size);
      while (pool.idle.length > 0 && pool.size > pool.limit) this.closeIdle(pool, 0);
    }
    this.dispatch();
  }

  /** Closes a tenant's idle backends (dropped, or disconnected by an operator); those in use close when released. */
  closeTenant(tenant: string): void {
    for (const pool of this.pools.values()) {
      if (pool.key.tenant !== tenant) continue;
      pool.retired = true;
      while (pool.idle.length > 0) this.closeIdle(pool, pool.idle.length - 1);
    }
    this.dispatch();
  }

  /** Backends by tenant and state. */
  counts(): Map<string, ServerCounts> {
    const out = new Map<string, ServerCounts>();
    for (const p of this.pools.values()) {
      const c = out.get(p.key.tenant) ?? { login: 0, active: 0, idle: 0 };
      c.login += p.opening;
      c.active += p.active;
      c.idle += p.idle.length;
      out.set(p.key.tenant, c);
    }
    return out;
  }

  /** Backends open or opening in all pools. */
  get size(): number {
    return this.total;
  }

  /** Closes idle backends and refuses waiters; backends in use close when they come back. */
  close(): void {
    this.closed = true;
    clearInterval(this.reaper);
    for (const pool of this.pools.values()) {
      for (const w of pool.waiters.splice(0)) {
        this.served();
        w.target.backendFailed(adminShutdown('pgtenant is shutting down'));
      }
      while (pool.idle.length > 0) this.closeIdle(pool, pool.idle.length - 1);
    }
    this.rotation.length = 0;
  }

  private poolFor(key: PoolKey): KeyPool {
    const id = keyId(key);
    let pool = this.pools.get(id);
    if (!pool) this.pools.set(id, (pool = new KeyPool(id, key, this.share(this.limits.size))));
    return pool;
  }

  /** The most recently used idle backend that is still alive; dead ones found on the way are dropped. */
  private takeIdle(pool: KeyPool): BackendConnection | null {
    while (pool.idle.length > 0) {
      const backend = pool.idle.pop()!;
      if (!backend.alive || backend.hasPendingMessages) {
        this.drop(backend);
        this.log.info({ tenant: pool.key.tenant }, 'idle backend was dead or spoke unprompted; replaced');
        continue;
      }
      pool.active++;
      this.newTurn(backend);
      return backend;
    }
    return null;
  }

  /**
   * True when one more backend may open now. At the global cap, another pool's oldest idle backend is
   * closed to make room, which comes once its server has gone (see drop): the caller waits for it.
   */
  private makeRoom(): boolean {
    if (!this.atGlobalCap()) return true;
    // Each eviction frees the room for one waiter when its server is gone: as many in flight as pools wait for
    // room (this caller and those in rotation), not one at a time, or many tenants over few backends would queue
    // behind one server's goodbye after another.
    if (this.closing > this.rotation.length) return false;
    let victim: KeyPool | null = null;
    for (const p of this.pools.values()) {
      const oldest = p.idle[0];
      if (oldest && (!victim || oldest.idleSince < victim.idle[0]!.idleSince)) victim = p;
    }
    if (victim) this.closeIdle(victim, 0);
    return !this.atGlobalCap();
  }

  private async open(pool: KeyPool, open: Opener): Promise<BackendConnection> {
    pool.opening++;
    this.total++;
    let backend: BackendConnection;
    try {
      backend = await open();
    } catch (err) {
      pool.opening--;
      this.total--;
      this.dispatch();
      throw err;
    }
    pool.opening--;
    pool.active++;
    this.newTurn(backend);
    this.owner.set(backend, pool);
    backend.statements = new BackendStatements(pool.statementEpoch);
    // An idle backend is watched: one the server closes (restart, pg_terminate_backend) leaves at once.
    backend.onIdleClose = () => {
      const i = pool.idle.indexOf(backend);
      if (i < 0) return;
      this.closeIdle(pool, i);
      this.dispatch();
    };
    return backend;
  }

  private wait(pool: KeyPool, open: Opener, reuse: boolean, target: BackendWaiter): void {
    const now = Date.now();
    pool.waiters.push({ open, reuse, target, queuedAt: now, deadline: now + this.limits.waitTimeout });
    this.waiting++;
    this.sweeper ??= setInterval(() => this.expireWaiters(), this.sweepEvery);
    this.joinRotation(pool);
  }

  /** Opens a backend for `target`, which hears when it is logged in (or why it is not). */
  private openFor(pool: KeyPool, open: Opener, target: BackendWaiter): void {
    this.open(pool, open).then(
      (backend) => target.backendReady(backend),
      (err: Error) => target.backendFailed(err),
    );
  }

  /**
   * Refuses waiters past their deadline. One timer for all of them (a waiter is a busy pool's common case, and
   * a timer each would cost more than the wait), so a timeout fires up to `sweepEvery` late.
   */
  private expireWaiters(): void {
    const now = Date.now();
    for (const pool of this.pools.values()) {
      for (let i = 0; i < pool.waiters.length; i++) {
        const w = pool.waiters[i]!;
        if (w.deadline > now) continue;
        pool.waiters.splice(i--, 1);
        this.served();
        this.waited(pool, w, true);
        w.target.backendFailed(
          tooManyConnections(
            `no backend connection for tenant "${pool.key.tenant}" became free within ${this.limits.waitTimeout} ms`,
            'The pool is full: raise --pool-size or --max-backends, or use --pool-mode transaction.',
          ),
        );
      }
      this.leaveRotationIfDone(pool);
    }
  }

  private waited(pool: KeyPool, w: Waiter, timedOut: boolean): void {
    this.observer.backendWaited(pool.key.tenant, (Date.now() - w.queuedAt) / 1000, timedOut);
  }

  /** One waiter fewer; the sweep stops with the last. */
  private served(): void {
    if (--this.waiting > 0 || !this.sweeper) return;
    clearInterval(this.sweeper);
    this.sweeper = null;
  }

  /** Gives a released backend straight to its own pool's next waiter, unless another pool's turn comes first. */
  private handOver(pool: KeyPool, backend: BackendConnection): boolean {
    if (this.atGlobalCap() && this.turnOver(backend) && this.starving(pool)) return false;
    const waiters = pool.waiters;
    let i = 0;
    while (i < waiters.length && !waiters[i]!.reuse) i++;
    if (i === waiters.length) return false;
    const w = i === 0 ? waiters.shift()! : waiters.splice(i, 1)[0]!;
    this.served();
    this.waited(pool, w, false);
    pool.active++;
    this.leaveRotationIfDone(pool);
    w.target.backendReady(backend);
    return true;
  }

  private newTurn(backend: BackendConnection): void {
    backend.turnSince = Date.now();
    backend.turnServed = 0;
  }

  private turnOver(backend: BackendConnection): boolean {
    return backend.turnServed >= this.limits.turnReleases && Date.now() - backend.turnSince >= TURN_MS;
  }

  private park(pool: KeyPool, backend: BackendConnection): void {
    backend.idleSince = Date.now();
    pool.idle.push(backend);
    // Another pool may be waiting for the global cap: this idle backend is the room it needs.
    if (this.atGlobalCap() && this.starving(pool)) this.closeIdle(pool, pool.idle.length - 1);
  }

  private closeIdle(pool: KeyPool, index: number): void {
    const [backend] = pool.idle.splice(index, 1) as [BackendConnection];
    this.drop(backend);
  }

  /**
   * Closes a backend. It counts against the caps until its socket has closed, i.e. until the server has let
   * it go: counting it free at once would let a new backend open while the old one still holds a connection
   * slot, and the server would briefly see more than --max-backends.
   */
  private drop(backend: BackendConnection): void {
    this.owner.delete(backend);
    this.closing++;
    backend.close();
    backend.whenClosed(() => {
      this.closing--;
      this.total--;
      // Not from inside the pool's own bookkeeping: a socket already closed calls back at once.
      queueMicrotask(() => this.dispatch());
    });
  }

  /** This worker's share of a pool's size. */
  private share(size: number): number {
    return Math.ceil(size / this.limits.workers);
  }

  /** True when a pool other than `except` waits for global room (it is below its own size). */
  private starving(except: KeyPool): boolean {
    return this.rotation.some((p) => p !== except && p.waiters.length > 0 && p.size < p.limit);
  }

  private atGlobalCap(): boolean {
    return this.maxBackends > 0 && this.total >= this.maxBackends;
  }

  private joinRotation(pool: KeyPool): void {
    if (!this.rotation.includes(pool)) this.rotation.push(pool);
    this.dispatch();
  }

  private leaveRotationIfDone(pool: KeyPool): void {
    if (pool.waiters.length > 0) return;
    const i = this.rotation.indexOf(pool);
    if (i >= 0) this.rotation.splice(i, 1);
  }

  /** Opens backends for waiting pools, in turn, while there is room under both caps. */
  private dispatch(): void {
    let tries = this.rotation.length;
    while (tries-- > 0 && this.rotation.length > 0) {
      const pool = this.rotation.shift()!;
      const w = pool.waiters[0];
      if (!w) continue;
      if (pool.size >= pool.limit) {
        // Waiting for its own backends to come back, not for global room.
        this.rotation.push(pool);
        continue;
      }
      if (!this.makeRoom()) {
        this.rotation.unshift(pool);
        return;
      }
      pool.waiters.shift();
      this.served();
      this.waited(pool, w, false);
      if (pool.waiters.length > 0) this.rotation.push(pool);
      this.openFor(pool, w.open, w.target);
    }
  }

  /** Closes backends idle too long or past their lifetime, keeps minIdle ready for pools in use, forgets empty pools. */
  private reap(): void {
    const now = Date.now();
    for (const pool of this.pools.values()) {
      const keep = pool.clients > 0 ? this.limits.minIdle : 0;
      for (let i = pool.idle.length - 1; i >= 0; i--) {
        const backend = pool.idle[i]!;
        const old = now - backend.createdAt >= this.limits.lifetime;
        if (old || (now - backend.idleSince >= this.limits.idleTimeout && pool.idle.length > keep)) this.closeIdle(pool, i);
      }
      if (pool.opener && pool.idle.length + pool.opening < keep && pool.size < pool.limit && !this.atGlobalCap()) {
        this.prefill(pool, pool.opener);
      }
      if (pool.size === 0 && pool.waiters.length === 0 && pool.clients === 0) this.pools.delete(pool.id);
    }
    this.dispatch();
  }

  private prefill(pool: KeyPool, open: Opener): void {
    this.open(pool, open).then(
      (backend) => this.release(backend, true),
      (err: Error) => this.log.warn({ tenant: pool.key.tenant, err: err.message }, 'could not open a minIdle backend'),
    );
  }
}
