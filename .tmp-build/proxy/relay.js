import { HeaderScanner } from './protocol/scanner.js';
/**
 * Pipes both directions until either side closes. Each chunk is scanned for headers
 * (so message boundaries and ReadyForQuery status are known) and written on unchanged.
 */
export class Relay {
    client;
    server;
    fromClient = new HeaderScanner();
    fromServer = new HeaderScanner();
    stats = { bytesIn: 0, bytesOut: 0 };
    ended = null;
    done;
    finish;
    constructor(client, server) {
        this.client = client;
        this.server = server;
        this.done = new Promise((resolve) => (this.finish = resolve));
    }
    /** Starts relaying; `pending` holds client bytes that arrived with the end of the startup phase. */
    start(pending) {
        const { client, server } = this;
        if (pending.length > 0)
            this.onClientData(pending);
        client.on('data', (chunk) => this.onClientData(chunk));
        server.on('data', (chunk) => this.onServerData(chunk));
        client.on('drain', () => server.resume());
        server.on('drain', () => client.resume());
        client.on('close', () => this.end('client_closed'));
        server.on('close', () => this.end('server_closed'));
        client.on('error', () => this.end('client_closed'));
        server.on('error', () => this.end('server_closed'));
        client.resume();
        server.resume();
    }
    onClientData(chunk) {
        this.stats.bytesIn += chunk.length;
        if (this.fromClient.scan(chunk) < 0)
            return this.end('client_protocol_violation');
        if (!this.server.write(chunk))
            this.client.pause();
    }
    onServerData(chunk) {
        this.stats.bytesOut += chunk.length;
        if (this.fromServer.scan(chunk) < 0)
            return this.end('server_protocol_violation');
        if (!this.client.write(chunk))
            this.server.pause();
    }
    /** True when the server->client stream sits between messages, so the proxy may add one of its own. */
    get serverAtBoundary() {
        return this.fromServer.atBoundary;
    }
    /** Ends both sides; `lastWords` goes to the client first when given (only at a message boundary). */
    end(why, lastWords) {
        if (this.ended)
            return;
        this.ended = why;
        if (lastWords && !this.client.destroyed && this.serverAtBoundary) {
            this.client.end(lastWords);
            setTimeout(() => this.client.destroy(), 1000).unref();
        }
        else if (why === 'server_closed' || why === 'client_protocol_violation' || why === 'server_protocol_violation') {
            this.client.end();
            setTimeout(() => this.client.destroy(), 1000).unref();
        }
        else {
            this.client.destroy();
        }
        // A client that said Terminate has had its last bytes written to the server: let them flush.
        if (why === 'client_closed') {
            this.server.end();
            setTimeout(() => this.server.destroy(), 1000).unref();
        }
        else
            this.server.destroy();
        this.finish(why);
    }
}
//# sourceMappingURL=relay.js.map