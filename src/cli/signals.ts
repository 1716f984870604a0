// Process signals for long-running commands: the stop request, a second one that does not wait, and SIGHUP.
import cluster from 'node:cluster';
import type { Logger } from '../logger.js';
import { EXIT_FAILURE } from './command.js';

/**
 * A worker of --workers N stops when its primary says so (SIGTERM). Ctrl-C reaches the whole process group:
 * the primary's SIGTERM that follows must start the worker's drain, not cut it short as a second signal.
 */
const STOP_SIGNALS: readonly NodeJS.Signals[] = cluster.isWorker ? ['SIGTERM'] : ['SIGINT', 'SIGTERM'];

/** Resolves on the first SIGINT or SIGTERM (a worker: SIGTERM only, and SIGINT is ignored). */
export function stopSignal(): Promise<NodeJS.Signals> {
  if (cluster.isWorker) process.on('SIGINT', () => undefined);
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      for (const s of STOP_SIGNALS) process.off(s, on);
      resolve(sig);
    };
    for (const s of STOP_SIGNALS) process.on(s, on);
  });
}

/**
 * From now on, a SIGINT or SIGTERM ends the process at once: for an operator whose drain takes too long
 * (sessions that never leave). Sessions are cut; clients see their connection close.
 */
export function exitOnNextStopSignal(log: Logger): void {
  const now = (sig: NodeJS.Signals) => {
    log.warn({ signal: sig }, 'second stop signal: exiting now, without waiting for sessions');
    log.flush();
    process.exit(EXIT_FAILURE);
  };
  for (const s of STOP_SIGNALS) process.once(s, now);
}

/** Calls `reload` on every SIGHUP until the returned function is called; a failed reload is logged, not fatal. */
export function onHangup(log: Logger, reload: () => void): () => void {
  const on = () => {
    log.info('SIGHUP: reloading the configuration');
    try {
      reload();
    } catch (err) {
      log.error({ err: (err as Error).message }, 'reload failed: the running configuration stays');
    }
  };
  process.on('SIGHUP', on);
  return () => process.off('SIGHUP', on);
}
