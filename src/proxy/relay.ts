// The hot path: bytes between a client and its backend, framed by message headers only, with backpressure.
import type net from 'node:net';
import type { ClientState } from './activity.js';
import { connectionFailure } from './errors.js';
import { Backend } from './protocol/constants.js';
import { HeaderScanner } from './protocol/scanner.js';
import { errorResponseFor } from './protocol/writer.js';
import type { BackendConnection, BackendSink } from './upstream.js';

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

const SERVER_GONE = errorResponseFor(connectionFailure('server closed the connection unexpectedly'));

/**
 * What a client hears when its backend's connection ends under it: the server's own FATAL when it sent one
 * (57P01 from pg_terminate_backend or a shutdown), else 08006, so that it is not left with a bare close.
 */
export function serverGone(lastType: number): Buffer | undefined {
  return lastType === Backend.ErrorResponse ? undefined : SERVER_GONE;
}

export interface RelayStats {
  bytesIn: number;
  bytesOut: number;
}

/** How a relay ended; `client_terminated` is a client that said Terminate, answered in full, then closed by the proxy. */
export type RelayEnd = 'client_closed' | 'client_terminated' | 'server_closed' | 'client_protocol_violation' | 'server_protocol_violation';

/**
 * Pipes both directions until either side closes. Each chunk is scanned for headers
 * (so message boundaries and ReadyForQuery status are known) and written on unchanged,
 * except the client's Terminate, which is the proxy's to say: the backend may be reused.
 * Ending the relay ends the client; the backend is left to the session, which resets or closes it.
 */
export class Relay {
  readonly fromClient = new HeaderScanner('frontend');
  readonly fromServer = new HeaderScanner('backend');
  readonly stats: RelayStats = { bytesIn: 0, bytesOut: 0 };
  private ended: RelayEnd | null = null;
  readonly done: Promise<RelayEnd>;
  private finish!: (why: RelayEnd) => void;
  private readonly onClientData = (chunk: Buffer): void => {
    if (this.fromClient.sawTerminate) return;
    this.stats.bytesIn += chunk.length;
    if (this.fromClient.scan(chunk) < 0) return this.end('client_protocol_violation');
    if (this.fromClient.sawTerminate) {
      const at = this.fromClient.terminateAt;
      if (at > 0) this.server.write(chunk.subarray(0, at));
      return this.closeIfAnswered();
    }
    if (!this.server.write(chunk)) this.client.pause();
  };
  private readonly onServerData = (chunk: Buffer): void => {
    this.stats.bytesOut += chunk.length;
    if (this.fromServer.scan(chunk) < 0) return this.end('server_protocol_violation');
    if (!this.client.write(chunk)) this.server.pause();
    if (this.fromClient.sawTerminate) this.closeIfAnswered();
  };
  private readonly onClientDrain = () => this.server.resume();
  private readonly onClientClose = () => this.end('client_closed');
  private readonly serverSink: BackendSink = {
    data: this.onServerData,
    drain: () => this.client.resume(),
    closed: () => this.end('server_closed', serverGone(this.fromServer.lastType)),
  };
  readonly server: net.Socket;

  constructor(
    readonly client: net.Socket,
    private readonly backend: BackendConnection,
  ) {
    this.server = backend.socket;
    this.done = new Promise((resolve) => (this.finish = resolve));
  }

  /** Starts relaying; `pending` holds client bytes that arrived with the end of the startup phase. */
  start(pending: Buffer): void {
    const { client, server } = this;
    if (pending.length > 0) this.onClientData(pending);
    client.on('data', this.onClientData);
    client.on('drain', this.onClientDrain);
    client.on('close', this.onClientClose);
    client.on('error', this.onClientClose);
    this.backend.relayTo(this.serverSink);
    client.resume();
    server.resume();
  }

  get queries(): number {
    return this.fromClient.queries;
  }

  get transactions(): number {
    return this.fromServer.transactions;
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

  /**
   * Where the backend stands once the relay ended: waiting for a statement (idle, or inside a transaction),
   * or null when anything is half done (a message cut, work unanswered or unsynced), so it cannot be reused.
   */
  get backendState(): 'idle' | 'idle_in_transaction' | null {
    const c = this.fromClient;
    if (this.ended === 'client_protocol_violation' || this.ended === 'server_protocol_violation') return null;
    if (!c.atBoundary || c.unsynced > 0 || c.terminateAt === -1) return null;
    const state = this.clientState;
    if (state === 'active') return null;
    return state === 'idle' ? 'idle' : 'idle_in_transaction';
  }

  /** After the client's Terminate: once everything it sent before is answered, the proxy closes, as PostgreSQL would. */
  private closeIfAnswered(): void {
    if (this.clientState !== 'active') this.end('client_terminated');
  }

  /** True when the server->client stream sits between messages, so the proxy may add one of its own. */
  get serverAtBoundary(): boolean {
    return this.fromServer.atBoundary;
  }

  /** Ends the client (with `lastWords` first when given, only at a message boundary) and hands the backend back. */
  end(why: RelayEnd, lastWords?: Buffer): void {
    if (this.ended) return;
    this.ended = why;
    const { client } = this;
    client.off('data', this.onClientData);
    client.off('drain', this.onClientDrain);
    client.off('close', this.onClientClose);
    this.backend.relayTo(null);
    // The client socket keeps its error listener: it may still fail while it closes.
    if (why === 'client_closed') client.destroy();
    else endGracefully(client, lastWords && this.serverAtBoundary ? lastWords : undefined);
    this.finish(why);
  }
}
