// yargs entry: wires the command modules to the config table and turns outcomes into exit codes.
import { readFileSync } from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { ConfigError, OPTIONS, flagName, readConfigFile, resolveConfig, type OptionName } from '../config.js';
import { createLogger } from '../logger.js';
import { EXIT_FAILURE, EXIT_USAGE, UsageError, type Command, type CommandContext } from './command.js';
import { commands } from './commands/index.js';
import { stopSignal } from './signals.js';

function addOptions(y: Argv, names: readonly OptionName[]): Argv {
  for (const name of names) {
    const spec = OPTIONS[name];
    y.option(flagName(name), {
      type: spec.kind,
      describe: spec.describe + ('default' in spec ? ` (default: ${String(spec.default)})` : ''),
      ...('choices' in spec ? { choices: spec.choices as unknown as string[] } : {}),
    });
  }
  return y;
}

async function execute(cmd: Command, argv: Record<string, unknown>): Promise<number> {
  // Only the command's own options are configuration: `tenants set --pool-size` is not the proxy's --pool-size.
  const flags: Record<string, unknown> = {};
  for (const name of ['logLevel', ...(cmd.options ?? [])]) if (argv[name] !== undefined) flags[name] = argv[name];
  // Read again on reload (SIGHUP): the file may have changed; flags and environment cannot.
  const load = () => {
    const file = typeof argv.config === 'string' ? readConfigFile(argv.config) : undefined;
    return resolveConfig({ flags, env: process.env, ...(file ? { file } : {}) });
  };
  const config = load();
  const log = createLogger(config.logLevel);
  const ctx: CommandContext = {
    config,
    log,
    out: (line) => process.stdout.write(line + '\n'),
    stopped: stopSignal(),
    loadConfig: load,
  };
  try {
    return await cmd.run!(argv, ctx);
  } finally {
    log.flush();
  }
}

function register(y: Argv, cmd: Command, done: (p: Promise<number>) => void): Argv {
  return y.command(
    cmd.command as string | string[],
    cmd.describe,
    (sub) => {
      addOptions(sub, cmd.options);
      if (cmd.builder) cmd.builder(sub);
      if (cmd.subcommands) {
        for (const child of cmd.subcommands) register(sub, child, done);
        sub.demandCommand(1, `${String(cmd.command)}: name a subcommand`);
      }
      return sub;
    },
    cmd.run ? (argv) => done(execute(cmd, argv as Record<string, unknown>)) : undefined,
  );
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(args: string[]): Promise<number> {
  if (args.length === 1 && args[0] === '--version') {
    process.stdout.write(packageVersion() + '\n');
    return 0;
  }
  let outcome: Promise<number> | undefined;
  let usage: string | undefined;
  const y = yargs(args)
    .scriptName('pgtenant')
    .strict()
    .option('config', { type: 'string', describe: 'JSON or YAML file with options' })
    .option('log-level', { type: 'string', describe: 'Log level (default: info)' })
    .demandCommand(1, 'name a command')
    .recommendCommands()
    .help()
    // Not yargs' global --version: `migrate stamp --version V` needs the name (see packageVersion).
    .version(false)
    .fail((msg, err) => {
      if (err) throw err;
      usage = msg;
    })
    .exitProcess(false);
  for (const cmd of commands) register(y, cmd, (p) => (outcome = p));
  try {
    await y.parseAsync();
    if (usage !== undefined) throw new UsageError(usage);
    return outcome ? await outcome : 0;
  } catch (err) {
    const e = err as Error;
    const debug = args.includes('debug') && args.some((a) => a.startsWith('--log-level'));
    process.stderr.write(`pgtenant: ${debug && e.stack ? e.stack : e.message}\n`);
    if (e instanceof UsageError || e instanceof ConfigError) {
      if (e instanceof UsageError) process.stderr.write("Run 'pgtenant --help' for usage.\n");
      return EXIT_USAGE;
    }
    return EXIT_FAILURE;
  }
}
