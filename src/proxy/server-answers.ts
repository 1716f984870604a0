// What a backend owes a transaction-mode client, in order: which ParseComplete and CloseComplete answer the proxy's own messages.

interface Owed {
  readonly swallow: boolean;
  readonly sync: boolean;
  /** A Parse whose failure means the backend does not have this statement after all. */
  readonly statement: string | null;
}
const PASS: Owed = { swallow: false, sync: false, statement: null };
const SWALLOW: Owed = { swallow: true, sync: false, statement: null };
const SYNC: Owed = { swallow: false, sync: true, statement: null };

/**
 * The server answers Parse and Close in the order they were sent, skips to the next Sync after an error,
 * and ends each batch with ReadyForQuery: a queue of what was sent is enough to tell, for each
 * ParseComplete or CloseComplete, whether the client or the proxy asked for it.
 */
export class ServerAnswers {
  private readonly owed: Owed[] = [];

  clear(): void {
    this.owed.length = 0;
  }

  /** The client's own Parse or Close; `statement` for a named Parse (prepared under that server name). */
  client(statement: string | null = null): void {
    this.owed.push(statement ? { swallow: false, sync: false, statement } : PASS);
  }

  /** A Close or Parse the proxy sent on its own: the client must not see the answer. */
  proxy(statement: string | null = null): void {
    this.owed.push(statement ? { swallow: true, sync: false, statement } : SWALLOW);
  }

  /** Sync, Query or FunctionCall: the server answers it with ReadyForQuery. */
  sync(): void {
    this.owed.push(SYNC);
  }

  /** A ParseComplete or CloseComplete arrived: true when it answers the proxy's own message. */
  completed(): boolean {
    const next = this.owed[0];
    if (!next || next.sync) return false;
    this.owed.shift();
    return next.swallow;
  }

  /** An ErrorResponse: the rest of the batch never runs; each statement whose Parse did not leaves `prepared`. */
  failed(prepared: Set<string>): void {
    while (this.owed.length > 0 && !this.owed[0]!.sync) {
      const dropped = this.owed.shift()!;
      if (dropped.statement) prepared.delete(dropped.statement);
    }
  }

  /** ReadyForQuery: the batch up to its sync point is answered. */
  ready(): void {
    while (this.owed.length > 0 && !this.owed.shift()!.sync);
  }
}
