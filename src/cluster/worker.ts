// A proxy worker process (--workers N): runs the proxy, answers the primary's requests, passes on other workers' cancels.
import { Metrics } from '../admin/metrics.js';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { CancelRegistry } from '../proxy/cancel.js';
import { startProxy, type ProxyServer } from '../proxy/server.js';
import { isPgtenantMessage, WORKER_SLOT_ENV, type FromWorker, type ToWorker, type WorkerOp } from './messages.js';

export interface ProxyWorker {
  readonly proxy: ProxyServer;
  readonly metrics: Metrics;
  close(graceMs?: number): Promise<void>;
}

export async function startWorker({ config, log: parent }: { config: Config; log: Logger }): Promise<ProxyWorker> {
  const slot = Number(process.env[WORKER_SLOT_ENV]);
  const log = parent.child({ worker: slot });
  const send = (m: FromWorker): void => {
    if (process.connected) process.send!(m);
  };
  const cancels = new CancelRegistry(slot, (to, processId, secretKey) =>
    send({ pgtenant: 'cancel', slot: to, processId, secretKey: secretKey.toString('base64') }),
  );
  const metrics = new Metrics({ tenantLimit: config.metricsTenantLimit });
  let proxy: ProxyServer;
  try {
    proxy = await startProxy({ config, log, observer: metrics, cancels });
  } catch (err) {
    // The IPC channel would keep this process alive: let go of it, so the primary sees the exit (and the error).
    if (process.connected) process.disconnect();
    throw err;
  }
  metrics.attachProxy(proxy);

  const ops: { [K in WorkerOp['op']]: (req: Extract<WorkerOp, { op: K }>) => unknown } = {
    connections: () => proxy.connections(),
    disconnect: (req) => proxy.disconnectTenant(req.tenant, req.reason),
    metrics: () => metrics.json(),
  };
  const onMessage = (m: unknown): void => {
    if (!isPgtenantMessage<ToWorker>(m)) return;
    if (m.pgtenant === 'cancel') {
      cancels.find(m.processId, Buffer.from(m.secretKey, 'base64'))?.cancel();
      return;
    }
    const run = ops[m.op] as (req: WorkerOp) => unknown;
    Promise.resolve()
      .then(() => run(m))
      .then(
        (value) => send({ pgtenant: 'reply', id: m.id, value }),
        (err: Error) => send({ pgtenant: 'reply', id: m.id, error: err.message }),
      );
  };
  // Without its primary nobody would stop this worker or route its cancels: drain and leave.
  const orphaned = (): void => {
    log.warn('the cluster primary is gone: shutting down');
    void proxy.close();
  };
  process.on('message', onMessage);
  process.once('disconnect', orphaned);
  return {
    proxy,
    metrics,
    async close(graceMs) {
      process.off('disconnect', orphaned);
      await proxy.close(graceMs);
      process.off('message', onMessage);
      // The IPC channel keeps the event loop alive; letting go of it lets the process end.
      if (process.connected) process.disconnect();
    },
  };
}
