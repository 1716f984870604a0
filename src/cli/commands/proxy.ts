// `pgtenant proxy`: runs the proxy and its admin API until SIGINT/SIGTERM, then drains; SIGHUP reloads the configuration.
import { startRuntime, type Runtime } from '../../runtime.js';
import { EXIT_OK, type Command } from '../command.js';
import { exitOnNextStopSignal, onHangup } from '../signals.js';

export const proxyCommand: Command = {
  command: 'proxy',
  describe: 'Run the proxy and the admin API',
  options: [
    'upstream', 'listen', 'adminListen', 'adminToken', 'metricsTenantLimit', 'isolation', 'poolMode', 'auth', 'poolSize', 'maxBackends', 'workers',
    'poolMinIdle', 'poolWaitTimeout', 'serverIdleTimeout', 'serverLifetime', 'tlsCert', 'tlsKey', 'clientTls',
    'connectTimeout', 'shutdownTimeout', 'maxClientConnections', 'maxTenantClients', 'startupTimeout', 'idleTransactionTimeout',
    'tenantCacheTtl', 'migrationsDir',
  ],
  async run(_args, { config, log, stopped, loadConfig }) {
    let runtime: Runtime | null = null;
    // From the start: SIGHUP's default action would end a proxy that is still starting.
    const stopReloading = onHangup(log, () => (runtime ? runtime.reload(loadConfig()) : log.warn('still starting: SIGHUP ignored')));
    try {
      runtime = await startRuntime({ config, log });
    } catch (err) {
      stopReloading();
      throw err;
    }
    const signal = await stopped;
    stopReloading();
    log.info({ signal }, 'stop requested: draining (send it again to exit at once)');
    exitOnNextStopSignal(log);
    await runtime.close();
    return EXIT_OK;
  },
};
