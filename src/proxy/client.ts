// A client socket during the startup phase: whole packets and messages on demand, and the one path errors leave by.
import type net from 'node:net';
import { type PgError, protocolViolation } from './errors.js';
import { MessageReader } from './protocol/reader.js';
import { errorResponseFor } from './protocol/writer.js';
import { endGracefully } from './relay.js';

type Wanted = 'startup' | 'message';
type TypedMessage = { type: number; body: Buffer; frame: Buffer };

/** Raised when the client went away: nothing is sent back. */
export class ClientGone extends Error {
  override readonly name = 'ClientGone';
}

const CONNECTION = Symbol('pgtenant.client');
type ClientSocket = net.Socket & { [CONNECTION]: ClientConnection };
// Shared listeners that find their connection on the socket: no closures per client (there may be thousands).
function onData(this: ClientSocket, chunk: Buffer): void {
  this[CONNECTION].received(chunk);
}
function onClose(this: ClientSocket): void {
  this[CONNECTION].closed();
}
function ignore(): void {}

export class ClientConnection {
  readonly reader = new MessageReader();
  private waiter: {
    want: Wanted;
    /** For a message: its type, checked as soon as the first byte is in (a wrong one is refused, not awaited). */
    expected?: { type: number; what: string };
    resolve: (v: Buffer | TypedMessage) => void;
    reject: (e: Error) => void;
  } | null = null;
  private failure: Error | null = null;
  bytesIn = 0;
  bytesOut = 0;

  constructor(public socket: net.Socket) {
    this.attach();
  }

  received(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    this.reader.push(chunk);
    this.pump();
  }

  closed(): void {
    this.fail(new ClientGone('client closed the connection'));
  }

  /** Starts (or resumes, after a TLS upgrade swapped the socket) reading. */
  attach(socket: net.Socket = this.socket): void {
    this.socket = socket;
    (socket as ClientSocket)[CONNECTION] = this;
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.on('error', ignore);
  }

  /** Stops reading, for a TLS upgrade or the hand-over to the relay. */
  detach(): void {
    this.socket.off('data', onData);
    this.socket.off('close', onClose);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(err);
  }

  private pump(): void {
    const w = this.waiter;
    if (!w) return;
    let value: Buffer | TypedMessage | null;
    const expected = w.expected;
    if (expected && this.reader.buffered > 0 && this.reader.firstByte() !== expected.type) {
      const got = String.fromCharCode(this.reader.firstByte());
      this.fail(protocolViolation(`expected ${expected.what} message, got message type "${got}"`));
      return;
    }
    try {
      value = w.want === 'startup' ? this.reader.readStartupPacket() : this.reader.readMessage();
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    if (value) {
      this.waiter = null;
      w.resolve(value);
    }
  }

  private read<T extends Buffer | TypedMessage>(want: Wanted, expected?: { type: number; what: string }): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<T>((resolve, reject) => {
      this.waiter = { want, ...(expected ? { expected } : {}), resolve: resolve as (v: Buffer | TypedMessage) => void, reject };
      this.pump();
    });
  }

  /** The next untyped startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest). */
  readStartupPacket(): Promise<Buffer> {
    return this.read<Buffer>('startup');
  }

  /** The next typed message, which must be of the expected type (authentication replies). */
  readMessage(expected: number, what: string): Promise<TypedMessage> {
    return this.read<TypedMessage>('message', { type: expected, what });
  }

  write(buf: Buffer): void {
    this.bytesOut += buf.length;
    this.socket.write(buf);
  }

  /** Errors to clients leave through here: one ErrorResponse, then the connection ends. */
  refuse(err: PgError): void {
    this.detach();
    this.fail(new ClientGone(`refused: ${err.message}`));
    if (this.socket.destroyed) return;
    const buf = errorResponseFor(err);
    this.bytesOut += buf.length;
    endGracefully(this.socket, buf);
  }

  close(): void {
    this.detach();
    this.fail(new ClientGone('closed by the proxy'));
    this.socket.destroy();
  }
}
