// The relay in transaction mode: a backend from the pool per transaction, named prepared statements carried across backends.
import type net from 'node:net';
import type { ClientState } from './activity.js';
import { ClientStream } from './client-stream.js';
import { tagEffect } from './command-tags.js';
import { PgError } from './errors.js';
import { Backend, Frontend } from './protocol/constants.js';
import { BackendWriter, errorResponseFor } from './protocol/writer.js';
import { endGracefully, type RelayEnd, type RelayStats } from './relay.js';
import { ServerAnswers } from './server-answers.js';
import type { BackendConnection, BackendSink } from './upstream.js';

/** What the relay needs from its session: backends for transactions, and a place to give them back. */
export interface TransactionLink {
  /** A backend for the next transaction with the client's settings applied: at once when one is idle and ready. */
  backendForTransaction(): BackendConnection | Promise<BackendConnection>;
  /** Gives the backend back after ReadyForQuery(idle); `dirty` when the client changed its session state. */
  transactionEnded(backend: BackendConnection, dirty: boolean): void;
}

const HEADER = 5;
const IDLE = 0x49; // 'I'
const STATUS_STATE: Record<number, Exclude<ClientState, 'login' | 'active'>> = {
  0x49: 'idle',
  0x54: 'idle_in_transaction',
  0x45: 'idle_in_transaction_aborted',
};

const CAPTURE = 64;
const STASH_LIMIT = 64 * 1024;
const SQLSTATE_FEATURE_NOT_SUPPORTED = Buffer.from('C0A000\0');

/** The pieces of one server chunk to write: filled and written within one synchronous call, so one serves all relays. */
const SERVER_OUT: Buffer[] = [];

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
  transactions = 0;
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
  /** The client changed session state on this backend (SET, LISTEN, ...): it is reset before reuse. */
  private dirty = false;
  private readies = 0;
  private status = IDLE;
  private sinceReady = 0;

  // Server framing, and a few body bytes captured for CommandComplete tags and ErrorResponse codes.
  /** Allocated at the first header split across chunks (idle clients are many; splits are rare). */
  private sHeader: Buffer | null = null;
  private sHeaderSeen = 0;
  private sRemaining = 0;
  private sType = 0;
  private sLastType = 0;
  private readonly capture = Buffer.alloc(CAPTURE);
  private captureLength = 0;
  private captureWant = 0;
  private wantStatus = false;

  /** A warning for the client about something transaction mode cannot carry, sent at the next boundary. */
  private pendingNotice: string | null = null;

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
    this.end('server_closed');
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
    if (this.backend && (this.clientStream.syncs > this.readies || this.sLastType !== Backend.ReadyForQuery || this.sHeaderSeen > 0 || this.sRemaining > 0)) {
      return 'active';
    }
    if (this.acquiring) return 'waiting';
    return STATUS_STATE[this.status] ?? 'idle';
  }

  /** The backend linked when the relay ended, with where it stands (null: half done, close it). */
  takeBackend(): { backend: BackendConnection; state: 'idle' | 'idle_in_transaction' | null; dirty: boolean } | null {
    const backend = this.backend;
    if (!backend) return null;
    this.unlink(backend);
    const violated = this.ended === 'client_protocol_violation' || this.ended === 'server_protocol_violation';
    const clean = !violated && this.atClientBoundary() && this.clientStream.unsynced === 0 && this.atServerBoundary() && this.clientStream.syncs === this.readies;
    const state = clean ? (this.status === IDLE ? 'idle' : 'idle_in_transaction') : null;
    return { backend, state, dirty: this.dirty };
  }

  end(why: RelayEnd, lastWords?: Buffer): void {
    if (this.ended) return;
    this.ended = why;
    this.client.off('data', onClientData);
    this.client.off('drain', onClientDrain);
    this.client.off('close', onClientClose);
    if (why === 'client_closed') this.client.destroy();
    else endGracefully(this.client, lastWords && this.atServerBoundary() ? lastWords : undefined);
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
    if (!(got instanceof Promise)) {
      this.linked(got);
      this.fromClient(first);
      return;
    }
    this.stash = [first];
    this.stashed = first.length;
    this.acquiring = true;
    got.then(
      (backend) => {
        this.acquiring = false;
        if (this.ended) return this.session.transactionEnded(backend, false);
        this.linked(backend);
        const stash = this.stash!;
        this.stash = null;
        for (const chunk of stash) if (this.backend) this.fromClient(chunk);
        if (this.client.isPaused()) this.client.resume();
      },
      (err: PgError) => {
        this.acquiring = false;
        this.refuse(err);
      },
    );
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
    this.dirty = false;
    this.sinceReady = 0;
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
    if (!backend || this.status !== IDLE || this.sLastType !== Backend.ReadyForQuery) return;
    if (this.clientStream.syncs !== this.readies || this.clientStream.unsynced > 0 || !this.atClientBoundary() || !this.atServerBoundary()) return;
    this.unlink(backend);
    this.session.transactionEnded(backend, this.dirty);
  }

  private atClientBoundary(): boolean {
    return this.clientStream.atBoundary;
  }

  private atServerBoundary(): boolean {
    return this.sHeaderSeen === 0 && this.sRemaining === 0;
  }

  /** One write for the usual single piece; several are corked so they leave together. */
  private write(to: net.Socket, from: net.Socket, pieces: Buffer[]): void {
    let ok = true;
    if (pieces.length === 1) ok = to.write(pieces[0]!);
    else {
      to.cork();
      for (const p of pieces) if (p.length > 0) ok = to.write(p) && ok;
      to.uncork();
    }
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
    if (!this.backend || (this.clientStream.syncs === this.readies && this.atServerBoundary())) this.end('client_terminated');
  }

  // ---- server -> client ----

  private fromServer(chunk: Buffer): void {
    this.stats.bytesOut += chunk.length;
    const out = SERVER_OUT;
    out.length = 0;
    let pass = 0;
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.sRemaining > 0) {
        if (this.wantStatus) {
          this.status = chunk[i]!;
          this.wantStatus = false;
          if (this.status === IDLE && this.sinceReady > 0) this.transactions++;
          this.sinceReady = 0;
        }
        const step = Math.min(this.sRemaining, n - i);
        if (this.captureLength < this.captureWant) {
          const take = Math.min(step, this.captureWant - this.captureLength);
          chunk.copy(this.capture, this.captureLength, i, i + take);
          this.captureLength += take;
          if (this.captureLength === this.captureWant) this.captured();
        }
        this.sRemaining -= step;
        i += step;
      } else if (this.sHeaderSeen === 0 && n - i >= HEADER) {
        const length = chunk.readInt32BE(i + 1);
        if (length < 4) return this.end('server_protocol_violation');
        if (this.serverHeader(chunk[i]!, length)) {
          out.push(chunk.subarray(pass, i));
          pass = i + HEADER;
        }
        i += HEADER;
      } else {
        if (this.sHeaderSeen === 0) out.push(chunk.subarray(pass, i));
        (this.sHeader ??= Buffer.alloc(HEADER))[this.sHeaderSeen++] = chunk[i++]!;
        pass = i;
        if (this.sHeaderSeen === HEADER) {
          this.sHeaderSeen = 0;
          const length = this.sHeader!.readInt32BE(1);
          if (length < 4) return this.end('server_protocol_violation');
          if (!this.serverHeader(this.sHeader![0]!, length)) out.push(Buffer.from(this.sHeader!));
        }
      }
    }
    if (this.sHeaderSeen === 0) out.push(pass === 0 ? chunk : chunk.subarray(pass, n));
    if (this.pendingNotice && this.atServerBoundary()) {
      out.push(new BackendWriter(128).noticeResponse({ severity: 'WARNING', code: '0A000', message: this.pendingNotice }).flush());
      this.pendingNotice = null;
    }
    this.write(this.client, this.backend!.socket, out);
    this.maybeRelease();
    if (this.clientStream.terminated) this.closeIfAnswered();
  }

  /** Reads one server header; true when the message (a bodiless answer to the proxy's own Close or Parse) is dropped. */
  private serverHeader(type: number, length: number): boolean {
    this.sType = type;
    this.sLastType = type;
    this.sRemaining = length - 4;
    this.captureLength = 0;
    this.captureWant = 0;
    switch (type) {
      case Backend.ReadyForQuery:
        this.readies++;
        this.wantStatus = this.sRemaining > 0;
        this.answers.ready();
        return false;
      case 0x31: // ParseComplete
      case 0x33: // CloseComplete
        this.sinceReady++;
        return this.answers.completed() && length === 4;
      case Backend.ErrorResponse:
        // The server skips to the next Sync: what it owed for the rest of this batch never comes.
        if (this.backend) this.answers.failed(this.backend.statements.names);
        this.captureWant = Math.min(CAPTURE, this.sRemaining);
        break;
      case 0x43: // CommandComplete
        this.captureWant = Math.min(CAPTURE, this.sRemaining);
        break;
      case Backend.ParameterStatus:
        this.dirty = true;
        break;
    }
    this.sinceReady++;
    if (this.captureWant === 0 && (type === Backend.ErrorResponse || type === 0x43)) this.captured();
    return false;
  }

  /** A CommandComplete tag or the start of an ErrorResponse, whole. */
  private captured(): void {
    const bytes = this.capture.subarray(0, this.captureLength);
    if (this.sType === 0x43) {
      const nul = bytes.indexOf(0);
      const effect = tagEffect(bytes.toString('latin1', 0, nul < 0 ? bytes.length : nul));
      if (!effect) return;
      this.dirty = true;
      if (effect.forgetsStatements) this.backend?.statements.forget();
      this.pendingNotice ??= effect.warning;
    } else if (bytes.indexOf(SQLSTATE_FEATURE_NOT_SUPPORTED) >= 0 && this.backend) {
      // "cached plan must not change result type" after a migration: every backend of the pool prepares
      // afresh, so the tenant's clients see the error once, not once per backend.
      this.backend.statements.expire();
      this.dirty = true;
    }
  }
}
