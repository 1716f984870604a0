// The relay in transaction mode: a backend from the pool per transaction, named prepared statements carried across backends.
import type net from 'node:net';
import type { ClientState } from './activity.js';
import { ClientStream } from './client-stream.js';
import { PgError } from './errors.js';
import { Backend, Frontend } from './protocol/constants.js';
import type { Pieces } from './pieces.js';
import { errorResponseFor } from './protocol/writer.js';
import { endGracefully, serverGone, type RelayEnd, type RelayStats } from './relay.js';
import { ServerAnswers } from './server-answers.js';
import { ServerStream } from './server-stream.js';
import type { BackendConnection, BackendSink } from './upstream.js';

/** What the relay needs from its session: backends for transactions, and a place to give them back. */
export interface TransactionLink {
  /**
   * A backend for the next transaction with the client's settings applied: at once when one is idle and ready,
   * else null, and the relay's backendReady or backendFailed is called later (never from inside this call).
   */
  backendForTransaction(): BackendConnection | null;
  /** Gives the backend back after ReadyForQuery(idle); `dirty` when the client changed its session state. */
  transactionEnded(backend: BackendConnection, dirty: boolean): void;
}

const IDLE = 0x49; // 'I'
const STATUS_STATE: Record<number, Exclude<ClientState, 'login' | 'active'>> = {
  0x49: 'idle',
  0x54: 'idle_in_transaction',
  0x45: 'idle_in_transaction_aborted',
};

const STASH_LIMIT = 64 * 1024;
/** Up to this many bytes, a chunk cut into pieces is written as one copy. */
const COALESCE_LIMIT = 16 * 1024;

const RELAY = Symbol('pgtenant.relay');
type RelayedSocket = net.Socket & { [RELAY]: TransactionRelay };
function onClientData(this: RelayedSocket, chunk: Buffer): void {
  this[RELAY].clientData(chunk);
}
function onClientDrain(this: RelayedSocket): void {
  this[RELAY].backend?.socket.resume();
}
function onClientClose(this: RelayedSocket): void {
  this[RELAY].end('client_closed');
}

export class TransactionRelay implements BackendSink {
  readonly stats: RelayStats = { bytesIn: 0, bytesOut: 0 };
  /** Query and Execute messages from the client. */
  get queries(): number {
    return this.clientStream.queries;
  }
  /** Transactions the server finished (ReadyForQuery back to idle after other messages). */
  get transactions(): number {
    return this.serverStream.transactions;
  }
  readonly done: Promise<RelayEnd>;
  private finish!: (why: RelayEnd) => void;
  private ended: RelayEnd | null = null;
  /** The backend linked for the current transaction, if any. */
  backend: BackendConnection | null = null;
  private acquiring = false;
  /** Client bytes that arrived while no backend was linked. */
  private stash: Buffer[] | null = null;
  private stashed = 0;
  private readonly answers = new ServerAnswers();
  private readonly clientStream = new ClientStream(this.answers);
  private readonly serverStream = new ServerStream(this.answers);

  constructor(
    readonly client: net.Socket,
    private readonly session: TransactionLink,
  ) {
    this.done = new Promise((resolve) => (this.finish = resolve));
  }

  /** Client bytes: relayed when a backend is linked, else they start the next transaction. */
  clientData(chunk: Buffer): void {
    this.stats.bytesIn += chunk.length;
    if (this.backend) this.fromClient(chunk);
    else if (this.acquiring) this.hold(chunk);
    else this.link(chunk);
  }

  // The linked backend's socket events (BackendSink).
  data(chunk: Buffer): void {
    this.fromServer(chunk);
  }

  drain(): void {
    this.client.resume();
  }

  closed(): void {
    this.end('server_closed', serverGone(this.serverStream.lastType));
  }

  start(pending: Buffer): void {
    // Shared listeners that find their relay on the socket: no closures per client, and idle clients are many.
    (this.client as RelayedSocket)[RELAY] = this;
    this.client.on('data', onClientData);
    this.client.on('drain', onClientDrain);
    this.client.on('close', onClientClose);
    this.client.on('error', onClientClose);
    if (pending.length > 0) this.clientData(pending);
    this.client.resume();
  }

  get clientState(): Exclude<ClientState, 'login'> {
    const server = this.serverStream;
    if (this.backend && (this.clientStream.syncs > server.readies || server.lastType !== Backend.ReadyForQuery || !server.atBoundary)) {
      return 'active';
    }
    if (this.acquiring) return 'waiting';
    return STATUS_STATE[server.status] ?? 'idle';
  }

  /** The backend linked when the relay ended, with where it stands (null: half done, close it). */
  takeBackend(): { backend: BackendConnection; state: 'idle' | 'idle_in_transaction' | null; dirty: boolean } | null {
    const backend = this.backend;
    if (!backend) return null;
    this.unlink(backend);
    const violated = this.ended === 'client_protocol_violation' || this.ended === 'server_protocol_violation';
    const server = this.serverStream;
    // An ErrorResponse after the last ReadyForQuery is a FATAL (pg_terminate_backend, a shutdown): the server is
    // going, though its close may not have arrived yet. Given back as clean, the next client would be the one to find out.
    const clean =
      !violated &&
      server.lastType !== Backend.ErrorResponse &&
      this.atClientBoundary() &&
      this.clientStream.unsynced === 0 &&
      server.atBoundary &&
      this.clientStream.syncs === server.readies;
    const state = clean ? (server.status === IDLE ? 'idle' : 'idle_in_transaction') : null;
    return { backend, state, dirty: server.dirty };
  }

  end(why: RelayEnd, lastWords?: Buffer): void {
    if (this.ended) return;
    this.ended = why;
    this.client.off('data', onClientData);
    this.client.off('drain', onClientDrain);
    this.client.off('close', onClientClose);
    if (why === 'client_closed') this.client.destroy();
    else endGracefully(this.client, lastWords && this.serverStream.atBoundary ? lastWords : undefined);
    this.finish(why);
  }

  /** Ends the client with an error (a pool timeout, an unreachable server) at a message boundary. */
  private refuse(err: PgError): void {
    this.end('server_closed', errorResponseFor(err));
  }

  /** Links a backend for the transaction `first` starts: at once when one is ready, else once the pool hands one over. */
  private link(first: Buffer): void {
    if (this.ended) return;
    // A client that only says goodbye needs no backend.
    if (this.atClientBoundary() && first[0] === Frontend.Terminate) {
      this.end('client_terminated');
      return;
    }
    const got = this.session.backendForTransaction();
    if (got) {
      this.linked(got);
      this.fromClient(first);
      return;
    }
    this.stash = [first];
    this.stashed = first.length;
    this.acquiring = true;
  }

  /** The backend the session asked for after a wait (handed over, opened, or given the client's settings). */
  backendReady(backend: BackendConnection): void {
    this.acquiring = false;
    if (this.ended) return this.session.transactionEnded(backend, false);
    this.linked(backend);
    const stash = this.stash!;
    this.stash = null;
    for (const chunk of stash) if (this.backend) this.fromClient(chunk);
    if (this.client.isPaused()) this.client.resume();
  }

  /** No backend for this transaction (a pool timeout, an unreachable server): the client is ended with the error. */
  backendFailed(err: Error): void {
    this.acquiring = false;
    this.refuse(err instanceof PgError ? err : new PgError('08006', err.message));
  }

  /**
   * Keeps bytes that arrive while the client waits for a backend. The client is paused only past a bound: a
   * waiting client usually sent one statement, and pausing and resuming a socket costs two system calls.
   */
  private hold(chunk: Buffer): void {
    this.stash!.push(chunk);
    this.stashed += chunk.length;
    if (this.stashed > STASH_LIMIT) this.client.pause();
  }

  private linked(backend: BackendConnection): void {
    this.backend = backend;
    this.serverStream.linked();
    // Nothing is owed between transactions; a stale expectation must never swallow the next backend's answers.
    this.answers.clear();
    backend.relayTo(this);
  }

  private unlink(backend: BackendConnection): void {
    backend.relayTo(null);
    this.backend = null;
  }

  /** After ReadyForQuery(idle) with nothing more owed either way, the backend goes back to the pool. */
  private maybeRelease(): void {
    const backend = this.backend;
    const server = this.serverStream;
    if (!backend || server.status !== IDLE || server.lastType !== Backend.ReadyForQuery) return;
    if (this.clientStream.syncs !== server.readies || this.clientStream.unsynced > 0 || !this.atClientBoundary() || !server.atBoundary) return;
    this.unlink(backend);
    this.session.transactionEnded(backend, server.dirty);
  }

  private atClientBoundary(): boolean {
    return this.clientStream.atBoundary;
  }

  /**
   * One write for the usual single piece. Several small ones (a renamed Bind among other messages) are copied
   * into one write, which costs less than a write each; large ones are corked so they leave together uncopied.
   */
  private write(to: net.Socket, from: net.Socket, pieces: Pieces): void {
    let ok = true;
    if (pieces.length === 1) ok = to.write(pieces.get(0));
    else if (pieces.length === 0) return;
    else if (pieces.size <= COALESCE_LIMIT) ok = to.write(pieces.concat());
    else {
      to.cork();
      for (let k = 0; k < pieces.length; k++) {
        const p = pieces.get(k);
        if (p.length > 0) ok = to.write(p) && ok;
      }
      to.uncork();
    }
    pieces.clear();
    if (!ok) from.pause();
  }

  // ---- client -> server ----

  /** A malformed message ends this client with 08P01; nothing it sends can take the proxy down. */
  private fromClient(chunk: Buffer): void {
    if (this.clientStream.terminated) return;
    const backend = this.backend!;
    // Another client of the pool may have found the plans stale since this backend's last chunk.
    backend.statements.refresh();
    try {
      this.write(backend.socket, this.client, this.clientStream.process(chunk, backend.statements.names));
    } catch (err) {
      // Whatever went wrong, it ends this client only.
      const pgErr = err instanceof PgError ? err : new PgError('XX000', 'internal error in pgtenant while relaying');
      this.end('client_protocol_violation', errorResponseFor(pgErr));
      return;
    }
    if (this.clientStream.terminated) this.closeIfAnswered();
  }

  /** After the client's Terminate: once everything it sent before is answered, the proxy closes, as PostgreSQL would. */
  private closeIfAnswered(): void {
    if (!this.backend || (this.clientStream.syncs === this.serverStream.readies && this.serverStream.atBoundary)) this.end('client_terminated');
  }

  // ---- server -> client ----

  private fromServer(chunk: Buffer): void {
    this.stats.bytesOut += chunk.length;
    const backend = this.backend!;
    const out = this.serverStream.process(chunk, backend.statements);
    if (!out) return this.end('server_protocol_violation');
    this.write(this.client, backend.socket, out);
    this.maybeRelease();
    if (this.clientStream.terminated) this.closeIfAnswered();
  }
}
