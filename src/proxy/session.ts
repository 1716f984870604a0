// One client's life: startup negotiation, tenant routing, authentication (by the proxy or relayed), a pooled backend, then the relay.
import tls from 'node:tls';
import type { Logger } from '../logger.js';
import type { Config } from '../config.js';
import type { RoleSecret } from '../tenants/directory.js';
import type { ClientState, ProxyObserver, SessionCounters } from './activity.js';
import { loginBackend } from './auth/login.js';
import { mockAuthentication } from './auth/mock.js';
import { relayAuthentication } from './auth/relay.js';
import { authenticateClient, requireLogin, type BackendCredentials } from './auth/verify.js';
import type { CancelKey, CancelRegistry } from './cancel.js';
import { ClientConnection, ClientGone } from './client.js';
import type { TenantClients } from './limits.js';
import { PgError, adminShutdown, cannotConnectNow, invalidAuthorization, protocolViolation } from './errors.js';
import { lookupRoleSecret, lookupTenant, type TenantLookup } from './tenant-lookup.js';
import type { BackendPool, PoolHandle, PoolKey } from './pool.js';
import { decodeStartupPacket, encodeStartupMessage, type StartupPacket } from './protocol/startup.js';
import { BackendWriter, errorResponseFor } from './protocol/writer.js';
import { Relay } from './relay.js';
import { backendStartupParameters, clientSettings, identify } from './router.js';
import { openBackend, sendCancelRequest, type BackendConnection, type UpstreamTarget } from './upstream.js';
import { applySettings, returnToPool } from './reset.js';
import { TransactionRelay, type TransactionLink } from './transaction-relay.js';

export enum SessionState {
  Startup = 'startup',
  Authenticating = 'authenticating',
  Relaying = 'relaying',
  Closed = 'closed',
}

/** The only moves a session makes; anything else is a bug. */
const TRANSITIONS: Record<SessionState, readonly SessionState[]> = {
  [SessionState.Startup]: [SessionState.Authenticating, SessionState.Closed],
  [SessionState.Authenticating]: [SessionState.Relaying, SessionState.Closed],
  [SessionState.Relaying]: [SessionState.Closed],
  [SessionState.Closed]: [],
};

/** What sessions share; a reload (SIGHUP) swaps the configuration and TLS context for all of them. */
export interface SessionDeps {
  config: Config;
  readonly target: UpstreamTarget;
  readonly tenants: TenantLookup;
  readonly cancels: CancelRegistry;
  readonly pool: BackendPool;
  secureContext: tls.SecureContext | null;
  /** tls-server-end-point of the proxy's certificate, for SCRAM-SHA-256-PLUS; null when it allows none. */
  tlsEndPoint: Buffer | null;
  readonly tenantClients: TenantClients;
  readonly observer: ProxyObserver;
  readonly log: Logger;
}

/** How a session ended, for its log line and metrics. */
export type Outcome = string;

export class Session implements TransactionLink {
  state = SessionState.Startup;
  tenant: string | null = null;
  readonly startedAt = Date.now();
  private readonly client: ClientConnection;
  private backend: BackendConnection | null = null;
  /** Where the backend stands for the pool: `idle` between statements, null when it must not be reused. */
  private backendState: 'idle' | 'idle_in_transaction' | null = null;
  private proxyKey: CancelKey | null = null;
  private relay: Relay | TransactionRelay | null = null;
  /** This session's membership of its (tenant, role, database) pool, once the client has authenticated. */
  private pool: PoolHandle | null = null;
  /** The tenant's own pool size; null for the proxy's. */
  private tenantPoolSize: number | null = null;
  /** Set while the session counts against its tenant's --max-tenant-clients. */
  private counted = false;
  /** The tenant's disconnect count when this client logged in: a later request ends it. */
  disconnectEpoch = -1;
  private settings: ReadonlyMap<string, string> = new Map();
  /** Set once AuthenticationOk went out. */
  private authenticated = false;
  /** Runs from connect until the password is proven (--startup-timeout); then the wait for a backend is the pool's to bound. */
  private startupTimer: NodeJS.Timeout | undefined;
  /** The settings as one string: a backend carrying the same key needs no comparison. */
  private settingsKey = '';
  private encrypted = false;
  /** Set when the tenant changed while this session was still logging in; checked before relaying. */
  private revoked: PgError | null = null;
  log: Logger;

  constructor(
    socket: import('node:net').Socket,
    readonly id: string,
    private readonly deps: SessionDeps,
    /** Set when the proxy is full: the client hears it once it has said who it is (a CancelRequest still works). */
    private readonly refusal: PgError | null = null,
  ) {
    this.client = new ClientConnection(socket);
    this.log = deps.log.child({ session: id, client: this.clientAddress() });
  }

  private clientAddress(): string {
    return `${this.client.socket.remoteAddress}:${this.client.socket.remotePort}`;
  }

  private transition(next: SessionState): void {
    if (!TRANSITIONS[this.state].includes(next)) throw new Error(`session ${this.id}: bad transition ${this.state} -> ${next}`);
    this.state = next;
  }

  /** Runs the session to its end; never rejects. */
  async run(): Promise<Outcome> {
    let outcome: Outcome;
    try {
      outcome = (await this.login()) ? await this.relayUntilDone() : 'cancel_request';
    } catch (err) {
      outcome = this.fail(err);
    }
    await this.cleanup();
    const { bytesIn, bytesOut, queries, transactions } = this.counters();
    this.log.info(
      { durationMs: Date.now() - this.startedAt, bytesIn, bytesOut, queries, transactions, tls: this.encrypted, outcome },
      'session ended',
    );
    return outcome;
  }

  /**
   * The startup phase under its timeout: true once the client is logged in, false for a CancelRequest.
   * A method of its own so that what login needed (the startup packet, the timer) is not kept by run()'s
   * frame while the session relays, possibly for hours and for thousands of clients.
   */
  private async login(): Promise<boolean> {
    const ms = this.deps.config.startupTimeout;
    if (ms > 0) this.startupTimer = setTimeout(() => this.client.refuse(protocolViolation('timeout during startup')), ms);
    try {
      const startup = await this.negotiate();
      if (!startup) return false;
      await this.authenticate(startup);
      return true;
    } finally {
      this.endStartupTimer();
    }
  }

  private endStartupTimer(): void {
    clearTimeout(this.startupTimer);
    this.startupTimer = undefined;
  }

  /** The tenant once the client has authenticated; null before (a claimed tenant is not yet one). */
  get authenticatedTenant(): string | null {
    return this.authenticated ? this.tenant : null;
  }

  /** True once the session relays (a suspension leaves it be; it ends only on an explicit disconnect). */
  get relaying(): boolean {
    return this.relay !== null;
  }

  private get poolSize(): number {
    return this.tenantPoolSize ?? this.deps.config.poolSize;
  }

  /** Moves whenever bytes flow either way (for the idle-in-transaction watch). */
  get activity(): number {
    const relay = this.relay;
    return relay ? relay.stats.bytesIn + relay.stats.bytesOut : this.client.bytesIn + this.client.bytesOut;
  }

  get clientState(): ClientState {
    if (this.relay) return this.relay.clientState;
    return this.authenticated ? 'waiting' : 'login';
  }

  counters(): SessionCounters {
    const relay = this.relay;
    return {
      bytesIn: this.client.bytesIn + (relay?.stats.bytesIn ?? 0),
      bytesOut: this.client.bytesOut + (relay?.stats.bytesOut ?? 0),
      queries: relay?.queries ?? 0,
      transactions: relay?.transactions ?? 0,
    };
  }

  private fail(err: unknown): Outcome {
    if (err instanceof ClientGone) {
      this.client.close();
      return 'client_gone';
    }
    const internal = !(err instanceof PgError);
    if (internal) this.log.error({ err }, 'session failed');
    const refusal = internal ? new PgError('XX000', 'internal error in pgtenant') : err;
    if (!this.relay) this.deps.observer.sessionRefused(refusal.code);
    this.client.refuse(refusal);
    return internal ? 'internal_error' : `error ${refusal.code}: ${refusal.message}`;
  }

  /** Startup-phase packets until a StartupMessage; null when the connection was a CancelRequest. */
  private async negotiate(): Promise<Extract<StartupPacket, { kind: 'StartupMessage' }> | null> {
    const { config, secureContext } = this.deps;
    for (;;) {
      const packet = decodeStartupPacket(await this.client.readStartupPacket());
      switch (packet.kind) {
        case 'SSLRequest':
          if (this.encrypted) throw protocolViolation('SSLRequest received on an encrypted connection');
          if (secureContext && config.clientTls !== 'disable') await this.upgradeToTls(secureContext);
          else this.client.write(Buffer.from('N'));
          break;
        case 'GSSENCRequest':
          this.client.write(Buffer.from('N'));
          break;
        case 'CancelRequest':
          this.forwardCancel(packet.processId, packet.secretKey);
          this.client.close();
          return null;
        case 'StartupMessage':
          if (this.refusal) throw this.refusal;
          if (config.clientTls === 'require' && !this.encrypted) {
            throw invalidAuthorization('pgtenant requires TLS: connect with sslmode=require');
          }
          return packet;
      }
    }
  }

  private async upgradeToTls(secureContext: tls.SecureContext): Promise<void> {
    // Bytes sent after SSLRequest but before the handshake could be injected by a man in the middle.
    if (this.client.reader.buffered > 0) throw protocolViolation('received unencrypted data after SSL request');
    this.client.detach();
    const raw = this.client.socket;
    raw.write('S');
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext });
    await new Promise<void>((resolve, reject) => {
      secure.once('secure', resolve);
      secure.once('error', () => reject(new ClientGone('TLS handshake failed')));
      raw.once('close', () => reject(new ClientGone('client closed during TLS handshake')));
    });
    this.encrypted = true;
    this.client.attach(secure);
  }

  private forwardCancel(processId: number, secretKey: Buffer): void {
    const outcome = this.deps.cancels.cancel(processId, secretKey);
    if (outcome === 'unknown') this.log.debug({ processId }, 'CancelRequest with an unknown key ignored');
  }

  /** Sends a CancelRequest for this session's backend. */
  cancel(): void {
    const backend = this.relay instanceof TransactionRelay ? this.relay.backend : this.backend;
    if (!backend || this.state !== SessionState.Relaying) return;
    this.log.info('forwarding cancel request');
    this.cancelBackend(backend);
  }

  private cancelBackend(backend: BackendConnection): void {
    if (!backend.key) return;
    const { processId, secretKey } = backend.key;
    sendCancelRequest(this.deps.target, processId, secretKey, this.deps.config.connectTimeout).catch((err) =>
      this.log.warn({ err: (err as Error).message }, 'cancel request could not be forwarded'),
    );
  }

  private async authenticate(startup: Extract<StartupPacket, { kind: 'StartupMessage' }>): Promise<void> {
    this.transition(SessionState.Authenticating);
    const { config } = this.deps;
    // Only login writes server messages itself; the relay passes the server's bytes.
    const writer = new BackendWriter();
    const params = startup.parameters;
    const protocolExtensions = [...params.keys()].filter((k) => k.startsWith('_pq_.'));
    if (startup.minorVersion > 0 || protocolExtensions.length > 0) {
      this.client.write(writer.negotiateProtocolVersion(0, protocolExtensions).flush());
    }
    const user = params.get('user')!;
    const identity = identify(params, config.isolation);
    // Settings are checked before the password exchange, as PostgreSQL checks the packet before authenticating.
    this.settings = clientSettings(params);
    this.settingsKey = JSON.stringify([...this.settings]);
    this.tenant = identity.tenantId;
    // One child logger, not a child of a child: a session may live for hours, and there may be thousands.
    this.log = this.deps.log.child({ session: this.id, client: this.clientAddress(), tenant: identity.tenantId });
    const record = await lookupTenant(this.deps.tenants, identity.tenantId, this.log);
    const loginRole = identity.loginRole ?? record?.role ?? null;
    const schema = record?.schema ?? identity.tenantId;
    const key: PoolKey = { tenant: identity.tenantId, role: loginRole ?? user, database: params.get('database') ?? loginRole ?? user };
    this.tenantPoolSize = record?.poolSize ?? null;
    let credentials: BackendCredentials | null = null;
    let secret: RoleSecret | null = null;
    if (config.auth === 'relay') {
      // Unknown tenants go through the same challenge as known ones: nothing tells them apart before the password.
      if (!loginRole) await mockAuthentication(this.client, user, writer);
      const startupMessage = encodeStartupMessage(backendStartupParameters(params, loginRole!, schema));
      const relayed = (b: BackendConnection) => relayAuthentication(this.client, b, writer);
      this.pool = this.deps.pool.join(key, null);
      const { target, observer } = this.deps;
      const open = () => openBackend(target, startupMessage, config.connectTimeout, relayed, (s) => observer.backendConnected(s), true);
      this.backend = await this.deps.pool.acquire(this.pool, open, this.poolSize);
      await this.backend.readUntilReady();
    } else {
      // Asked for unknown tenants too: when the auth query fails, every login fails alike, telling no tenant apart.
      const found = await lookupRoleSecret(this.deps.tenants, loginRole ?? user, this.log);
      secret = loginRole ? found : null;
      credentials = await authenticateClient(this.client, writer, user, secret, this.encrypted ? this.deps.tlsEndPoint : null);
    }
    // The password is proven: now it is safe to say what is wrong with the tenant. Look again, since
    // a suspend or drop may have landed while the client was answering the challenge.
    const current = record && (await lookupTenant(this.deps.tenants, identity.tenantId, this.log));
    if (!current) throw invalidAuthorization(`tenant "${identity.tenantId}" does not exist`);
    if (current.state !== 'active') {
      throw cannotConnectNow(`tenant "${current.id}" is suspended`, 'Ask the operator to resume the tenant.');
    }
    requireLogin(secret, loginRole!);
    this.disconnectEpoch = current.disconnectEpoch;
    const full = this.deps.tenantClients.enter(identity.tenantId, current.maxClients);
    if (full) throw full;
    this.counted = true;
    this.client.write(writer.authenticationOk().flush());
    this.authenticated = true;
    // The client has done its part: a wait for a backend now is --pool-wait-timeout's (53300), not a startup timeout.
    this.endStartupTimer();
    if (credentials) {
      const startupMessage = encodeStartupMessage(backendStartupParameters(new Map([['database', key.database]]), key.role, schema));
      const login = credentials;
      // The pool keeps the opener, with the credentials of the latest login, for all its sessions (and minIdle).
      const { target, config, observer } = this.deps;
      this.pool = this.deps.pool.join(key, () =>
        openBackend(target, startupMessage, config.connectTimeout, (b) => loginBackend(b, login), (s) => observer.backendConnected(s)),
      );
      // In transaction mode too: the greeting needs a backend's parameters, and a login that cannot reach one should fail now.
      this.backend = await this.acquireBackend();
    }
    this.backendState = 'idle';
    this.greet(writer);
    if (config.poolMode === 'transaction') {
      this.deps.pool.release(this.backend!, true);
      this.backend = null;
    }
  }

  transactionEnded(backend: BackendConnection, dirty: boolean): void {
    // The usual case, a clean backend, goes back at once: no reset to wait for, no promise.
    if (!dirty && backend.alive) this.deps.pool.release(backend, true);
    else void this.giveBack(backend, 'idle', dirty);
  }

  /** A backend from this session's pool with the client's startup settings applied. */
  private async acquireBackend(): Promise<BackendConnection> {
    return this.withSettings(await this.deps.pool.acquire(this.pool!, null, this.poolSize));
  }

  /**
   * For transaction mode: a backend carrying this client's settings at once, or null and the relay hears later
   * (backendReady). Neither path makes a promise unless settings must be applied.
   */
  backendForTransaction(): BackendConnection | null {
    const backend = this.deps.pool.acquireFor(this.pool!, this, this.poolSize);
    if (!backend || backend.settingsKey === this.settingsKey) return backend;
    this.backendReady(backend);
    return null;
  }

  // BackendWaiter, for transaction mode: the pool's answer goes to the relay, with the client's settings applied.
  backendReady(backend: BackendConnection): void {
    const relay = this.relay as TransactionRelay;
    if (backend.settingsKey === this.settingsKey) return relay.backendReady(backend);
    this.withSettings(backend).then(
      (b) => relay.backendReady(b),
      (err: Error) => relay.backendFailed(err),
    );
  }

  backendFailed(err: Error): void {
    (this.relay as TransactionRelay).backendFailed(err);
  }

  private async withSettings(backend: BackendConnection): Promise<BackendConnection> {
    if (backend.settingsKey === this.settingsKey) return backend;
    try {
      await applySettings(backend, this.settings);
    } catch (err) {
      // The settings are the client's mistake (an invalid value), not the backend's: it stays usable.
      this.deps.pool.release(backend, backend.alive);
      throw err;
    }
    backend.settingsKey = this.settingsKey;
    return backend;
  }

  /** The rest of the startup phase, as the client's own server would say it, with the proxy's cancel key. */
  private greet(w: BackendWriter): void {
    for (const [name, value] of this.backend!.parameters) w.parameterStatus(name, value);
    this.proxyKey = this.deps.cancels.issue(this);
    w.backendKeyData(this.proxyKey.processId, this.proxyKey.secretKey).readyForQuery('I');
    this.client.write(w.flush());
  }

  private relayUntilDone(): Promise<Outcome> {
    if (this.revoked) throw this.revoked;
    // The client may have left while it waited for a backend: its close event has been and gone.
    if (this.client.socket.destroyed) throw new ClientGone('client closed while waiting for a backend');
    this.transition(SessionState.Relaying);
    this.client.detach();
    if (this.deps.config.poolMode === 'transaction') {
      this.relay = new TransactionRelay(this.client.socket, this);
    } else {
      this.relay = new Relay(this.client.socket, this.backend!);
    }
    this.relay.start(this.client.reader.takeRemaining());
    this.deps.observer.sessionStarted(this.tenant!);
    return this.relay.done;
  }

  /** The tenant was suspended or dropped: a relaying session ends now, one still logging in before it relays. */
  revoke(err: PgError): void {
    if (this.state === SessionState.Relaying) this.terminate(err);
    else this.revoked ??= err;
  }

  /** Ends the session from outside, whatever its state (shutdown, admin disconnect). */
  terminate(err: PgError = adminShutdown()): void {
    if (this.relay) {
      // A closed socket stops a backend only when it next writes: cancel the running query too.
      if (this.relay.clientState === 'active') this.cancel();
      this.relay.end('server_closed', errorResponseFor(err));
    }
    else this.client.refuse(err);
  }

  /** Gives the backend back when the session ends: reset when it sits between statements, else closed. */
  private async cleanup(): Promise<void> {
    if (this.state !== SessionState.Closed) this.transition(SessionState.Closed);
    if (this.proxyKey) this.deps.cancels.revoke(this.proxyKey.processId);
    if (this.counted) this.deps.tenantClients.leave(this.tenant!);
    this.counted = false;
    let held: { backend: BackendConnection; state: 'idle' | 'idle_in_transaction' | null; dirty: boolean } | null;
    if (this.relay instanceof TransactionRelay) held = this.relay.takeBackend();
    else if (this.backend) held = { backend: this.backend, state: this.relay ? this.relay.backendState : this.backendState, dirty: true };
    else held = null;
    this.backend = null;
    if (held) await this.giveBack(held.backend, held.state, held.dirty);
    if (this.pool) this.deps.pool.leave(this.pool);
    this.pool = null;
  }

  /** Returns a backend to the pool (see returnToPool); a failed reset is logged. */
  private async giveBack(backend: BackendConnection, state: 'idle' | 'idle_in_transaction' | null, dirty: boolean): Promise<void> {
    // Closing a backend's socket stops it only when it next reads or writes: a query the client left behind
    // (pg_sleep, a long aggregate, a COPY) would run on. Cancel it, then close.
    if (state === null && backend.alive) {
      this.log.info('client left with work in flight: cancelling it on the server');
      this.cancelBackend(backend);
    }
    // A relayed login binds the backend to its client: never reused.
    const failed = await returnToPool(this.deps.pool, backend, this.deps.config.auth === 'relay' ? null : state, dirty, this.deps.config.connectTimeout);
    if (failed) this.log.warn({ err: failed.message }, 'backend reset failed; closing it');
  }
}
