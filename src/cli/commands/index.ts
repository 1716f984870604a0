// The command table: every CLI command module, in help order.
import type { Command } from '../command.js';

export const commands: readonly Command[] = [];
