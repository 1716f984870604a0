// Backend connections: TCP or Unix socket, TLS per the upstream URL's sslmode, and the startup-phase reader (pg-protocol).
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { serialize } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { Parser } from 'pg-protocol/dist/parser.js';
import { PgError, connectionFailure } from './errors.js';

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';
const SSL_MODES: readonly SslMode[] = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];

export interface UpstreamTarget {
  readonly host: string;
  readonly port: number;
  /** Set when the host is a Unix socket directory. */
  readonly socketPath: string | null;
  readonly sslmode: SslMode;
}

/** Where backends live, read from the upstream URL (credentials there are for management only). */
export function upstreamTarget(url: string): UpstreamTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error('the upstream URL is not a valid postgres:// URL');
  }
  const hostParam = u.searchParams.get('host');
  const host = hostParam ?? (decodeURIComponent(u.hostname).replace(/^\[|\]$/g, '') || 'localhost');
  const port = Number(u.searchParams.get('port') ?? (u.port || 5432));
  const sslmode = (u.searchParams.get('sslmode') ?? 'prefer') as SslMode;
  if (!SSL_MODES.includes(sslmode)) throw new Error(`upstream URL: unknown sslmode '${sslmode}'`);
  const socketPath = host.startsWith('/') ? `${host}/.s.PGSQL.${port}` : null;
  return Object.freeze({ host, port, socketPath, sslmode: socketPath ? 'disable' : sslmode });
}

/**
 * A server that accepts and then says nothing (a blackholed network, a wedged server) must not hold a pool
 * slot, or the login waiting for it, forever: the socket is destroyed once it has been silent for `ms`.
 * The watch stays on through TLS and login, and openBackend lifts it once the backend is ready.
 */
function watchSilence(socket: net.Socket, ms: number): void {
  socket.setTimeout(ms, () => socket.destroy(new Error(`no answer from the upstream server within ${ms} ms`)));
}

function connectSocket(target: UpstreamTarget, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = target.socketPath
      ? net.connect({ path: target.socketPath })
      : net.connect({ host: target.host, port: target.port });
    const fail = (err: Error) => {
      socket.destroy();
      reject(connectionFailure(`could not connect to the upstream server: ${err.message}`));
    };
    watchSilence(socket, timeoutMs);
    socket.once('error', fail);
    socket.once('connect', () => {
      socket.off('error', fail);
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 60_000);
      resolve(socket);
    });
  });
}

/** Sends SSLRequest and upgrades when the server agrees; falls back to plaintext only where sslmode allows. */
async function negotiateTls(socket: net.Socket, target: UpstreamTarget, timeoutMs: number): Promise<net.Socket> {
  if (target.sslmode === 'disable' || target.sslmode === 'allow') return socket;
  const answer = await new Promise<number>((resolve, reject) => {
    const closed = () => reject(new Error('the server closed the connection'));
    socket.once('error', reject);
    socket.once('close', closed);
    socket.once('data', (b: Buffer) => {
      socket.off('error', reject);
      socket.off('close', closed);
      if (b.length !== 1) reject(new Error('unexpected reply to SSLRequest'));
      else resolve(b[0]!);
    });
    socket.write(serialize.requestSsl());
  }).catch((err: Error) => {
    socket.destroy();
    throw connectionFailure(`upstream TLS negotiation failed: ${err.message}`);
  });
  if (answer !== 0x53) {
    if (target.sslmode === 'prefer') return socket;
    socket.destroy();
    throw connectionFailure('the upstream server does not support TLS, but sslmode requires it');
  }
  const verify = target.sslmode === 'verify-ca' || target.sslmode === 'verify-full';
  return new Promise((resolve, reject) => {
    const secure = tls.connect({
      socket,
      rejectUnauthorized: verify,
      ...(target.sslmode === 'verify-full' ? { servername: target.host } : { checkServerIdentity: () => undefined }),
    });
    const failed = (err: Error) => {
      socket.destroy();
      reject(connectionFailure(`upstream TLS handshake failed: ${err.message}`));
    };
    const closed = () => failed(new Error('the server closed the connection'));
    secure.once('secureConnect', () => {
      secure.off('error', failed);
      secure.off('close', closed);
      // From here the watch is on the socket the backend reads (the raw one only carries TLS records).
      socket.setTimeout(0);
      watchSilence(secure, timeoutMs);
      resolve(secure);
    });
    secure.once('error', failed);
    secure.once('close', closed);
  });
}

/** A connected socket (TLS where sslmode says so), still watched for silence (see watchSilence). */
export async function openBackendSocket(target: UpstreamTarget, timeoutMs: number): Promise<net.Socket> {
  return negotiateTls(await connectSocket(target, timeoutMs), target, timeoutMs);
}

const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);

type Message = BackendMessage & Record<string, unknown>;

/** A pool's shared clock for prepared statements: bumped when they must be prepared afresh everywhere. */
export interface StatementEpoch {
  value: number;
}

/** The server names of the statements prepared on one backend, valid as of an epoch of its pool. */
export class BackendStatements {
  readonly names = new Set<string>();
  private seen: number;

  constructor(private readonly epoch: StatementEpoch = { value: 0 }) {
    this.seen = epoch.value;
  }

  /** Forgets them when the pool's epoch moved on since they were prepared. */
  refresh(): void {
    if (this.seen === this.epoch.value) return;
    this.names.clear();
    this.seen = this.epoch.value;
  }

  /** The server dropped them (DISCARD ALL, DEALLOCATE): they are prepared again on next use. */
  forget(): void {
    this.names.clear();
  }

  /** Their plans went stale (a migration changed a result type): every backend of the pool prepares afresh. */
  expire(): void {
    this.epoch.value++;
    this.refresh();
  }
}

/** Where a relaying backend's socket events go while a relay owns it. */
export interface BackendSink {
  data(chunk: Buffer): void;
  drain(): void;
  closed(): void;
}

/**
 * One backend connection. Its socket listeners are set once: events go to a relay while one owns the
 * backend (relayTo), and otherwise to a protocol parser whose messages next() yields (startup, resets,
 * the pool's idle watch). Handing a backend between relays and the pool is then a field assignment.
 */
export class BackendConnection {
  private readonly parser = new Parser();
  private readonly queue: BackendMessage[] = [];
  // pg-protocol's ErrorResponse is itself an Error, so messages and failures travel on separate callbacks.
  private waiter: { resolve: (m: BackendMessage) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private sink: BackendSink | null = null;
  readonly createdAt = Date.now();
  /** When it last went idle in its pool. */
  idleSince = 0;
  /** When its pool last took it up (opened, or taken idle): hand-overs from client to client since then are one turn. */
  turnSince = 0;
  /** Times it came back to its pool since `turnSince`: the transactions (or sessions) of this turn. */
  turnServed = 0;
  /** Called when the socket closes while no relay owns it (the pool's watch on idle backends). */
  onIdleClose: (() => void) | null = null;
  /** The server's ParameterStatus values, as of the last time the connection was attached. */
  readonly parameters = new Map<string, string>();
  /** Statements the transaction-mode relay prepared here (DISCARD ALL empties it; the pool can expire it). */
  statements = new BackendStatements();
  /** Settings the proxy gave this session for its clients (set_config); DISCARD ALL empties it. */
  readonly applied = new Map<string, string>();
  /** Which client settings are all in place (a session's settings key), so equal ones cost no comparison. */
  settingsKey = '';
  /** The server's own cancel key (BackendKeyData), once logged in. */
  key: { processId: number; secretKey: number } | null = null;
  private readonly deliverMessage = (m: BackendMessage) => this.deliver(m);
  private readonly onData = (chunk: Buffer) => {
    const sink = this.sink;
    if (sink) sink.data(chunk);
    else this.parser.parse(chunk, this.deliverMessage);
  };
  private readonly onDrain = () => this.sink?.drain();
  private socketClosed = false;
  private closedCallbacks: (() => void)[] = [];
  private readonly onClose = () => {
    this.socketClosed = true;
    for (const cb of this.closedCallbacks.splice(0)) cb();
    this.fail(connectionFailure('the upstream server closed the connection'));
    const sink = this.sink;
    if (sink) sink.closed();
    else this.onIdleClose?.();
  };
  // A 'close' always follows: the failure is only recorded here.
  private readonly onError = (err: Error) => this.fail(connectionFailure(`upstream connection error: ${err.message}`));

  constructor(readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('drain', this.onDrain);
    socket.once('close', this.onClose);
    socket.on('error', this.onError);
  }

  private deliver(m: BackendMessage): void {
    const w = this.waiter;
    this.waiter = null;
    if (w) w.resolve(m);
    else this.queue.push(m);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(err);
  }

  /** False once the socket closed or failed. */
  get alive(): boolean {
    return !this.failure && !this.socket.destroyed;
  }

  /** True when the server sent something nobody asked for yet (an idle backend should not). */
  get hasPendingMessages(): boolean {
    return this.queue.length > 0;
  }

  /** The next message from the server while attached. */
  next(): Promise<BackendMessage> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  send(buf: Buffer): void {
    this.socket.write(buf);
  }

  /**
   * Reads the rest of the startup phase (ParameterStatus, BackendKeyData, notices) up to ReadyForQuery.
   * A server ErrorResponse rejects with it as a PgError.
   */
  async readUntilReady(): Promise<void> {
    let error: PgError | null = null;
    for (;;) {
      const m = (await this.next()) as Message;
      switch (m.name) {
        case 'parameterStatus':
          this.parameters.set(m.parameterName as string, m.parameterValue as string);
          break;
        case 'backendKeyData':
          this.key = { processId: m.processID as number, secretKey: m.secretKey as number };
          break;
        case 'error':
          error ??= backendError(m);
          // A FATAL ends the connection without a ReadyForQuery.
          if (error.severity === 'FATAL') throw error;
          break;
        case 'readyForQuery':
          if (error) throw error;
          return;
        default:
          break; // notices, row data and command tags of the proxy's own statements
      }
    }
  }

  /** Runs the proxy's own SQL (simple protocol) while attached; rejects with the server's error after ReadyForQuery. */
  query(sql: string): Promise<void> {
    this.send(serialize.query(sql));
    return this.readUntilReady();
  }

  /** Calls `cb` once the socket has closed (at once if it has). */
  whenClosed(cb: () => void): void {
    if (this.socketClosed) cb();
    else this.closedCallbacks.push(cb);
  }

  /** Hands the socket's events to a relay; null takes them back for parsing (resets, the pool's idle watch). */
  relayTo(sink: BackendSink | null): void {
    this.sink = sink;
    // A relay may have paused it for backpressure (resume() on a flowing socket still costs a tick).
    if (!sink && this.socket.isPaused()) this.socket.resume();
  }

  /** Says Terminate (so the server logs a clean exit) and closes. */
  close(): void {
    if (this.socket.destroyed) return;
    this.sink = null;
    this.onIdleClose = null;
    this.socket.end(TERMINATE);
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}

/** A backend ErrorResponse, as an error for the client (the server's SQLSTATE is kept). */
export function backendError(m: BackendMessage): PgError {
  const e = m as BackendMessage & { code?: string; message?: string; severity?: string; detail?: string; hint?: string };
  const severity = e.severity === 'ERROR' ? 'ERROR' : 'FATAL';
  return new PgError(e.code ?? '08006', e.message ?? 'upstream error', severity, e.detail, e.hint);
}

/**
 * Opens a backend and logs it in (`login` answers its authentication); `connected` is told how many seconds
 * it took. A backend whose login fails is closed. The server must answer each step within `timeoutMs`, the
 * login's included unless `clientAnswers` (a relayed login waits for the client, under its startup timeout).
 */
export async function openBackend(
  target: UpstreamTarget,
  startupMessage: Buffer,
  timeoutMs: number,
  login: (b: BackendConnection) => Promise<void>,
  connected: (seconds: number) => void,
  clientAnswers = false,
): Promise<BackendConnection> {
  const started = performance.now();
  const backend = await connectBackend(target, startupMessage, timeoutMs);
  if (clientAnswers) backend.socket.setTimeout(0);
  try {
    await login(backend);
  } catch (err) {
    backend.close();
    throw err;
  }
  backend.socket.setTimeout(0);
  connected((performance.now() - started) / 1000);
  return backend;
}

/** Opens a backend connection and sends its StartupMessage. */
export async function connectBackend(target: UpstreamTarget, startup: Buffer, timeoutMs: number): Promise<BackendConnection> {
  const conn = new BackendConnection(await openBackendSocket(target, timeoutMs));
  conn.send(startup);
  return conn;
}

/** Forwards a cancel to the backend's own key, on a connection of its own, as the protocol requires. */
export async function sendCancelRequest(target: UpstreamTarget, processId: number, secretKey: number, timeoutMs: number): Promise<void> {
  const socket = await openBackendSocket(target, timeoutMs);
  await new Promise<void>((resolve) => {
    socket.once('close', () => resolve());
    socket.once('error', () => resolve());
    socket.end(serialize.cancel(processId, secretKey));
    setTimeout(() => socket.destroy(), timeoutMs).unref();
  });
}
