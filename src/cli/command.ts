// The shape of one CLI command: yargs wiring plus a run function that calls services and returns an exit code.
import type { Argv } from 'yargs';
import type { Config, OptionName } from '../config.js';
import type { Logger } from '../logger.js';

export interface CommandContext {
  readonly config: Config;
  readonly log: Logger;
  /** Writes a line for the user on stdout. */
  readonly out: (line: string) => void;
  /** Resolves when the process is asked to stop (SIGINT or SIGTERM). */
  readonly stopped: Promise<NodeJS.Signals>;
  /** Reads the configuration again from the same flags, environment and --config file (throws ConfigError). */
  readonly loadConfig: () => Config;
}

export interface Command {
  readonly command: string | readonly string[];
  readonly describe: string;
  /** Shared options (from the config table) this command accepts. */
  readonly options: readonly OptionName[];
  readonly builder?: (y: Argv) => Argv;
  /** Subcommands, for command groups such as `tenants`. */
  readonly subcommands?: readonly Command[];
  readonly run?: (args: Record<string, unknown>, ctx: CommandContext) => Promise<number>;
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** A mistake in how the command was called: exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Rows of cells as aligned text columns, for list-style output. */
export function columns(rows: readonly (readonly string[])[], indent = ''): string[] {
  const widths = (rows[0] ?? []).map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => indent + r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}
