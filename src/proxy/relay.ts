// The hot path: bytes between a client and its backend, framed by message headers only, with backpressure.
import type net from 'node:net';
import type { ClientState } from './activity.js';
import { Backend } from './protocol/constants.js';
import { HeaderScanner } from './protocol/scanner.js';

/** ReadyForQuery status byte -> the state of a client waiting for its next statement. */
const WAITING_STATE: Record<number, Exclude<ClientState, 'login'>> = {
  0x49: 'idle', // 'I'
  0x54: 'idle_in_transaction', // 'T'
  0x45: 'idle_in_transaction_aborted', // 'E'
};

/** Flushes what was written (plus `last`), then closes; a peer that never reads is cut after a second. */
export function endGracefully(socket: net.Socket, last?: Buffer): void {
  if (socket.destroyed) return;
  if (last) socket.end(last);
  else socket.end();
  setTimeout(() => socket.destroy(), 1000).unref();
}

export interface RelayStats {
  bytesIn: number;
  bytesOut: number;
}

export type RelayEnd = 'client_closed' | 'server_closed' | 'client_protocol_violation' | 'server_protocol_violation';

/**
 * Pipes both directions until either side closes. Each chunk is scanned for headers
 * (so message boundaries and ReadyForQuery status are known) and written on unchanged.
 */
export class Relay {
  readonly fromClient = new HeaderScanner('frontend');
  readonly fromServer = new HeaderScanner('backend');
  readonly stats: RelayStats = { bytesIn: 0, bytesOut: 0 };
  private ended: RelayEnd | null = null;
  readonly done: Promise<RelayEnd>;
  private finish!: (why: RelayEnd) => void;

  constructor(
    readonly client: net.Socket,
    readonly server: net.Socket,
  ) {
    this.done = new Promise((resolve) => (this.finish = resolve));
  }

  /** Starts relaying; `pending` holds client bytes that arrived with the end of the startup phase. */
  start(pending: Buffer): void {
    const { client, server } = this;
    if (pending.length > 0) this.onClientData(pending);
    client.on('data', (chunk: Buffer) => this.onClientData(chunk));
    server.on('data', (chunk: Buffer) => this.onServerData(chunk));
    client.on('drain', () => server.resume());
    server.on('drain', () => client.resume());
    client.on('close', () => this.end('client_closed'));
    server.on('close', () => this.end('server_closed'));
    client.on('error', () => this.end('client_closed'));
    server.on('error', () => this.end('server_closed'));
    client.resume();
    server.resume();
  }

  private onClientData(chunk: Buffer): void {
    this.stats.bytesIn += chunk.length;
    if (this.fromClient.scan(chunk) < 0) return this.end('client_protocol_violation');
    if (!this.server.write(chunk)) this.client.pause();
  }

  private onServerData(chunk: Buffer): void {
    this.stats.bytesOut += chunk.length;
    if (this.fromServer.scan(chunk) < 0) return this.end('server_protocol_violation');
    if (!this.client.write(chunk)) this.server.pause();
  }

  /**
   * From the counters alone: a client is active while it has sync points (Query, Sync) the server has not yet
   * answered with ReadyForQuery, or while the server streams something after its last ReadyForQuery.
   */
  get clientState(): Exclude<ClientState, 'login'> {
    const s = this.fromServer;
    if (this.fromClient.syncs > s.readies || !s.atBoundary || (s.messages > 0 && s.lastType !== Backend.ReadyForQuery)) return 'active';
    // Before any ReadyForQuery in the relay the client is idle: login ended with one.
    return WAITING_STATE[s.readyForQueryStatus] ?? 'idle';
  }

  /** True when the server->client stream sits between messages, so the proxy may add one of its own. */
  get serverAtBoundary(): boolean {
    return this.fromServer.atBoundary;
  }

  /** Ends both sides; `lastWords` goes to the client first when given (only at a message boundary). */
  end(why: RelayEnd, lastWords?: Buffer): void {
    if (this.ended) return;
    this.ended = why;
    if (why === 'client_closed') {
      this.client.destroy();
      // A client that said Terminate has had its last bytes written to the server: let them flush.
      endGracefully(this.server);
    } else {
      endGracefully(this.client, lastWords && this.serverAtBoundary ? lastWords : undefined);
      this.server.destroy();
    }
    this.finish(why);
  }
}
