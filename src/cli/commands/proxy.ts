// `pgtenant proxy`: runs the proxy and its admin API until SIGINT/SIGTERM, then shuts down gracefully.
import { startRuntime } from '../../runtime.js';
import { EXIT_OK, type Command } from '../command.js';

export const proxyCommand: Command = {
  command: 'proxy',
  describe: 'Run the proxy and the admin API',
  options: [
    'upstream', 'listen', 'adminListen', 'adminToken', 'metricsTenantLimit', 'isolation', 'poolMode', 'auth', 'poolSize', 'maxBackends', 'workers',
    'poolMinIdle', 'poolWaitTimeout', 'serverIdleTimeout', 'serverLifetime', 'tlsCert', 'tlsKey', 'clientTls',
    'connectTimeout', 'shutdownTimeout', 'tenantCacheTtl', 'migrationsDir',
  ],
  async run(_args, { config, log, stopped }) {
    const runtime = await startRuntime({ config, log });
    const signal = await stopped;
    log.info({ signal }, 'stop requested');
    await runtime.close();
    return EXIT_OK;
  },
};
