// The relay in transaction mode: a backend from the pool per transaction, named prepared statements carried across backends.
import type net from 'node:net';
import type { ClientState } from './activity.js';
import { BackendWriter, errorResponseFor } from './protocol/writer.js';
import { bindStatementName, closeStatementFrame, describedName, parseName, renamed } from './protocol/extended.js';
import { Backend, Frontend } from './protocol/constants.js';
import { endGracefully, type RelayEnd, type RelayStats } from './relay.js';
import { ClientStatements, type Statement } from './statements.js';
import { PgError, protocolViolation } from './errors.js';
import type { BackendConnection, BackendSink } from './upstream.js';

/** What the relay needs from its session: backends for transactions, and a place to give them back. */
export interface TransactionLink {
  /** A backend for the next transaction with the client's settings applied: at once when one is idle and ready. */
  acquire(): BackendConnection | Promise<BackendConnection>;
  /** Gives the backend back after ReadyForQuery(idle); `dirty` when the client changed its session state. */
  release(backend: BackendConnection, dirty: boolean): void;
}

const HEADER = 5;
const IDLE = 0x49; // 'I'
const STATUS_STATE: Record<number, Exclude<ClientState, 'login' | 'active'>> = {
  0x49: 'idle',
  0x54: 'idle_in_transaction',
  0x45: 'idle_in_transaction_aborted',
};

/**
 * What the server owes for each Parse and Close sent (and each sync point), in order: the answers to the
 * proxy's own Close and Parse are not the client's and are dropped. `statement` names a Parse whose
 * failure means the backend does not have it after all.
 */
interface Expected {
  readonly swallow: boolean;
  readonly sync: boolean;
  readonly statement: string | null;
}
const PASS: Expected = { swallow: false, sync: false, statement: null };
const SWALLOW: Expected = { swallow: true, sync: false, statement: null };
const SYNC: Expected = { swallow: false, sync: true, statement: null };

/** Command tags after which the backend's session state is the client's, not the pool's: reset before reuse. */
const DIRTY_TAGS = new Set([
  'SET', 'RESET', 'LISTEN', 'PREPARE', 'DECLARE CURSOR', 'LOAD', 'DISCARD ALL', 'DISCARD PLANS', 'DEALLOCATE', 'DEALLOCATE ALL',
  'DISCARD TEMP', 'DISCARD SEQUENCES',
  // Could be TEMP: a temporary table would shadow the next client's table of that name.
  'CREATE TABLE', 'CREATE VIEW', 'CREATE SEQUENCE',
]);
/** Of those, the ones that do not carry over to the next transaction on another backend: the client is told. */
const SESSION_ONLY: Record<string, string> = {
  LISTEN: 'LISTEN does not work with pool_mode transaction: notifications stop when this transaction ends',
  PREPARE: 'SQL PREPARE does not survive pool_mode transaction: use protocol-level prepared statements (Parse/Bind)',
  'DECLARE CURSOR': 'cursors WITH HOLD do not survive pool_mode transaction',
};
const CAPTURE = 64;
/** Room for a message's names (type, length, portal and statement names); PostgreSQL keeps 63 bytes of a name. */
const GATHER_PREFIX = 1024;
/** The largest named Parse kept for preparing again on other backends. */
const MAX_NAMED_PARSE = 8 * 1024 * 1024;
const STASH_LIMIT = 64 * 1024;
const STATEMENT = 0x53; // 'S' in Describe and Close
const SQLSTATE_FEATURE_NOT_SUPPORTED = Buffer.from('C0A000\0');

export class TransactionRelay {
  readonly stats: RelayStats = { bytesIn: 0, bytesOut: 0 };
  /** Query and Execute messages from the client. */
  queries = 0;
  /** Transactions the server finished (ReadyForQuery back to idle after other messages). */
  transactions = 0;
  readonly done: Promise<RelayEnd>;
  private finish!: (why: RelayEnd) => void;
  private ended: RelayEnd | null = null;
  /** The backend linked for the current transaction, if any. */
  backend: BackendConnection | null = null;
  private acquiring = false;
  /** Client bytes that arrived while no backend was linked. */
  private stash: Buffer[] = [];
  private stashed = 0;
  private readonly statements = new ClientStatements();
  private readonly expected: Expected[] = [];
  /** The client changed session state on this backend (SET, LISTEN, ...): it is reset before reuse. */
  private dirty = false;
  private syncs = 0;
  private readies = 0;
  private status = IDLE;
  private sinceReady = 0;

  // Client framing: a header seen in part, body bytes to pass, or a whole message being gathered.
  private readonly cHeader = Buffer.alloc(HEADER);
  private cHeaderSeen = 0;
  private cRemaining = 0;
  /** A Parse, Bind, Describe or Close being gathered across chunks (see startGather). */
  private gather: Buffer | null = null;
  private gathered = 0;
  private gatherTotal = 0;
  private unsynced = 0;
  private terminated = false;

  // Server framing, and a few body bytes captured for CommandComplete tags and ErrorResponse codes.
  private readonly sHeader = Buffer.alloc(HEADER);
  private sHeaderSeen = 0;
  private sRemaining = 0;
  private sType = 0;
  private sLastType = 0;
  private readonly capture = Buffer.alloc(CAPTURE);
  private captureLength = 0;
  private captureWant = 0;
  private wantStatus = false;
  private readonly out: Buffer[] = [];
  private readonly writer = new BackendWriter(64);
  /** A warning for the client about something transaction mode cannot carry, sent at the next boundary. */
  private pendingNotice: string | null = null;

  private readonly onClientData = (chunk: Buffer): void => {
    this.stats.bytesIn += chunk.length;
    if (this.backend) this.fromClient(chunk);
    else if (this.acquiring) this.hold(chunk);
    else this.link(chunk);
  };
  private readonly onClientDrain = () => this.backend?.socket.resume();
  private readonly onClientClose = () => this.end('client_closed');
  private readonly serverSink: BackendSink = {
    data: (chunk) => this.fromServer(chunk),
    drain: () => this.client.resume(),
    closed: () => this.end('server_closed'),
  };

  constructor(
    readonly client: net.Socket,
    private readonly session: TransactionLink,
  ) {
    this.done = new Promise((resolve) => (this.finish = resolve));
  }

  start(pending: Buffer): void {
    this.client.on('data', this.onClientData);
    this.client.on('drain', this.onClientDrain);
    this.client.on('close', this.onClientClose);
    this.client.on('error', this.onClientClose);
    if (pending.length > 0) this.onClientData(pending);
    this.client.resume();
  }

  get clientState(): Exclude<ClientState, 'login'> {
    if (this.backend && (this.syncs > this.readies || this.sLastType !== Backend.ReadyForQuery || this.sHeaderSeen > 0 || this.sRemaining > 0)) {
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
    const clean = !violated && this.atClientBoundary() && this.unsynced === 0 && this.atServerBoundary() && this.syncs === this.readies;
    const state = clean ? (this.status === IDLE ? 'idle' : 'idle_in_transaction') : null;
    return { backend, state, dirty: this.dirty };
  }

  end(why: RelayEnd, lastWords?: Buffer): void {
    if (this.ended) return;
    this.ended = why;
    this.client.off('data', this.onClientData);
    this.client.off('drain', this.onClientDrain);
    this.client.off('close', this.onClientClose);
    if (why === 'client_closed') this.client.destroy();
    else endGracefully(this.client, lastWords && this.atServerBoundary() ? lastWords : undefined);
    this.finish(why);
  }

  /** Ends the client with an error (a pool timeout, an unreachable server) at a message boundary. */
  private refuse(err: PgError): void {
    this.end('server_closed', errorResponseFor(err));
  }

  /** Links a backend for the transaction `first` starts: at once when one is ready, else with the client paused. */
  private link(first: Buffer): void {
    if (this.ended) return;
    // A client that only says goodbye needs no backend.
    if (this.atClientBoundary() && first[0] === Frontend.Terminate) {
      this.end('client_terminated');
      return;
    }
    const got = this.session.acquire();
    if (!(got instanceof Promise)) {
      this.linked(got);
      this.fromClient(first);
      return;
    }
    this.stash.push(first);
    this.stashed = first.length;
    this.acquiring = true;
    got.then(
      (backend) => {
        this.acquiring = false;
        if (this.ended) return this.session.release(backend, false);
        this.linked(backend);
        const stash = this.stash;
        this.stash = [];
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
    this.stash.push(chunk);
    this.stashed += chunk.length;
    if (this.stashed > STASH_LIMIT) this.client.pause();
  }

  private linked(backend: BackendConnection): void {
    this.backend = backend;
    this.dirty = false;
    this.sinceReady = 0;
    // Nothing is owed between transactions; a stale expectation must never swallow the next backend's answers.
    this.expected.length = 0;
    backend.relayTo(this.serverSink);
  }

  private unlink(backend: BackendConnection): void {
    backend.relayTo(null);
    this.backend = null;
  }

  /** After ReadyForQuery(idle) with nothing more owed either way, the backend goes back to the pool. */
  private maybeRelease(): void {
    const backend = this.backend;
    if (!backend || this.status !== IDLE || this.sLastType !== Backend.ReadyForQuery) return;
    if (this.syncs !== this.readies || this.unsynced > 0 || !this.atClientBoundary() || !this.atServerBoundary()) return;
    this.unlink(backend);
    this.session.release(backend, this.dirty);
  }

  private atClientBoundary(): boolean {
    return this.cHeaderSeen === 0 && this.cRemaining === 0 && !this.gather;
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
    if (this.terminated) return;
    try {
      this.relayClientChunk(chunk);
    } catch (err) {
      // Whatever went wrong, it ends this client only.
      const pgErr = err instanceof PgError ? err : new PgError('XX000', 'internal error in pgtenant while relaying');
      this.end('client_protocol_violation', errorResponseFor(pgErr));
      return;
    }
    if (this.terminated) this.closeIfAnswered();
  }

  /** After the client's Terminate: once everything it sent before is answered, the proxy closes, as PostgreSQL would. */
  private closeIfAnswered(): void {
    if (!this.backend || (this.syncs === this.readies && this.atServerBoundary())) this.end('client_terminated');
  }

  private relayClientChunk(chunk: Buffer): void {
    const out = this.out;
    out.length = 0;
    let pass = 0; // start of bytes forwarded unchanged
    let i = 0;
    const n = chunk.length;
    while (i < n && !this.terminated) {
      if (this.gather) {
        const take = Math.min(this.gather.length - this.gathered, n - i);
        chunk.copy(this.gather, this.gathered, i, i + take);
        this.gathered += take;
        i += take;
        pass = i;
        this.gatherStep(out);
      } else if (this.cRemaining > 0) {
        const step = Math.min(this.cRemaining, n - i);
        this.cRemaining -= step;
        i += step;
      } else if (this.cHeaderSeen === 0 && n - i >= HEADER) {
        const type = chunk[i]!;
        const length = chunk.readInt32BE(i + 1);
        if (length < 4) throw protocolViolation('invalid message length');
        if (!needsBody(type)) {
          this.clientHeader(type, i, out, chunk, pass);
          if (this.terminated) break;
          this.cRemaining = length - 4;
          i += HEADER;
        } else if (n - i >= 1 + length) {
          // The whole message is here: read in place, and cut out of the chunk only when it changes.
          const pieces = this.clientMessage(chunk.subarray(i, i + 1 + length));
          if (pieces) {
            out.push(chunk.subarray(pass, i), ...pieces);
            pass = i + 1 + length;
          }
          i += 1 + length;
        } else {
          out.push(chunk.subarray(pass, i));
          pass = i;
          this.startGather(length); // the branch above copies it in from here, header included
        }
      } else {
        // A header split across chunks: held back until whole, so a message that changes is never half sent.
        if (this.cHeaderSeen === 0) out.push(chunk.subarray(pass, i));
        this.cHeader[this.cHeaderSeen++] = chunk[i++]!;
        pass = i;
        if (this.cHeaderSeen === HEADER) {
          this.cHeaderSeen = 0;
          const type = this.cHeader[0]!;
          const length = this.cHeader.readInt32BE(1);
          if (length < 4) throw protocolViolation('invalid message length');
          if (needsBody(type)) {
            this.startGather(length);
            this.cHeader.copy(this.gather!, 0);
            this.gathered = HEADER;
            this.gatherStep(out);
          } else {
            this.clientHeader(type, -1, out, chunk, pass);
            if (this.terminated) break;
            out.push(Buffer.from(this.cHeader));
            this.cRemaining = length - 4;
          }
        }
      }
    }
    if (!this.terminated && this.cHeaderSeen === 0 && !this.gather) out.push(pass === 0 && i === n ? chunk : chunk.subarray(pass, i));
    this.write(this.backend!.socket, this.client, out);
  }

  /**
   * A Parse, Bind, Describe or Close that spans chunks is gathered only as far as its names: what follows
   * (parameter values, which may be large) passes through. A named Parse is the exception: it is kept whole,
   * to prepare it again on other backends, up to MAX_NAMED_PARSE.
   */
  private startGather(length: number): void {
    this.gatherTotal = 1 + length;
    this.gather = Buffer.allocUnsafe(Math.min(this.gatherTotal, GATHER_PREFIX));
    this.gathered = 0;
  }

  private gatherStep(out: Buffer[]): void {
    const view = this.gather!.subarray(0, this.gathered);
    const whole = this.gathered === this.gatherTotal;
    if (!whole && !namesComplete(view)) {
      if (this.gathered === this.gather!.length) throw protocolViolation('statement or portal name too long');
      return;
    }
    if (!whole && view[0] === Frontend.Parse && parseName(view).name !== '') {
      if (this.gatherTotal > MAX_NAMED_PARSE) {
        throw new PgError('54000', `prepared statement of ${this.gatherTotal} bytes is over the ${MAX_NAMED_PARSE} bytes pool_mode transaction keeps`);
      }
      if (this.gather!.length < this.gatherTotal) {
        const all = Buffer.allocUnsafe(this.gatherTotal);
        view.copy(all);
        this.gather = all;
      }
      return;
    }
    this.gather = null;
    out.push(...(this.clientMessage(view) ?? [view]));
    this.cRemaining = this.gatherTotal - view.length;
  }

  /** Headers of messages passed on unread: counters, sync points, and Terminate (which stays with the proxy). */
  private clientHeader(type: number, at: number, out: Buffer[], chunk: Buffer, pass: number): void {
    if (type === Frontend.Query) this.queries++;
    switch (type) {
      case Frontend.Query:
      case Frontend.Sync:
      case Frontend.FunctionCall:
        this.syncs++;
        this.unsynced = 0;
        this.expected.push(SYNC);
        break;
      case Frontend.Terminate:
        if (at >= 0) out.push(chunk.subarray(pass, at));
        this.terminated = true;
        break;
      case Frontend.Execute:
        this.queries++;
        this.unsynced++;
        break;
      case Frontend.Flush:
      case Frontend.CopyData:
      case Frontend.CopyDone:
      case Frontend.CopyFail:
        break;
      default:
        this.unsynced++;
    }
  }

  /**
   * A whole Parse, Bind, Describe or Close. Returns what goes to the server instead of it (the statement
   * renamed, prepared first on a backend that lacks it), or null when it passes unchanged.
   */
  private clientMessage(frame: Buffer): Buffer[] | null {
    this.unsynced++;
    switch (frame[0]) {
      case Frontend.Parse: {
        const statement = this.statements.define(frame);
        if (!statement) {
          this.expected.push(PASS);
          return null;
        }
        // Close first: the backend may hold this name already, from this or another client of the tenant.
        this.expected.push(SWALLOW, { swallow: false, sync: false, statement: statement.server });
        this.backend!.prepared.add(statement.server);
        return [closeStatementFrame(statement.server), statement.parse];
      }
      case Frontend.Bind: {
        const at = bindStatementName(frame);
        const statement = at.name === '' ? undefined : this.statements.get(at.name);
        return statement ? [...this.prepare(statement), renamed(frame, at, statement.server)] : null;
      }
      case Frontend.Describe: {
        const at = describedName(frame);
        const statement = at.kind === STATEMENT && at.name !== '' ? this.statements.get(at.name) : undefined;
        return statement ? [...this.prepare(statement), renamed(frame, at, statement.server)] : null;
      }
      default: {
        // Close, passed on as it is: the server has no statement of the client's name, and closing none is no error.
        const at = describedName(frame);
        if (at.kind === STATEMENT) this.statements.delete(at.name);
        this.expected.push(PASS);
        return null;
      }
    }
  }

  /** The Close and Parse that give this backend the statement, when it does not have it yet. */
  private prepare(statement: Statement): Buffer[] {
    const backend = this.backend!;
    if (backend.prepared.has(statement.server)) return [];
    this.expected.push(SWALLOW, { swallow: true, sync: false, statement: statement.server });
    backend.prepared.add(statement.server);
    return [closeStatementFrame(statement.server), statement.parse];
  }

  // ---- server -> client ----

  private fromServer(chunk: Buffer): void {
    this.stats.bytesOut += chunk.length;
    const out = this.out;
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
        this.sHeader[this.sHeaderSeen++] = chunk[i++]!;
        pass = i;
        if (this.sHeaderSeen === HEADER) {
          this.sHeaderSeen = 0;
          const length = this.sHeader.readInt32BE(1);
          if (length < 4) return this.end('server_protocol_violation');
          if (!this.serverHeader(this.sHeader[0]!, length)) out.push(Buffer.from(this.sHeader));
        }
      }
    }
    if (this.sHeaderSeen === 0) out.push(pass === 0 ? chunk : chunk.subarray(pass, n));
    if (this.pendingNotice && this.atServerBoundary()) {
      out.push(this.writer.noticeResponse({ severity: 'WARNING', code: '0A000', message: this.pendingNotice }).flush());
      this.pendingNotice = null;
    }
    this.write(this.client, this.backend!.socket, out);
    this.maybeRelease();
    if (this.terminated) this.closeIfAnswered();
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
        while (this.expected.length > 0 && !this.expected.shift()!.sync);
        return false;
      case 0x31: // ParseComplete
      case 0x33: { // CloseComplete
        const e = this.expected[0];
        if (!e || e.sync) return false;
        this.expected.shift();
        this.sinceReady++;
        return e.swallow && length === 4;
      }
      case Backend.ErrorResponse:
        // The server skips to the next Sync: what it owed for the rest of this batch never comes.
        while (this.expected.length > 0 && !this.expected[0]!.sync) {
          const e = this.expected.shift()!;
          if (e.statement) this.backend?.prepared.delete(e.statement);
        }
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
      const tag = bytes.toString('latin1', 0, nul < 0 ? bytes.length : nul);
      if (!DIRTY_TAGS.has(tag)) return;
      this.dirty = true;
      if (tag.startsWith('DISCARD') || tag.startsWith('DEALLOCATE')) this.backend?.prepared.clear();
      this.pendingNotice ??= SESSION_ONLY[tag] ?? null;
    } else if (bytes.indexOf(SQLSTATE_FEATURE_NOT_SUPPORTED) >= 0) {
      // "cached plan must not change result type" after a migration: prepare afresh next time.
      this.backend?.prepared.clear();
      this.dirty = true;
    }
  }
}

/** True when a gathered prefix holds every name the message carries. */
function namesComplete(view: Buffer): boolean {
  switch (view[0]) {
    case Frontend.Parse:
      return view.indexOf(0, HEADER) >= 0;
    case Frontend.Bind: {
      const portalEnd = view.indexOf(0, HEADER);
      return portalEnd >= 0 && view.indexOf(0, portalEnd + 1) >= 0;
    }
    default:
      return view.length > HEADER + 1 && view.indexOf(0, HEADER + 1) >= 0;
  }
}

/** The client messages whose bodies the relay reads: those that name prepared statements. */
function needsBody(type: number): boolean {
  return type === Frontend.Parse || type === Frontend.Bind || type === Frontend.Describe || type === Frontend.Close;
}
