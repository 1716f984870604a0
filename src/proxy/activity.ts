// What the proxy tells metrics and the admin API: session events as they happen, connection states on demand.

/**
 * A client's state: `login` until authenticated, `waiting` while it waits for a backend from its pool, then
 * as of the last ReadyForQuery it was sent.
 */
export type ClientState = 'login' | 'waiting' | 'idle' | 'active' | 'idle_in_transaction' | 'idle_in_transaction_aborted';
export const CLIENT_STATES: readonly ClientState[] = ['login', 'waiting', 'idle', 'active', 'idle_in_transaction', 'idle_in_transaction_aborted'];

/** A backend connection's state: `login` while it is opened and logged in, `active` while linked to a client, `idle` in its pool. */
export type ServerState = 'login' | 'active' | 'idle';
export const SERVER_STATES: readonly ServerState[] = ['login', 'active', 'idle'];

/** Running totals of one session, read from the relay's header scanners (nothing is parsed for them). */
export interface SessionCounters {
  bytesIn: number;
  bytesOut: number;
  /** Query and Execute messages from the client. */
  queries: number;
  /** Transactions the server finished (ReadyForQuery back to idle after work). */
  transactions: number;
}

export interface TenantConnections {
  /** null for clients that have not authenticated yet: a claimed tenant is not reported. */
  tenant: string | null;
  clients: Record<ClientState, number>;
  servers: Record<ServerState, number>;
}

/** Hooks the proxy calls; the admin API's metrics implement them. Each is called synchronously and must not throw. */
export interface ProxyObserver {
  /** A client authenticated and its session relays from now on. */
  sessionStarted(tenant: string): void;
  /** A client was refused before relaying, with the SQLSTATE it was sent. */
  sessionRefused(sqlstate: string): void;
  /** A session ended; called in the same tick it leaves the live set, so totals never count it twice. */
  sessionEnded(tenant: string | null, counters: SessionCounters): void;
  /** A backend connection was opened (TCP, and TLS where used), taking `seconds`. */
  backendConnected(seconds: number): void;
  /** A client waited `seconds` for a backend from its tenant's pool, and got one or (timedOut) a 53300. */
  backendWaited(tenant: string, seconds: number, timedOut: boolean): void;
}

export const NO_OBSERVER: ProxyObserver = Object.freeze({
  sessionStarted: () => undefined,
  sessionRefused: () => undefined,
  sessionEnded: () => undefined,
  backendConnected: () => undefined,
  backendWaited: () => undefined,
});

export function emptyConnections(tenant: string | null): TenantConnections {
  return {
    tenant,
    clients: Object.fromEntries(CLIENT_STATES.map((s) => [s, 0])) as Record<ClientState, number>,
    servers: Object.fromEntries(SERVER_STATES.map((s) => [s, 0])) as Record<ServerState, number>,
  };
}

/** The proxy of this instance (in this process, or in its worker processes), as the admin API sees it. */
export interface ProxyControl {
  readonly address: { host: string; port: number };
  /** True once the proxy started to shut down. */
  readonly closing: boolean;
  /** Client and server connections by tenant and state, counted now. */
  connections(): Promise<TenantConnections[]>;
  /** Ends every session of a tenant with a FATAL the client can read; resolves to how many were ended. */
  disconnectTenant(id: string, reason: string): Promise<number>;
}

/** Several processes' connection counts as one list, summed by tenant. */
export function sumConnections(lists: readonly TenantConnections[][]): TenantConnections[] {
  const byTenant = new Map<string | null, TenantConnections>();
  for (const t of lists.flat()) {
    let entry = byTenant.get(t.tenant);
    if (!entry) byTenant.set(t.tenant, (entry = emptyConnections(t.tenant)));
    for (const s of CLIENT_STATES) entry.clients[s] += t.clients[s];
    for (const s of SERVER_STATES) entry.servers[s] += t.servers[s];
  }
  return [...byTenant.values()];
}
