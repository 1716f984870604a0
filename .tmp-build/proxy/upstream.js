// Backend connections: TCP or Unix socket, TLS per the upstream URL's sslmode, and the startup-phase reader (pg-protocol).
import net from 'node:net';
import tls from 'node:tls';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import { connectionFailure } from './errors.js';
const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];
/** Where backends live, read from the upstream URL (credentials there are for management only). */
export function upstreamTarget(url) {
    const u = new URL(url);
    const hostParam = u.searchParams.get('host');
    const host = hostParam ?? (decodeURIComponent(u.hostname).replace(/^\[|\]$/g, '') || 'localhost');
    const port = Number(u.searchParams.get('port') ?? (u.port || 5432));
    const sslmode = (u.searchParams.get('sslmode') ?? 'prefer');
    if (!SSL_MODES.includes(sslmode))
        throw new Error(`upstream URL: unknown sslmode '${sslmode}'`);
    const socketPath = host.startsWith('/') ? `${host}/.s.PGSQL.${port}` : null;
    return Object.freeze({ host, port, socketPath, sslmode: socketPath ? 'disable' : sslmode });
}
function connectSocket(target, timeoutMs) {
    return new Promise((resolve, reject) => {
        const socket = target.socketPath
            ? net.connect({ path: target.socketPath })
            : net.connect({ host: target.host, port: target.port });
        const fail = (err) => {
            socket.destroy();
            reject(connectionFailure(`could not connect to the upstream server: ${err.message}`));
        };
        socket.setTimeout(timeoutMs, () => fail(new Error(`timeout after ${timeoutMs} ms`)));
        socket.once('error', fail);
        socket.once('connect', () => {
            socket.setTimeout(0);
            socket.off('error', fail);
            socket.setNoDelay(true);
            socket.setKeepAlive(true, 60_000);
            resolve(socket);
        });
    });
}
/** Sends SSLRequest and upgrades when the server agrees; falls back to plaintext only where sslmode allows. */
async function negotiateTls(socket, target) {
    if (target.sslmode === 'disable' || target.sslmode === 'allow')
        return socket;
    const answer = await new Promise((resolve, reject) => {
        socket.once('error', reject);
        socket.once('data', (b) => {
            socket.off('error', reject);
            if (b.length !== 1)
                reject(new Error('unexpected reply to SSLRequest'));
            else
                resolve(b[0]);
        });
        socket.write(serialize.requestSsl());
    }).catch((err) => {
        socket.destroy();
        throw connectionFailure(`upstream TLS negotiation failed: ${err.message}`);
    });
    if (answer !== 0x53) {
        if (target.sslmode === 'prefer')
            return socket;
        socket.destroy();
        throw connectionFailure('the upstream server does not support TLS, but sslmode requires it');
    }
    const verify = target.sslmode === 'verify-ca' || target.sslmode === 'verify-full';
    return new Promise((resolve, reject) => {
        const secure = tls.connect({
            socket,
            rejectUnauthorized: verify,
            ...(target.sslmode === 'verify-full' ? { servername: target.host } : { checkServerIdentity: () => undefined }),
        });
        secure.once('secureConnect', () => {
            secure.off('error', reject);
            resolve(secure);
        });
        secure.once('error', (err) => {
            socket.destroy();
            reject(connectionFailure(`upstream TLS handshake failed: ${err.message}`));
        });
    });
}
export async function openBackendSocket(target, timeoutMs) {
    return negotiateTls(await connectSocket(target, timeoutMs), target);
}
/**
 * One backend connection. During startup it yields parsed messages through next();
 * after detach() its socket belongs to the relay, which only frames headers.
 */
export class BackendConnection {
    socket;
    parser = new Parser();
    queue = [];
    waiter = null;
    failure = null;
    onData = (chunk) => this.parser.parse(chunk, (m) => this.deliver(m));
    onEnd = () => this.fail(connectionFailure('the upstream server closed the connection'));
    onError = (err) => this.fail(connectionFailure(`upstream connection error: ${err.message}`));
    constructor(socket) {
        this.socket = socket;
        socket.on('data', this.onData);
        socket.once('close', this.onEnd);
        socket.on('error', this.onError);
    }
    deliver(m) {
        if (this.waiter) {
            const w = this.waiter;
            this.waiter = null;
            w(m);
        }
        else
            this.queue.push(m);
    }
    fail(err) {
        this.failure ??= err;
        if (this.waiter) {
            const w = this.waiter;
            this.waiter = null;
            w(err);
        }
    }
    /** The next message from the server during startup. */
    next() {
        const m = this.queue.shift();
        if (m)
            return Promise.resolve(m);
        if (this.failure)
            return Promise.reject(this.failure);
        return new Promise((resolve, reject) => {
            this.waiter = (x) => (x instanceof Error ? reject(x) : resolve(x));
        });
    }
    send(buf) {
        this.socket.write(buf);
    }
    /** Hands the socket to the relay: no more parsing. */
    detach() {
        this.socket.off('data', this.onData);
        this.socket.off('close', this.onEnd);
        this.socket.off('error', this.onError);
    }
    close() {
        this.socket.destroy();
    }
}
/** Opens a backend connection and sends its StartupMessage. */
export async function connectBackend(target, startup, timeoutMs) {
    const conn = new BackendConnection(await openBackendSocket(target, timeoutMs));
    conn.send(startup);
    return conn;
}
/** Forwards a cancel to the backend's own key, on a connection of its own, as the protocol requires. */
export async function sendCancelRequest(target, processId, secretKey, timeoutMs) {
    const socket = await openBackendSocket(target, timeoutMs);
    await new Promise((resolve) => {
        socket.once('close', () => resolve());
        socket.once('error', () => resolve());
        socket.end(serialize.cancel(processId, secretKey));
        setTimeout(() => socket.destroy(), timeoutMs).unref();
    });
}
//# sourceMappingURL=upstream.js.map