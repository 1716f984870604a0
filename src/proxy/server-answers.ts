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
  // A ring, not an array used with push and shift: V8 moves or regrows such an array's storage as it
  // slides, which is an allocation every few messages on the hot path. Made at first use; grows by doubling.
  private ring: Owed[] = [];
  private head = 0;
  private count = 0;

  private push(owed: Owed): void {
    if (this.count === this.ring.length) this.grow();
    this.ring[(this.head + this.count) & (this.ring.length - 1)] = owed;
    this.count++;
  }

  private shift(): Owed {
    const owed = this.ring[this.head]!;
    this.head = (this.head + 1) & (this.ring.length - 1);
    this.count--;
    return owed;
  }

  private grow(): void {
    const bigger = new Array<Owed>(Math.max(8, this.ring.length * 2)).fill(PASS);
    for (let k = 0; k < this.count; k++) bigger[k] = this.ring[(this.head + k) & (this.ring.length - 1)]!;
    this.ring = bigger;
    this.head = 0;
  }

  clear(): void {
    this.head = 0;
    this.count = 0;
  }

  /** The client's own Parse or Close; `statement` for a named Parse (prepared under that server name). */
  client(statement: string | null = null): void {
    this.push(statement ? { swallow: false, sync: false, statement } : PASS);
  }

  /** A Close or Parse the proxy sent on its own: the client must not see the answer. */
  proxy(statement: string | null = null): void {
    this.push(statement ? { swallow: true, sync: false, statement } : SWALLOW);
  }

  /** Sync, Query or FunctionCall: the server answers it with ReadyForQuery. */
  sync(): void {
    this.push(SYNC);
  }

  /** A ParseComplete or CloseComplete arrived: true when it answers the proxy's own message. */
  completed(): boolean {
    if (this.count === 0 || this.ring[this.head]!.sync) return false;
    return this.shift().swallow;
  }

  /** An ErrorResponse: the rest of the batch never runs; each statement whose Parse did not leaves `prepared`. */
  failed(prepared: Set<string>): void {
    while (this.count > 0 && !this.ring[this.head]!.sync) {
      const dropped = this.shift();
      if (dropped.statement) prepared.delete(dropped.statement);
    }
  }

  /** ReadyForQuery: the batch up to its sync point is answered. */
  ready(): void {
    while (this.count > 0 && !this.shift().sync);
  }
}
