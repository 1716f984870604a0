// Child processes and cleanup hooks of the benchmark, so every exit path (success, error, Ctrl-C, watchdog) stops them.
import { spawn } from 'node:child_process';
import net from 'node:net';

const live = new Set();
const cleanups = [];
let cleaning;

/** Registers an async cleanup step; steps run in reverse order of registration. */
export function onCleanup(fn) {
  cleanups.push(fn);
}

function tailBuffer(limit = 8192) {
  let text = '';
  return {
    push(chunk) {
      text = (text + chunk.toString()).slice(-limit);
    },
    get text() {
      return text;
    },
  };
}

/** True once cleanup has begun: nothing new may start, and the run loop stops. */
export function isStopping() {
  return cleaning !== undefined;
}

/** Spawns a long-running child that cleanup stops; `output` keeps the tail of its stdout and stderr. */
export function startChild(cmd, args, options = {}) {
  if (isStopping()) throw new Error('the benchmark is stopping');
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  const output = tailBuffer();
  child.stdout.on('data', (c) => output.push(c));
  child.stderr.on('data', (c) => output.push(c));
  child.exited = new Promise((resolve) => {
    child.on('error', (err) => {
      output.push(`\n${err.message}\n`);
      resolve({ code: null, signal: null, error: err });
    });
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  child.exited.then(() => live.delete(child));
  child.output = output;
  live.add(child);
  return child;
}

/** Stops a child with SIGTERM, then SIGKILL if it lingers. */
export async function stopChild(child, graceMs = 5000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** Runs a command to completion (killed after timeoutMs); resolves with its exit code and output. */
export async function runCommand(cmd, args, { timeoutMs = 120_000, ...options } = {}) {
  const child = startChild(cmd, args, options);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c) => (stdout += c));
  child.stderr.on('data', (c) => (stderr += c));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const { code, signal, error } = await child.exited;
  clearTimeout(timer);
  if (error) stderr += error.message;
  if (timedOut) stderr += `\n(killed after ${Math.round(timeoutMs / 1000)} s)`;
  return { code, signal, stdout, stderr, timedOut };
}

/** Runs every cleanup step once, however many exit paths ask for it. */
export function cleanup() {
  cleaning ??= (async () => {
    await Promise.allSettled([...live].map((c) => stopChild(c)));
    while (cleanups.length > 0) {
      const fn = cleanups.pop();
      try {
        await fn();
      } catch (err) {
        process.stderr.write(`bench: cleanup step failed: ${err.message}\n`);
      }
    }
  })();
  return cleaning;
}

/** Runs a bench's main (which returns an exit code), always cleans up, and exits with that code (1 on error). */
export async function runMain(main) {
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    if (!isStopping()) process.stderr.write(`bench: ${err.message}\n`);
  } finally {
    await cleanup();
  }
  process.exit(code);
}

/** Ctrl-C, SIGTERM and a time budget all end in cleanup; a last synchronous kill covers abrupt exits. */
export function installExitHandlers(budgetMs) {
  const stop = (why, code) => {
    process.stderr.write(`\nbench: ${why}, cleaning up...\n`);
    const hard = setTimeout(() => process.exit(code), 30_000);
    hard.unref();
    cleanup().finally(() => process.exit(code));
  };
  process.once('SIGINT', () => stop('interrupted', 130));
  process.once('SIGTERM', () => stop('terminated', 143));
  const watchdog = setTimeout(() => stop(`time budget of ${Math.round(budgetMs / 1000)} s exceeded`, 1), budgetMs);
  watchdog.unref();
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function tryConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Waits until 127.0.0.1:port accepts connections; fails early when the child that should listen exits. */
export async function waitForPort(port, child, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  child.exited.then(() => (exited = true));
  while (Date.now() < deadline) {
    if (exited) throw new Error(`exited before listening on 127.0.0.1:${port}`);
    if (await tryConnect(port)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`did not listen on 127.0.0.1:${port} within ${timeoutMs / 1000} s`);
}
