// Where sessions get backends from. Session mode without proxy-side auth: one fresh backend per client, closed after.
import type { BackendConnection } from './upstream.js';

/** What identifies interchangeable backends; pooling (a later step) reuses within one key. */
export interface PoolKey {
  readonly tenant: string;
  readonly role: string;
  readonly database: string;
}

export interface BackendPool {
  /** A backend for this key; `open` makes a new one when none can be reused. */
  acquire(key: PoolKey, open: () => Promise<BackendConnection>): Promise<BackendConnection>;
  /** Gives a backend back; `reusable` is false when its state is unknown or dirty. */
  release(key: PoolKey, backend: BackendConnection, reusable: boolean): void;
  /** Backends currently handed out, by tenant. */
  active(): ReadonlyMap<string, number>;
}

/** Relayed authentication binds a backend to one client's login, so nothing can be shared yet. */
export class DedicatedPool implements BackendPool {
  private readonly counts = new Map<string, number>();

  async acquire(key: PoolKey, open: () => Promise<BackendConnection>): Promise<BackendConnection> {
    const backend = await open();
    this.counts.set(key.tenant, (this.counts.get(key.tenant) ?? 0) + 1);
    return backend;
  }

  release(key: PoolKey, backend: BackendConnection): void {
    backend.close();
    const n = (this.counts.get(key.tenant) ?? 1) - 1;
    if (n > 0) this.counts.set(key.tenant, n);
    else this.counts.delete(key.tenant);
  }

  active(): ReadonlyMap<string, number> {
    return this.counts;
  }
}
