// `pgtenant tenants create|list|show|set|suspend|resume|disconnect|drop|import`: the lifecycle service from the command line.
import type { Argv } from 'yargs';
import { migrationsDirFor, type OptionName } from '../../config.js';
import { TenantService } from '../../tenants/service.js';
import type { ImportResult } from '../../tenants/import.js';
import type { TenantDetails, TenantRecord } from '../../tenants/types.js';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError, columns, type Command, type CommandContext } from '../command.js';
import { withUpstream } from '../upstream.js';

const OPTIONS: readonly OptionName[] = ['upstream', 'isolation', 'migrationsDir'];

function withService<T>(ctx: CommandContext, fn: (svc: TenantService) => Promise<T>): Promise<T> {
  return withUpstream(ctx.config, ctx.log, (pool) =>
    fn(new TenantService(pool, { isolation: ctx.config.isolation, migrationsDir: migrationsDirFor(ctx.config), log: ctx.log })),
  );
}

const idArg = (y: Argv): Argv => y.positional('id', { type: 'string', describe: 'Tenant id (lowercase identifier)' });
const jsonFlag = (y: Argv): Argv => y.option('json', { type: 'boolean', describe: 'Print JSON' });

function showLines(t: TenantDetails): string[] {
  return [
    `id:       ${t.id}`,
    `state:    ${t.state}`,
    `schema:   ${t.schema}`,
    `role:     ${t.role ?? '(shared login role: schema isolation)'}`,
    `version:  ${t.schemaVersion ?? '(no migration applied)'} (${t.migrationsApplied} applied)`,
    `pool:     ${t.poolSize ?? "default (the proxy's --pool-size)"}`,
    `clients:  ${clientCap(t)}`,
    `created:  ${t.createdAt.toISOString()}`,
    `updated:  ${t.updatedAt.toISOString()}`,
  ];
}

const clientCap = (t: TenantRecord): string =>
  t.maxClients === null ? "default (the proxy's --max-tenant-clients)" : t.maxClients === 0 ? 'no cap' : `at most ${t.maxClients}`;

/** A limit given as a whole number or 'default' (null); undefined when the option is absent. */
function limitArg(args: Record<string, unknown>, option: string): number | null | undefined {
  if (args[option] === undefined) return undefined;
  const raw = String(args[option]);
  if (raw === 'default') return null;
  if (!/^\d+$/.test(raw)) throw new UsageError(`--${option}: expected a whole number or 'default', got '${raw}'`);
  return Number(raw);
}

function table(tenants: readonly TenantRecord[]): string[] {
  const rows = [['ID', 'STATE', 'SCHEMA', 'ROLE', 'CREATED'], ...tenants.map((t) => [t.id, t.state, t.schema, t.role ?? '-', t.createdAt.toISOString()])];
  return columns(rows);
}

const create: Command = {
  command: 'create <id>',
  describe: 'Create a tenant (role, schema, registry row) and apply the tenant migrations',
  options: OPTIONS,
  builder: (y) => idArg(y).option('password', { type: 'string', describe: 'Tenant password (default: generated and printed once)' }),
  async run(args, ctx) {
    const password = args.password as string | undefined;
    const result = await withService(ctx, (svc) => svc.create(String(args.id), password === undefined ? {} : { password }));
    const t = result.tenant;
    ctx.out(`created tenant ${t.id} (schema ${t.schema}, role ${t.role ?? '-'}, ${result.migrationsApplied} migration(s) applied)`);
    if (result.password !== null) ctx.out(`password: ${result.password}  (shown once; store it now)`);
    return EXIT_OK;
  },
};

const list: Command = {
  command: 'list',
  describe: 'List tenants',
  options: OPTIONS,
  builder: jsonFlag,
  async run(args, ctx) {
    const tenants = await withService(ctx, (svc) => svc.list());
    if (args.json) ctx.out(JSON.stringify(tenants));
    else if (tenants.length === 0) ctx.out('no tenants');
    else table(tenants).forEach((line) => ctx.out(line));
    return EXIT_OK;
  },
};

const show: Command = {
  command: 'show <id>',
  describe: 'Show one tenant',
  options: OPTIONS,
  builder: (y) => jsonFlag(idArg(y)),
  async run(args, ctx) {
    const t = await withService(ctx, (svc) => svc.details(String(args.id)));
    if (args.json) ctx.out(JSON.stringify(t));
    else showLines(t).forEach((line) => ctx.out(line));
    return EXIT_OK;
  },
};

/** A command on one tenant that calls the service and prints the line `act` returns. */
function tenantCommand(
  name: string,
  describe: string,
  act: (svc: TenantService, id: string, args: Record<string, unknown>) => Promise<string>,
  builder: (y: Argv) => Argv = idArg,
): Command {
  return {
    command: `${name} <id>`,
    describe,
    options: OPTIONS,
    builder,
    async run(args, ctx) {
      ctx.out(await withService(ctx, (svc) => act(svc, String(args.id), args)));
      return EXIT_OK;
    },
  };
}

const suspend = tenantCommand(
  'suspend',
  'Suspend a tenant: new connections are refused at once (its role loses LOGIN); open ones carry on unless --disconnect',
  async (svc, id, args) => {
    const t = await svc.suspend(id, { disconnect: args.disconnect === true });
    return `tenant ${t.id} suspended${args.disconnect ? ', open sessions disconnected' : ''}`;
  },
  (y) => idArg(y).option('disconnect', { type: 'boolean', describe: "Also end the tenant's open sessions on every proxy" }),
);
const resume = tenantCommand('resume', 'Resume a suspended tenant', async (svc, id) => `tenant ${(await svc.resume(id)).id} active`);
const disconnect = tenantCommand(
  'disconnect',
  "End a tenant's open sessions on every proxy (they get 57P01); the tenant stays active",
  async (svc, id) => `tenant ${(await svc.disconnect(id)).id}: every proxy was asked to end its sessions`,
);

const set = tenantCommand(
  'set',
  "Change a tenant's limits on each proxy: --pool-size N (backends in its pools), --max-clients N (client connections; 0: no cap), or 'default' for either",
  async (svc, id, args) => {
    // Both read before either is set, so a bad value changes nothing.
    const size = limitArg(args, 'pool-size');
    const clients = limitArg(args, 'max-clients');
    if (size === undefined && clients === undefined) throw new UsageError('tenants set: give --pool-size, --max-clients or both');
    const said: string[] = [];
    if (size !== undefined) {
      const t = await svc.setPoolSize(id, size);
      said.push(`tenant ${t.id}: pool size ${t.poolSize ?? "default (the proxy's --pool-size)"}`);
    }
    if (clients !== undefined) {
      const t = await svc.setMaxClients(id, clients);
      said.push(`tenant ${t.id}: clients ${clientCap(t)}`);
    }
    return said.join('\n');
  },
  (y) =>
    idArg(y)
      .option('pool-size', { type: 'string', describe: "Backends per pool for this tenant, or 'default'" })
      .option('max-clients', { type: 'string', describe: "Client connections this tenant may hold at once (0: no cap), or 'default'" }),
);

const drop: Command = {
  command: 'drop <id>',
  describe: "Drop a tenant: its schema with all data, its role and its registry rows (needs --yes)",
  options: OPTIONS,
  builder: (y) => idArg(y).option('yes', { type: 'boolean', describe: 'Confirm: the data is gone for good' }),
  async run(args, ctx) {
    const id = String(args.id);
    if (args.yes !== true) {
      process.stderr.write(`pgtenant: tenants drop ${id} deletes the tenant's schema and data for good; add --yes to confirm\n`);
      return EXIT_USAGE;
    }
    await withService(ctx, (svc) => svc.drop(id));
    ctx.out(`tenant ${id} dropped`);
    return EXIT_OK;
  },
};

/** One line per schema, then a summary; passwords appear here once and nowhere else. */
function importLines(pattern: string, r: ImportResult): string[] {
  if (r.imported.length + r.skipped.length + r.failed.length === 0) {
    return [`no schema to import matches '${pattern}' (system schemas, public, pgtenant and registered tenants are left out)`];
  }
  const lines = [
    ...r.imported.map((t) =>
      t.password === null
        ? `imported ${t.schema} (schema isolation, shared login role)`
        : `imported ${t.schema} (role ${t.role ?? '-'}) password: ${t.password}  (shown once; store it now)`,
    ),
    ...r.skipped.map((s) => `skipped  ${s.schema}: ${s.reason}`),
    ...r.failed.map((f) => `failed   ${f.schema}: ${f.code ?? 'error'} ${f.message}`),
    `${r.imported.length} imported, ${r.skipped.length} skipped, ${r.failed.length} failed`,
  ];
  if (r.imported.length > 0) {
    lines.push('imported schemas keep their objects and no migration is run: record the versions they already have with `pgtenant migrate stamp --tenant ID --version V`');
  }
  return lines;
}

const importSchemas: Command = {
  command: 'import',
  describe: 'Register existing schemas matching a SQL LIKE pattern as tenants (role isolation: a new role per schema that owns it)',
  options: OPTIONS,
  builder: (y) =>
    jsonFlag(y).option('schema-pattern', {
      type: 'string',
      demandOption: true,
      describe: "SQL LIKE pattern over schema names, e.g. 'tenant_%'; the tenant id is the schema name",
    }),
  async run(args, ctx) {
    const pattern = String(args.schemaPattern);
    const result = await withService(ctx, (svc) => svc.import(pattern));
    if (args.json) ctx.out(JSON.stringify(result));
    else importLines(pattern, result).forEach((line) => ctx.out(line));
    return result.failed.length > 0 ? EXIT_FAILURE : EXIT_OK;
  },
};

export const tenantsCommand: Command = {
  command: 'tenants',
  describe: 'Create, list, show, change, suspend, resume, disconnect, drop and import tenants',
  options: OPTIONS,
  subcommands: [create, list, show, set, suspend, resume, disconnect, drop, importSchemas],
};
