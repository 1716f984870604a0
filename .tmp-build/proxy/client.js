import { PgError, protocolViolation } from './errors.js';
import { MessageReader } from './protocol/reader.js';
import { errorResponseFor } from './protocol/writer.js';
/** Raised when the client went away: nothing is sent back. */
export class ClientGone extends Error {
    name = 'ClientGone';
}
export class ClientConnection {
    socket;
    reader = new MessageReader();
    waiter = null;
    failure = null;
    bytesIn = 0;
    bytesOut = 0;
    onData = (chunk) => {
        this.bytesIn += chunk.length;
        this.reader.push(chunk);
        this.pump();
    };
    onClose = () => this.fail(new ClientGone('client closed the connection'));
    constructor(socket) {
        this.socket = socket;
        this.attach();
    }
    /** Starts (or resumes, after a TLS upgrade swapped the socket) reading. */
    attach(socket = this.socket) {
        this.socket = socket;
        socket.on('data', this.onData);
        socket.once('close', this.onClose);
        socket.on('error', () => { });
    }
    /** Stops reading, for a TLS upgrade or the hand-over to the relay. */
    detach() {
        this.socket.off('data', this.onData);
        this.socket.off('close', this.onClose);
    }
    fail(err) {
        this.failure ??= err;
        const w = this.waiter;
        this.waiter = null;
        w?.reject(err);
    }
    pump() {
        const w = this.waiter;
        if (!w)
            return;
        let value;
        try {
            value = w.want === 'startup' ? this.reader.readStartupPacket() : this.reader.readMessage();
        }
        catch (err) {
            this.fail(err);
            return;
        }
        if (value) {
            this.waiter = null;
            w.resolve(value);
        }
    }
    read(want) {
        if (this.failure)
            return Promise.reject(this.failure);
        return new Promise((resolve, reject) => {
            this.waiter = { want, resolve: resolve, reject };
            this.pump();
        });
    }
    /** The next untyped startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest). */
    readStartupPacket() {
        return this.read('startup');
    }
    /** The next typed message, which must be of the expected type (authentication replies). */
    async readMessage(expected, what) {
        const m = await this.read('message');
        if (m.type !== expected) {
            throw protocolViolation(`expected ${what} message, got message type "${String.fromCharCode(m.type)}"`);
        }
        return m;
    }
    write(buf) {
        this.bytesOut += buf.length;
        this.socket.write(buf);
    }
    /** Errors to clients leave through here: one ErrorResponse, then the connection ends. */
    refuse(err) {
        this.detach();
        this.fail(new ClientGone(`refused: ${err.message}`));
        if (this.socket.destroyed)
            return;
        const buf = errorResponseFor(err);
        this.bytesOut += buf.length;
        this.socket.end(buf);
        setTimeout(() => this.socket.destroy(), 1000).unref();
    }
    close() {
        this.detach();
        this.fail(new ClientGone('closed by the proxy'));
        this.socket.destroy();
    }
}
export function isPgError(err) {
    return err instanceof PgError;
}
//# sourceMappingURL=client.js.map