// Client limits: connections in all, connections per tenant, and the idle-in-transaction watch.
import type { Config } from '../config.js';
import type { ClientState } from './activity.js';
import { idleInTransactionTimeout, tooManyConnections, type PgError } from './errors.js';

/** A worker's share of a cap the operator gave for the whole proxy (0 stays "no cap"). */
function share(cap: number, workers: number): number {
  return cap === 0 ? 0 : Math.ceil(cap / workers);
}

/** The refusal a new client connection gets once it has sent its StartupMessage, or null to let it in. */
export function connectionRefusal(config: Config, open: number): PgError | null {
  const cap = share(config.maxClientConnections, config.workers);
  if (cap === 0 || open < cap) return null;
  return tooManyConnections(
    `too many client connections to pgtenant (max-client-connections is ${config.maxClientConnections})`,
    'Close idle connections, or raise --max-client-connections.',
  );
}

/** Authenticated clients by tenant, held against the tenant's own cap or --max-tenant-clients. */
export class TenantClients {
  private readonly count = new Map<string, number>();

  constructor(private readonly config: () => Config) {}

  /**
   * Counts a client in; or, when the tenant is at its cap, the refusal it gets (and it is not counted). `own` is
   * the tenant's own cap from its record (null: --max-tenant-clients).
   */
  enter(tenant: string, own: number | null): PgError | null {
    const config = this.config();
    const whole = own ?? config.maxTenantClients;
    const cap = share(whole, config.workers);
    const n = this.count.get(tenant) ?? 0;
    if (cap > 0 && n >= cap) {
      const [which, raise] =
        own === null
          ? [`max-tenant-clients is ${whole}`, '--max-tenant-clients']
          : [`its own cap is ${whole}`, `its cap (pgtenant tenants set ${tenant} --max-clients N)`];
      return tooManyConnections(`too many connections for tenant "${tenant}" (${which})`, `Close idle connections of this tenant, or raise ${raise}.`);
    }
    this.count.set(tenant, n + 1);
    return null;
  }

  leave(tenant: string): void {
    const n = (this.count.get(tenant) ?? 1) - 1;
    if (n > 0) this.count.set(tenant, n);
    else this.count.delete(tenant);
  }
}

/** What the watch needs from a session. */
export interface Watched {
  readonly clientState: ClientState;
  /** Any number that moves when bytes flow either way. */
  readonly activity: number;
  terminate(err: PgError): void;
}

const IN_TRANSACTION: ReadonlySet<ClientState> = new Set(['idle_in_transaction', 'idle_in_transaction_aborted']);

/**
 * Ends clients that sit inside a transaction, sending nothing, for longer than --idle-transaction-timeout:
 * they hold a backend (and its locks) that others wait for. A sweep over the sessions, not a timer per
 * message, so the relay's hot path pays nothing; a client is ended at most one sweep after its time.
 */
export class IdleTransactionWatch {
  private readonly seen = new WeakMap<Watched, { activity: number; since: number }>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly sessions: () => Iterable<Watched>,
    private readonly timeoutMs: () => number,
  ) {}

  /** (Re)starts the sweep for the current timeout; a timeout of 0 stops it. */
  start(): void {
    this.stop();
    const timeout = this.timeoutMs();
    if (timeout <= 0) return;
    this.timer = setInterval(() => this.sweep(), Math.max(50, Math.min(1000, timeout / 4)));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  sweep(now = Date.now()): void {
    const timeout = this.timeoutMs();
    for (const s of this.sessions()) {
      if (!IN_TRANSACTION.has(s.clientState)) {
        this.seen.delete(s);
        continue;
      }
      const last = this.seen.get(s);
      if (!last || last.activity !== s.activity) this.seen.set(s, { activity: s.activity, since: now });
      else if (now - last.since >= timeout) {
        this.seen.delete(s);
        s.terminate(idleInTransactionTimeout());
      }
    }
  }
}
