// The cluster primary (--workers N): forks the proxy workers, restarts those that die, routes cancels between them, asks them for the admin API.
import cluster, { type Worker } from 'node:cluster';
import type { MetricsJson } from '../admin/metrics.js';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { sumConnections, type ProxyControl, type TenantConnections } from '../proxy/activity.js';
import { isPgtenantMessage, WORKER_SLOT_ENV, type FromWorker, type ToWorker, type WorkerOp } from './messages.js';

/** How long a worker gets to answer the admin API before it is left out of the answer. */
const REPLY_TIMEOUT_MS = 2000;
/** A worker that died is started again after this, doubled for each quick death in a row (up to the maximum). */
const RESTART_DELAY_MS = 1000;
const RESTART_DELAY_MAX_MS = 30_000;
/** A worker that lived this long died of something new: its slot's delay starts again from the first. */
const STABLE_AFTER_MS = 10_000;
/** Beyond the drain grace, how long workers get to exit before they are killed. */
const EXIT_GRACE_MS = 5000;

export interface ProxyWorkers extends ProxyControl {
  /** Every live worker's metrics, for the primary to sum. */
  metrics(): Promise<MetricsJson[]>;
  /** Asks every worker to drain for up to `graceMs`, and waits for them to exit. */
  close(graceMs?: number): Promise<void>;
  /** Passes SIGHUP on: each worker reads the configuration again. */
  reload(): void;
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** Forks `config.workers` workers, which re-run this command and share its listener; resolves once all listen. */
export async function startWorkers({ config, log: parent }: { config: Config; log: Logger }): Promise<ProxyWorkers> {
  const log = parent.child({ component: 'cluster' });
  const slots: (Worker | null)[] = new Array<Worker | null>(config.workers).fill(null);
  const pending = new Map<number, Pending>();
  let nextId = 0;
  let closing = false;
  /** Until every worker listens, a worker that exits fails the start instead of being replaced. */
  let started = false;

  const onMessage = (m: unknown): void => {
    if (!isPgtenantMessage<FromWorker>(m)) return;
    if (m.pgtenant === 'cancel') {
      slots[m.slot]?.send(m satisfies ToWorker);
      return;
    }
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve(m.value);
  };

  const quickDeaths: number[] = new Array<number>(config.workers).fill(0);
  const fork = (slot: number): Worker => {
    const worker = cluster.fork({ [WORKER_SLOT_ENV]: String(slot) });
    const startedAt = Date.now();
    slots[slot] = worker;
    worker.on('message', onMessage);
    worker.once('exit', (code, signal) => {
      if (slots[slot] === worker) slots[slot] = null;
      if (closing || !started) return;
      // A worker that cannot start (the upstream is down) is retried ever more slowly, not every second.
      quickDeaths[slot] = Date.now() - startedAt < STABLE_AFTER_MS ? quickDeaths[slot]! + 1 : 0;
      const delay = Math.min(RESTART_DELAY_MAX_MS, RESTART_DELAY_MS * 2 ** Math.max(0, quickDeaths[slot]! - 1));
      log.error({ worker: slot, code, signal, restartInMs: delay }, 'proxy worker exited; starting another');
      setTimeout(() => closing || fork(slot), delay).unref();
    });
    return worker;
  };

  const request = (worker: Worker, op: WorkerOp): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const id = ++nextId;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`worker pid ${worker.process.pid} did not answer within ${REPLY_TIMEOUT_MS} ms`));
      }, REPLY_TIMEOUT_MS);
      pending.set(id, { resolve, reject, timer });
      worker.send({ pgtenant: 'request', id, ...op } satisfies ToWorker);
    });

  /** Every live worker's answer; one that fails or is too slow is left out (and logged), not fatal. */
  const ask = async <T>(op: WorkerOp): Promise<T[]> => {
    const live = slots.filter((w): w is Worker => w !== null && w.isConnected());
    const answers = await Promise.allSettled(live.map((w) => request(w, op)));
    const values: T[] = [];
    for (const a of answers) {
      if (a.status === 'fulfilled') values.push(a.value as T);
      else log.warn({ err: (a.reason as Error).message, op: op.op }, 'a proxy worker did not answer');
    }
    return values;
  };

  // All workers must come up; the first that exits before listening fails the start (its own log says why).
  const address = await new Promise<{ host: string; port: number }>((resolve, reject) => {
    let listening = 0;
    let bound: { host: string; port: number } | null = null;
    for (let slot = 0; slot < config.workers; slot++) {
      const worker = fork(slot);
      const failed = (code: number | null): void => {
        closing = true;
        for (const w of slots) w?.process.kill('SIGTERM');
        reject(new Error(`proxy worker ${slot} exited (code ${code}) before listening; its log says why`));
      };
      worker.once('exit', failed);
      worker.once('listening', (addr) => {
        worker.off('exit', failed);
        bound ??= { host: addr.address, port: addr.port };
        if (++listening === config.workers) resolve(bound);
      });
    }
  });
  started = true;
  // However this process ends (a second stop signal exits at once), no worker outlives it.
  process.once('exit', () => {
    for (const w of slots) if (w && !w.isDead()) w.process.kill('SIGKILL');
  });
  log.info({ workers: config.workers, listen: `${address.host}:${address.port}` }, 'proxy workers listening');

  return {
    address,
    get closing() {
      return closing;
    },
    connections: async () => sumConnections(await ask<TenantConnections[]>({ op: 'connections' })),
    disconnectTenant: async (tenant, reason) =>
      (await ask<number>({ op: 'disconnect', tenant, reason })).reduce((a, b) => a + b, 0),
    metrics: () => ask<MetricsJson>({ op: 'metrics' }),
    reload() {
      for (const w of slots) if (w && !w.isDead()) w.process.kill('SIGHUP');
    },
    async close(graceMs = config.shutdownTimeout) {
      closing = true;
      const live = slots.filter((w): w is Worker => w !== null && !w.isDead());
      const exited = live.map((w) => new Promise<void>((resolve) => (w.isDead() ? resolve() : w.once('exit', () => resolve()))));
      // Each worker drains as it would on its own SIGTERM.
      for (const w of live) w.process.kill('SIGTERM');
      const killer = setTimeout(() => {
        for (const w of live) if (!w.isDead()) w.process.kill('SIGKILL');
      }, graceMs + EXIT_GRACE_MS);
      await Promise.all(exited);
      clearTimeout(killer);
      log.info('proxy workers stopped');
    },
  };
}
