// yargs entry: wires the command modules to the config table and turns outcomes into exit codes.
import yargs from 'yargs';
import { ConfigError, OPTIONS, flagName, readConfigFile, resolveConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { EXIT_FAILURE, EXIT_USAGE } from './command.js';
import { commands } from './commands/index.js';
/** A mistake in how the command was called: exit code 2. */
export class UsageError extends Error {
    name = 'UsageError';
}
function addOptions(y, names) {
    for (const name of names) {
        const spec = OPTIONS[name];
        y.option(flagName(name), {
            type: spec.kind,
            describe: spec.describe + ('default' in spec ? ` (default: ${String(spec.default)})` : ''),
            ...('choices' in spec ? { choices: spec.choices } : {}),
        });
    }
    return y;
}
function stopSignal() {
    return new Promise((resolve) => {
        const on = (sig) => {
            process.off('SIGINT', on);
            process.off('SIGTERM', on);
            resolve(sig);
        };
        process.on('SIGINT', on);
        process.on('SIGTERM', on);
    });
}
async function execute(cmd, argv) {
    const flags = {};
    for (const name of Object.keys(OPTIONS))
        if (argv[name] !== undefined)
            flags[name] = argv[name];
    const file = typeof argv.config === 'string' ? readConfigFile(argv.config) : undefined;
    const config = resolveConfig({ flags, env: process.env, ...(file ? { file } : {}) });
    const log = createLogger(config.logLevel);
    const ctx = {
        config,
        log,
        out: (line) => process.stdout.write(line + '\n'),
        stopped: stopSignal(),
    };
    try {
        return await cmd.run(argv, ctx);
    }
    finally {
        log.flush();
    }
}
function register(y, cmd, done) {
    return y.command(cmd.command, cmd.describe, (sub) => {
        addOptions(sub, cmd.options);
        if (cmd.builder)
            cmd.builder(sub);
        if (cmd.subcommands) {
            for (const child of cmd.subcommands)
                register(sub, child, done);
            sub.demandCommand(1, `${String(cmd.command)}: name a subcommand`);
        }
        return sub;
    }, cmd.run ? (argv) => done(execute(cmd, argv)) : undefined);
}
export async function main(args) {
    let outcome;
    let usage;
    const y = yargs(args)
        .scriptName('pgtenant')
        .strict()
        .option('config', { type: 'string', describe: 'JSON or YAML file with options' })
        .option('log-level', { type: 'string', describe: 'Log level (default: info)' })
        .demandCommand(1, 'name a command')
        .recommendCommands()
        .help()
        .version()
        .fail((msg, err) => {
        if (err)
            throw err;
        usage = msg;
    })
        .exitProcess(false);
    for (const cmd of commands)
        register(y, cmd, (p) => (outcome = p));
    try {
        await y.parseAsync();
        if (usage !== undefined)
            throw new UsageError(usage);
        return outcome ? await outcome : 0;
    }
    catch (err) {
        const e = err;
        const debug = args.includes('debug') && args.some((a) => a.startsWith('--log-level'));
        process.stderr.write(`pgtenant: ${debug && e.stack ? e.stack : e.message}\n`);
        if (e instanceof UsageError || e instanceof ConfigError) {
            if (e instanceof UsageError)
                process.stderr.write("Run 'pgtenant --help' for usage.\n");
            return EXIT_USAGE;
        }
        return EXIT_FAILURE;
    }
}
//# sourceMappingURL=main.js.map