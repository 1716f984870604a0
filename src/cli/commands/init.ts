// `pgtenant init`: installs or upgrades the control schema in the upstream database.
import { EXIT_OK, type Command } from '../command.js';
import { installControlSchema, CONTROL_SCHEMA_VERSION } from '../../tenants/control-schema.js';
import { withUpstream } from '../upstream.js';
import { redactUrl, requireUpstream } from '../../config.js';

export const initCommand: Command = {
  command: 'init',
  describe: 'Install or upgrade the control schema pgtenant (idempotent)',
  options: ['upstream'],
  async run(_args, ctx) {
    await withUpstream(ctx.config, ctx.log, async (pool) => {
      const client = await pool.connect();
      try {
        await installControlSchema(client);
      } finally {
        client.release();
      }
    });
    ctx.out(`control schema pgtenant is ready (version ${CONTROL_SCHEMA_VERSION}) in ${redactUrl(requireUpstream(ctx.config))}`);
    return EXIT_OK;
  },
};
