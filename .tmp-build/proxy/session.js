// One client's life: startup negotiation, tenant routing, relayed authentication, then the relay; one explicit state.
import tls from 'node:tls';
import { mockAuthentication } from './auth/mock.js';
import { backendError, relayAuthentication } from './auth/relay.js';
import { ClientConnection, ClientGone } from './client.js';
import { PgError, adminShutdown, cannotConnectNow, invalidAuthorization, protocolViolation } from './errors.js';
import { decodeStartupPacket, encodeStartupMessage } from './protocol/startup.js';
import { BackendWriter, errorResponseFor } from './protocol/writer.js';
import { Relay } from './relay.js';
import { backendStartupParameters, identify } from './router.js';
import { connectBackend, sendCancelRequest } from './upstream.js';
export var SessionState;
(function (SessionState) {
    SessionState["Startup"] = "startup";
    SessionState["Authenticating"] = "authenticating";
    SessionState["Relaying"] = "relaying";
    SessionState["Closed"] = "closed";
})(SessionState || (SessionState = {}));
/** The only moves a session makes; anything else is a bug. */
const TRANSITIONS = {
    [SessionState.Startup]: [SessionState.Authenticating, SessionState.Closed],
    [SessionState.Authenticating]: [SessionState.Relaying, SessionState.Closed],
    [SessionState.Relaying]: [SessionState.Closed],
    [SessionState.Closed]: [],
};
const STARTUP_TIMEOUT_MS = 60_000;
export class Session {
    id;
    deps;
    state = SessionState.Startup;
    tenant = null;
    startedAt = Date.now();
    writer = new BackendWriter();
    client;
    backend = null;
    poolKey = null;
    backendKey = null;
    proxyKey = null;
    relay = null;
    encrypted = false;
    log;
    constructor(socket, id, deps) {
        this.id = id;
        this.deps = deps;
        this.client = new ClientConnection(socket);
        this.log = deps.log.child({ session: id, client: `${socket.remoteAddress}:${socket.remotePort}` });
    }
    transition(next) {
        if (!TRANSITIONS[this.state].includes(next))
            throw new Error(`session ${this.id}: bad transition ${this.state} -> ${next}`);
        this.state = next;
    }
    /** Runs the session to its end; never rejects. */
    async run() {
        let outcome;
        const timer = setTimeout(() => this.client.refuse(protocolViolation('timeout during startup')), STARTUP_TIMEOUT_MS);
        try {
            const startup = await this.negotiate();
            if (!startup) {
                outcome = 'cancel_request';
            }
            else {
                await this.authenticate(startup);
                clearTimeout(timer);
                outcome = await this.relayUntilDone();
            }
        }
        catch (err) {
            outcome = this.fail(err);
        }
        finally {
            clearTimeout(timer);
        }
        this.cleanup();
        const stats = this.relay?.stats;
        this.log.info({
            tenant: this.tenant,
            durationMs: Date.now() - this.startedAt,
            bytesIn: this.client.bytesIn + (stats?.bytesIn ?? 0),
            bytesOut: this.client.bytesOut + (stats?.bytesOut ?? 0),
            tls: this.encrypted,
            outcome,
        }, 'session ended');
        return outcome;
    }
    fail(err) {
        if (err instanceof ClientGone) {
            this.client.close();
            return 'client_gone';
        }
        if (err instanceof PgError) {
            this.client.refuse(err);
            return `error ${err.code}: ${err.message}`;
        }
        this.log.error({ err }, 'session failed');
        this.client.refuse(new PgError('XX000', 'internal error in pgtenant'));
        return 'internal_error';
    }
    /** Startup-phase packets until a StartupMessage; null when the connection was a CancelRequest. */
    async negotiate() {
        const { config, secureContext } = this.deps;
        for (;;) {
            const packet = decodeStartupPacket(await this.client.readStartupPacket());
            switch (packet.kind) {
                case 'SSLRequest':
                    if (this.encrypted)
                        throw protocolViolation('SSLRequest received on an encrypted connection');
                    if (secureContext && config.clientTls !== 'disable')
                        await this.upgradeToTls(secureContext);
                    else
                        this.client.write(Buffer.from('N'));
                    break;
                case 'GSSENCRequest':
                    this.client.write(Buffer.from('N'));
                    break;
                case 'CancelRequest':
                    this.forwardCancel(packet.processId, packet.secretKey);
                    this.client.close();
                    return null;
                case 'StartupMessage':
                    if (config.clientTls === 'require' && !this.encrypted) {
                        throw invalidAuthorization('pgtenant requires TLS: connect with sslmode=require');
                    }
                    return packet;
            }
        }
    }
    async upgradeToTls(secureContext) {
        // Bytes sent after SSLRequest but before the handshake could be injected by a man in the middle.
        if (this.client.reader.buffered > 0)
            throw protocolViolation('received unencrypted data after SSL request');
        this.client.detach();
        const raw = this.client.socket;
        raw.write('S');
        const secure = new tls.TLSSocket(raw, { isServer: true, secureContext });
        await new Promise((resolve, reject) => {
            secure.once('secure', resolve);
            secure.once('error', () => reject(new ClientGone('TLS handshake failed')));
            raw.once('close', () => reject(new ClientGone('client closed during TLS handshake')));
        });
        this.encrypted = true;
        this.client.attach(secure);
    }
    forwardCancel(processId, secretKey) {
        const target = this.deps.cancels.find(processId, secretKey);
        if (target)
            target.cancel();
        else
            this.log.debug({ processId }, 'CancelRequest with an unknown key ignored');
    }
    /** Sends a CancelRequest for this session's backend. */
    cancel() {
        const key = this.backendKey;
        if (!key || this.state !== SessionState.Relaying)
            return;
        this.log.info({ tenant: this.tenant }, 'forwarding cancel request');
        sendCancelRequest(this.deps.target, key.processId, key.secretKey, this.deps.config.connectTimeout).catch((err) => this.log.warn({ err: err.message }, 'cancel request could not be forwarded'));
    }
    async authenticate(startup) {
        this.transition(SessionState.Authenticating);
        const { config, tenants, pool, target } = this.deps;
        const params = startup.parameters;
        const protocolExtensions = [...params.keys()].filter((k) => k.startsWith('_pq_.'));
        if (startup.minorVersion > 0 || protocolExtensions.length > 0) {
            this.client.write(this.writer.negotiateProtocolVersion(0, protocolExtensions).flush());
        }
        const user = params.get('user');
        const identity = identify(params, config.isolation);
        this.tenant = identity.tenantId;
        this.log = this.log.child({ tenant: identity.tenantId });
        const record = await tenants.lookup(identity.tenantId);
        const loginRole = identity.loginRole ?? record?.role ?? null;
        // Unknown tenants go through the same challenge as known ones: nothing tells them apart before the password.
        if (!loginRole)
            await mockAuthentication(this.client, user, this.writer);
        this.poolKey = { tenant: identity.tenantId, role: loginRole, database: params.get('database') ?? loginRole };
        const backendParams = backendStartupParameters(params, loginRole, record?.schema ?? identity.tenantId);
        this.backend = await pool.acquire(this.poolKey, () => connectBackend(target, encodeStartupMessage(backendParams), config.connectTimeout));
        await relayAuthentication(this.client, this.backend, this.writer);
        // The password is proven: now it is safe to say what is wrong with the tenant.
        if (!record)
            throw invalidAuthorization(`tenant "${identity.tenantId}" does not exist`);
        if (record.state !== 'active') {
            throw cannotConnectNow(`tenant "${record.id}" is suspended`, 'Ask the operator to resume the tenant.');
        }
        this.client.write(this.writer.authenticationOk().flush());
        await this.finishStartup();
    }
    /** Forwards ParameterStatus and notices, swaps in the proxy's BackendKeyData, ends at ReadyForQuery. */
    async finishStartup() {
        const backend = this.backend;
        for (;;) {
            const m = (await backend.next());
            switch (m.name) {
                case 'parameterStatus':
                    this.client.write(this.writer.parameterStatus(m.parameterName, m.parameterValue).flush());
                    break;
                case 'backendKeyData':
                    this.backendKey = { processId: m.processID, secretKey: m.secretKey };
                    this.proxyKey = this.deps.cancels.issue(this);
                    this.client.write(this.writer.backendKeyData(this.proxyKey.processId, this.proxyKey.secretKey).flush());
                    break;
                case 'notice':
                    this.client.write(this.writer.noticeResponse(m).flush());
                    break;
                case 'error':
                    throw backendError(m);
                case 'readyForQuery':
                    this.client.write(this.writer.readyForQuery(m.status).flush());
                    return;
                default:
                    throw protocolViolation(`unexpected message "${m.name}" from the upstream server during startup`);
            }
        }
    }
    async relayUntilDone() {
        this.transition(SessionState.Relaying);
        const backend = this.backend;
        backend.detach();
        this.client.detach();
        this.relay = new Relay(this.client.socket, backend.socket);
        this.relay.start(this.client.reader.takeRemaining());
        return this.relay.done;
    }
    /** Ends the session from outside (shutdown, tenant suspended or dropped). */
    terminate(err = adminShutdown()) {
        if (this.relay)
            this.relay.end('server_closed', errorResponseFor(err));
        else
            this.client.refuse(err);
    }
    cleanup() {
        if (this.state !== SessionState.Closed)
            this.transition(SessionState.Closed);
        if (this.proxyKey)
            this.deps.cancels.revoke(this.proxyKey.processId);
        if (this.backend && this.poolKey)
            this.deps.pool.release(this.poolKey, this.backend, false);
        else
            this.backend?.close();
        this.backend = null;
    }
}
//# sourceMappingURL=session.js.map