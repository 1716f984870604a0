// The proxy listener: accepts clients, runs their sessions, reacts to tenant changes, and shuts down gracefully.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { TenantDirectory } from '../tenants/directory.js';
import { CancelRegistry } from './cancel.js';
import { adminShutdown } from './errors.js';
import { DedicatedPool } from './pool.js';
import { Session } from './session.js';
import { upstreamTarget } from './upstream.js';
function loadSecureContext(config) {
    if (!config.tlsCert || !config.tlsKey)
        return null;
    return tls.createSecureContext({ cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey) });
}
export async function startProxy(opts) {
    const { config } = opts;
    const log = opts.log.child({ component: 'proxy' });
    if (!config.upstream)
        throw new Error('the proxy needs an upstream URL');
    let directory = null;
    let tenants = opts.tenants;
    if (!tenants) {
        directory = new TenantDirectory({ connectionString: config.upstream, ttlMs: config.tenantCacheTtl, log });
        await directory.start();
        tenants = directory;
    }
    const pool = new DedicatedPool();
    const deps = {
        config,
        target: upstreamTarget(config.upstream),
        tenants,
        cancels: new CancelRegistry(),
        pool,
        secureContext: loadSecureContext(config),
        log,
    };
    if (config.isolation === 'schema') {
        log.warn('isolation mode "schema" is a convenience, not a security boundary: all tenants share one login role');
    }
    const live = new Set();
    let counter = 0;
    const server = net.createServer({ noDelay: true }, (socket) => {
        socket.setKeepAlive(true, 60_000);
        const session = new Session(socket, `${process.pid.toString(36)}.${(++counter).toString(36)}`, deps);
        live.add(session);
        void session.run().finally(() => live.delete(session));
    });
    server.on('error', (err) => log.error({ err }, 'listener error'));
    await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(config.listen.port, config.listen.host, () => {
            server.off('error', reject);
            resolve();
        });
    });
    const bound = server.address();
    const address = { host: bound.address, port: bound.port };
    log.info({ listen: `${address.host}:${address.port}`, isolation: config.isolation, poolMode: config.poolMode }, 'proxy listening');
    const disconnectTenant = (id, reason) => {
        let n = 0;
        for (const s of live) {
            if (s.tenant !== id)
                continue;
            s.terminate(adminShutdown(`terminating connection: ${reason}`));
            n++;
        }
        return n;
    };
    directory?.on('change', (id) => {
        void directory.lookup(id).then((record) => {
            if (!record)
                disconnectTenant(id, `tenant "${id}" was dropped`);
            else if (record.state !== 'active')
                disconnectTenant(id, `tenant "${id}" was suspended`);
        }, (err) => log.warn({ err: err.message, tenant: id }, 'tenant lookup after change failed'));
    });
    let closing = null;
    const close = (graceMs = config.shutdownTimeout) => {
        closing ??= (async () => {
            log.info({ sessions: live.size, graceMs }, 'shutting down: no new connections');
            server.close();
            const deadline = Date.now() + graceMs;
            while (live.size > 0 && Date.now() < deadline)
                await new Promise((r) => setTimeout(r, 50));
            for (const s of live)
                s.terminate(adminShutdown());
            const hard = Date.now() + 2000;
            while (live.size > 0 && Date.now() < hard)
                await new Promise((r) => setTimeout(r, 20));
            await directory?.close();
            log.info('proxy stopped');
        })();
        return closing;
    };
    return { address, pool, sessions: () => live, disconnectTenant, close };
}
//# sourceMappingURL=server.js.map