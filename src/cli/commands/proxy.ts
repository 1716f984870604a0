// `pgtenant proxy`: runs the proxy until SIGINT/SIGTERM, then shuts down gracefully.
import { ConfigError, requireUpstream } from '../../config.js';
import { startProxy } from '../../proxy/server.js';
import { EXIT_OK, type Command } from '../command.js';

export const proxyCommand: Command = {
  command: 'proxy',
  describe: 'Run the proxy',
  options: ['upstream', 'listen', 'adminListen', 'adminToken', 'isolation', 'poolMode', 'tlsCert', 'tlsKey', 'clientTls', 'connectTimeout', 'shutdownTimeout', 'tenantCacheTtl'],
  async run(_args, { config, log, stopped }) {
    requireUpstream(config);
    if (config.poolMode === 'transaction') {
      throw new ConfigError('--pool-mode transaction is not available yet: it needs proxy-side authentication (run in session mode)');
    }
    if (config.adminListen) log.info('the admin HTTP API is not part of this version yet; --admin-listen is ignored');
    const server = await startProxy({ config, log });
    const signal = await stopped;
    log.info({ signal }, 'stop requested');
    await server.close();
    return EXIT_OK;
  },
};
