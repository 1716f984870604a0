// The command table: every CLI command module, in help order.
import type { Command } from '../command.js';
import { demoCommand } from './demo.js';
import { initCommand } from './init.js';
import { migrateCommand } from './migrate.js';
import { proxyCommand } from './proxy.js';
import { tenantsCommand } from './tenants.js';

export const commands: readonly Command[] = [demoCommand, proxyCommand, initCommand, tenantsCommand, migrateCommand];
