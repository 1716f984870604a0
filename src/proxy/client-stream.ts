// Transaction mode, client to server: frames the client's messages, renames its prepared statements, prepares them where missing.
import { PgError, protocolViolation } from './errors.js';
import { Pieces } from './pieces.js';
import { Frontend } from './protocol/constants.js';
import { bindStatementName, closeStatementFrame, describedName, parseName, renamed } from './protocol/extended.js';
import type { ServerAnswers } from './server-answers.js';
import { ClientStatements, type Statement } from './statements.js';

const HEADER = 5;
const NONE_PREPARED: Set<string> = new Set();
/** What process() returns: written and cleared by the caller before any other chunk is processed, so one serves all clients. */
const CLIENT_OUT = new Pieces();
const STATEMENT = 0x53; // 'S' in Describe and Close
/** Room first made for a message's names (type, length, portal and statement names) when it spans chunks. */
const GATHER_PREFIX = 1024;
/**
 * Names must end within this many bytes of the message's start, whether it comes whole or in pieces (PostgreSQL
 * sets no limit; this bounds what the proxy gathers per client, and a socket read is at most this long anyway).
 */
const MAX_NAMES = 64 * 1024;
/** The largest named Parse kept for preparing again on other backends. */
const MAX_NAMED_PARSE = 8 * 1024 * 1024;

/**
 * Only headers are read, except Parse, Bind, Describe and Close, whose names are read (in place when the
 * message is whole in the chunk) and rewritten when they name a prepared statement. Every Parse, Close and
 * sync point sent is recorded in `answers`, so the server side can tell the proxy's own answers apart.
 */
export class ClientStream {
  /** Query and Execute messages. */
  queries = 0;
  /** Query, Sync and FunctionCall messages: each is answered by one ReadyForQuery. */
  syncs = 0;
  /** Messages since the last sync point that still need one (Parse, Bind, ... without Sync yet). */
  unsynced = 0;
  /** The client said Terminate: nothing after it is read, and it never reaches a backend. */
  terminated = false;
  private readonly statements = new ClientStatements();
  /** The linked backend's statements, set by each process() call. */
  private prepared: Set<string> = NONE_PREPARED;
  // A header seen in part, body bytes to pass, or a message's names being gathered across chunks.
  /** Allocated at the first header split across chunks: most clients never have one, and idle ones are many. */
  private cHeader: Buffer | null = null;
  private cHeaderSeen = 0;
  private cRemaining = 0;
  private gather: Buffer | null = null;
  private gathered = 0;
  private gatherTotal = 0;

  constructor(private readonly answers: ServerAnswers) {}

  /** Between messages: nothing half read or half passed on. */
  get atBoundary(): boolean {
    return this.cHeaderSeen === 0 && this.cRemaining === 0 && !this.gather;
  }

  /**
   * What goes to the backend for this chunk, in order (the chunk itself when nothing changes). `prepared` is the
   * linked backend's set of statements. Throws a PgError on a malformed message.
   */
  process(chunk: Buffer, prepared: Set<string>): Pieces {
    this.prepared = prepared;
    const out = CLIENT_OUT;
    out.clear();
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
          if (1 + length > MAX_NAMES && !namesComplete(chunk.subarray(i, i + MAX_NAMES))) throw namesTooLong();
          const pieces = this.clientMessage(chunk, i, i + 1 + length);
          if (pieces) {
            out.add(chunk.subarray(pass, i));
            for (const piece of pieces) out.add(piece);
            pass = i + 1 + length;
          }
          i += 1 + length;
        } else {
          out.add(chunk.subarray(pass, i));
          pass = i;
          this.startGather(length); // the branch above copies it in from here, header included
        }
      } else {
        // A header split across chunks: held back until whole, so a message that changes is never half sent.
        if (this.cHeaderSeen === 0) out.add(chunk.subarray(pass, i));
        (this.cHeader ??= Buffer.alloc(HEADER))[this.cHeaderSeen++] = chunk[i++]!;
        pass = i;
        if (this.cHeaderSeen === HEADER) {
          this.cHeaderSeen = 0;
          const type = this.cHeader![0]!;
          const length = this.cHeader!.readInt32BE(1);
          if (length < 4) throw protocolViolation('invalid message length');
          if (needsBody(type)) {
            this.startGather(length);
            this.cHeader!.copy(this.gather!, 0);
            this.gathered = HEADER;
            this.gatherStep(out);
          } else {
            this.clientHeader(type, -1, out, chunk, pass);
            if (this.terminated) break;
            out.add(Buffer.from(this.cHeader!));
            this.cRemaining = length - 4;
          }
        }
      }
    }
    if (!this.terminated && this.cHeaderSeen === 0 && !this.gather) out.add(pass === 0 && i === n ? chunk : chunk.subarray(pass, i));
    return out;
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

  private gatherStep(out: Pieces): void {
    const view = this.gather!.subarray(0, this.gathered);
    const whole = this.gathered === this.gatherTotal;
    if (!whole && !namesComplete(view)) {
      if (this.gathered === this.gather!.length) this.growGather();
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
    for (const piece of this.clientMessage(view, 0, view.length) ?? [view]) out.add(piece);
    this.cRemaining = this.gatherTotal - view.length;
  }

  /** More room for names that have not ended yet: twice as much, up to MAX_NAMES. */
  private growGather(): void {
    const size = this.gather!.length;
    if (size >= MAX_NAMES) throw namesTooLong();
    const more = Buffer.allocUnsafe(Math.min(this.gatherTotal, size * 2, MAX_NAMES));
    this.gather!.copy(more, 0, 0, this.gathered);
    this.gather = more;
  }

  /** Headers of messages passed on unread: counters, sync points, and Terminate (which stays with the proxy). */
  private clientHeader(type: number, at: number, out: Pieces, chunk: Buffer, pass: number): void {
    if (type === Frontend.Query) this.queries++;
    switch (type) {
      case Frontend.Query:
      case Frontend.Sync:
      case Frontend.FunctionCall:
        this.syncs++;
        this.unsynced = 0;
        this.answers.sync();
        break;
      case Frontend.Terminate:
        if (at >= 0) out.add(chunk.subarray(pass, at));
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
   * A whole Parse, Bind, Describe or Close at [at, end) of `buf`. Returns what goes to the server instead of it
   * (the statement renamed, prepared first on a backend that lacks it), or null when it passes unchanged.
   */
  private clientMessage(buf: Buffer, at: number, end: number): Buffer[] | null {
    this.unsynced++;
    const type = buf[at]!;
    // The unnamed statement and portal (most drivers' one-off queries) need no bookkeeping: no name is read,
    // no view of the message is made, nothing is allocated.
    if (namesOnlyUnnamed(type, buf, at, end)) {
      if (type === Frontend.Parse || type === Frontend.Close) this.answers.client();
      return null;
    }
    const frame = at === 0 && end === buf.length ? buf : buf.subarray(at, end);
    switch (type) {
      case Frontend.Parse: {
        const statement = this.statements.define(frame);
        if (!statement) {
          this.answers.client();
          return null;
        }
        // Close first: the backend may hold this name already, from this or another client of the tenant.
        this.answers.proxy();
        this.answers.client(statement.server);
        this.prepared.add(statement.server);
        return [closeStatementFrame(statement.server), statement.parse];
      }
      case Frontend.Bind: {
        const name = bindStatementName(frame);
        const statement = this.statements.get(name.name);
        return statement ? [...this.prepare(statement), renamed(frame, name, statement.server)] : null;
      }
      case Frontend.Describe: {
        const name = describedName(frame);
        const statement = name.kind === STATEMENT ? this.statements.get(name.name) : undefined;
        return statement ? [...this.prepare(statement), renamed(frame, name, statement.server)] : null;
      }
      default: {
        // Close, passed on as it is: the server has no statement of the client's name, and closing none is no error.
        const name = describedName(frame);
        if (name.kind === STATEMENT) this.statements.delete(name.name);
        this.answers.client();
        return null;
      }
    }
  }

  /** The Close and Parse that give this backend the statement, when it does not have it yet. */
  private prepare(statement: Statement): Buffer[] {
    if (this.prepared.has(statement.server)) return [];
    this.answers.proxy();
    this.answers.proxy(statement.server);
    this.prepared.add(statement.server);
    return [closeStatementFrame(statement.server), statement.parse];
  }
}

const namesTooLong = () => protocolViolation(`statement or portal name too long: names must end within ${MAX_NAMES} bytes of the message start`);

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

/**
 * True when the Parse, Bind, Describe or Close at [at, end) names only the unnamed statement or portal: a Parse
 * with an empty name, a Bind of the unnamed statement, a Describe or Close with an empty name.
 */
function namesOnlyUnnamed(type: number, buf: Buffer, at: number, end: number): boolean {
  switch (type) {
    case Frontend.Parse:
      return end - at > HEADER && buf[at + HEADER] === 0;
    case Frontend.Bind: {
      const portalEnd = buf.indexOf(0, at + HEADER);
      return portalEnd >= 0 && portalEnd + 1 < end && buf[portalEnd + 1] === 0;
    }
    default:
      return end - at > HEADER + 1 && buf[at + HEADER + 1] === 0;
  }
}

/** The client messages whose bodies the relay reads: those that name prepared statements. */
function needsBody(type: number): boolean {
  return type === Frontend.Parse || type === Frontend.Bind || type === Frontend.Describe || type === Frontend.Close;
}
