// A TCP relay between the proxy and PostgreSQL whose faults (delay, drop, reset, blackhole, refuse) a test switches at run time.
import net from 'node:net';

/** What the relay does to traffic right now; `reset` is an action, not a mode (see FaultRelay.reset). */
export type FaultMode = 'pass' | 'delay' | 'drop' | 'blackhole' | 'refuse';

export interface FaultCounts {
  /** Connections accepted since start (dropped and blackholed ones included). */
  accepted: number;
  /** Relayed connections not yet closed on both sides. */
  open: number;
  /** Connections closed at once by `drop`. */
  dropped: number;
  /** Connections torn down with RST by `reset`. */
  reset: number;
  /** Connections swallowed by `blackhole` (new ones, and open ones it froze). */
  blackholed: number;
  /** Times the relay stopped listening (`refuse`). */
  refusals: number;
  /** Times `delay` was switched on. */
  delays: number;
  /** The sum of the above fault events: what a test reports as "faults injected". */
  faults: number;
}

/**
 * Closes a socket with RST. libuv refuses a reset once the write side is shutting down (after end()), and Node
 * then drops the handle without closing it: such a socket is destroyed instead (unread bytes make that an RST too).
 */
function reset(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (socket.writableEnded) socket.destroy();
  else socket.resetAndDestroy();
}

/** Pending bytes of one direction above which the relay stops reading that side (a held or slow stream). */
const HOLD_LIMIT = 1 << 20;

/** One direction of one connection: chunks wait in a queue until due (delay) and while the relay is blackholed. */
class Pipe {
  private readonly queue: { chunk: Buffer; due: number }[] = [];
  private queued = 0;
  private timer: NodeJS.Timeout | null = null;
  /** The source closed: the destination is ended once what is queued has been written. */
  private finishing = false;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly relay: FaultRelay,
    /** Server to proxy: what `holdReplies` holds. */
    private readonly replies = false,
  ) {
    from.on('data', (chunk: Buffer) => this.push(chunk));
    to.on('drain', () => this.pump());
  }

  push(chunk: Buffer): void {
    this.queue.push({ chunk, due: Date.now() + this.relay.delayMs });
    this.queued += chunk.length;
    if (this.queued > HOLD_LIMIT) this.from.pause();
    this.pump();
  }

  /**
   * Writes what is due, unless blackholed or the destination is full; re-arms itself for the next due chunk.
   * `coalesce` sends everything due as one write, so the peer reads it as one chunk, as if it had arrived together.
   */
  pump(coalesce = false): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.relay.mode === 'blackhole' || (this.replies && this.relay.repliesHeld)) return;
    if (this.to.destroyed) {
      // Bytes for a socket that is gone: TCP would answer them with RST.
      if (this.queue.length > 0) reset(this.from);
      return;
    }
    const now = Date.now();
    if (coalesce && this.queue.length > 1 && this.queue.every((q) => q.due <= now)) {
      const all = Buffer.concat(this.queue.splice(0).map((q) => q.chunk));
      this.queued = 0;
      this.to.write(all);
    }
    while (this.queue.length > 0 && !this.to.writableNeedDrain) {
      const head = this.queue[0]!;
      if (head.due > now) {
        this.timer = setTimeout(() => this.pump(), head.due - now);
        return;
      }
      this.queue.shift();
      this.queued -= head.chunk.length;
      this.to.write(head.chunk);
    }
    if (this.finishing && this.queue.length === 0 && !this.relay.closesHeld) this.to.end();
    else if (this.queued <= HOLD_LIMIT && this.from.isPaused()) this.from.resume();
  }

  /** The source closed cleanly: pass the close on, after the bytes it sent before (as TCP would). */
  finish(): void {
    this.finishing = true;
    this.pump();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** A relayed connection: the client-side socket, and its upstream once connected (null while blackholed). */
interface Link {
  client: net.Socket;
  upstream: net.Socket | null;
  pipes: Pipe[];
  /** What a blackholed connection sent, forwarded if the blackhole ends while it is still open. */
  held: Buffer[];
  collect: ((chunk: Buffer) => void) | null;
}

export class FaultRelay {
  mode: FaultMode = 'pass';
  /** Delay per chunk in `delay` mode, 0 otherwise. */
  delayMs = 0;
  /** See holdReplies and holdCloses. */
  repliesHeld = false;
  closesHeld = false;
  private server: net.Server | null = null;
  private readonly links = new Set<Link>();
  private closed = false;
  private readonly counts = { accepted: 0, dropped: 0, reset: 0, blackholed: 0, refusals: 0, delays: 0 };
  private portNumber = 0;

  private constructor(private readonly target: { host: string; port: number }) {}

  /** Starts a relay on 127.0.0.1 (a free port) in front of `target`. */
  static async start(target: { host: string; port: number }): Promise<FaultRelay> {
    const relay = new FaultRelay(target);
    await relay.listen();
    return relay;
  }

  get port(): number {
    return this.portNumber;
  }

  /** `url` (a postgres:// URL) with its host and port replaced by the relay's. */
  urlFor(url: string): string {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(this.portNumber);
    return u.toString();
  }

  stats(): FaultCounts {
    const c = this.counts;
    return { ...c, open: this.links.size, faults: c.dropped + c.reset + c.blackholed + c.refusals + c.delays };
  }

  /**
   * Forwards everything as it comes; listens again after `refuse`. Ending a blackhole heals it as a network
   * partition heals: held bytes flow, and connections accepted meanwhile are connected upstream at last.
   */
  async pass(): Promise<void> {
    this.mode = 'pass';
    this.delayMs = 0;
    await this.listen();
    this.heal();
  }

  /** Each chunk, in both directions and on every connection, waits `ms` before it is forwarded (order kept). */
  async delay(ms: number): Promise<void> {
    this.mode = 'delay';
    this.delayMs = ms;
    this.counts.delays++;
    await this.listen();
    this.heal();
  }

  /** New connections are accepted and closed at once; open ones are left alone. */
  async drop(): Promise<void> {
    this.mode = 'drop';
    this.delayMs = 0;
    await this.listen();
  }

  /**
   * Tears down every open connection with RST on both sides, and keeps accepting (in the current mode).
   * Returns how many connections were reset.
   */
  reset(): number {
    const n = this.links.size;
    for (const link of [...this.links]) this.destroyLink(link, true);
    this.counts.reset += n;
    return n;
  }

  /**
   * New connections are accepted but never connected upstream nor answered; open ones stop forwarding. Bytes are
   * held, not lost, as TCP would retransmit them: see `pass`.
   */
  async blackhole(): Promise<void> {
    this.mode = 'blackhole';
    this.delayMs = 0;
    this.counts.blackholed += [...this.links].filter((l) => l.upstream).length;
    await this.listen();
  }

  /** Stops listening: connects get ECONNREFUSED; open connections are left alone. `pass` listens again on the same port. */
  refuse(): void {
    this.mode = 'refuse';
    this.delayMs = 0;
    this.counts.refusals++;
    this.unlisten();
  }

  /**
   * Holds what servers send (the proxy's requests still pass) until `releaseReplies`, which sends each connection's
   * held bytes as one write: a reply and what followed it (a FATAL, say) then reach the proxy in one chunk.
   */
  holdReplies(): void {
    this.repliesHeld = true;
  }

  releaseReplies(): void {
    this.repliesHeld = false;
    this.pumpAll(true);
  }

  /** A server's close is passed on only at `releaseCloses` (its bytes still pass): the proxy sees a server that has gone quiet but not yet closed. */
  holdCloses(): void {
    this.closesHeld = true;
  }

  releaseCloses(): void {
    this.closesHeld = false;
    this.pumpAll();
  }

  private pumpAll(coalesce = false): void {
    for (const link of this.links) for (const p of link.pipes) p.pump(coalesce);
  }

  /** Stops listening and destroys every connection. */
  close(): void {
    this.closed = true;
    this.unlisten();
    for (const link of [...this.links]) this.destroyLink(link, false);
  }

  private heal(): void {
    for (const link of this.links) {
      if (link.upstream) for (const p of link.pipes) p.pump();
      else this.connect(link);
    }
  }

  private accept(client: net.Socket): void {
    this.counts.accepted++;
    client.on('error', () => undefined);
    if (this.mode === 'drop') {
      this.counts.dropped++;
      client.destroy();
      return;
    }
    const link: Link = { client, upstream: null, pipes: [], held: [], collect: null };
    this.links.add(link);
    client.once('close', (hadError) => this.sideClosed(link, hadError, link.pipes[0]));
    if (this.mode === 'blackhole') {
      // A dead end: the peer's writes succeed and only its wait for an answer hangs.
      this.counts.blackholed++;
      link.collect = (chunk) => link.held.push(chunk);
      client.on('data', link.collect);
      return;
    }
    this.connect(link);
  }

  private connect(link: Link): void {
    const { client } = link;
    if (link.collect) client.off('data', link.collect);
    link.collect = null;
    const upstream = net.connect(this.target);
    link.upstream = upstream;
    upstream.setNoDelay(true);
    client.setNoDelay(true);
    upstream.on('error', () => undefined);
    const toServer = new Pipe(client, upstream, this);
    const toClient = new Pipe(upstream, client, this, true);
    link.pipes.push(toServer, toClient);
    upstream.once('close', (hadError) => this.sideClosed(link, hadError, toClient));
    for (const chunk of link.held.splice(0)) toServer.push(chunk);
  }

  /**
   * One side of a link closed: a reset is passed on as a reset; a clean close reaches the other side after the
   * bytes still on their way. The link is forgotten once both sides are closed.
   */
  private sideClosed(link: Link, hadError: boolean, from: Pipe | undefined): void {
    if (hadError || !from) return this.destroyLink(link, hadError);
    from.finish();
    for (const p of link.pipes) p.pump();
    if (link.client.destroyed && (!link.upstream || link.upstream.destroyed)) this.destroyLink(link, false);
  }

  /** Closes both sides of a link (with RST when `rst`), once. */
  private destroyLink(link: Link, rst: boolean): void {
    if (!this.links.delete(link)) return;
    for (const p of link.pipes) p.stop();
    for (const s of [link.client, link.upstream]) {
      if (!s) continue;
      if (rst) reset(s);
      else s.destroy();
    }
  }

  private async listen(): Promise<void> {
    if (this.server || this.closed) return;
    const server = net.createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.portNumber, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.portNumber = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  private unlisten(): void {
    const server = this.server;
    this.server = null;
    // close() stops accepting at once; its callback waits for connections kept on purpose, so nobody waits for it.
    server?.close();
  }
}
