// The pino root logger; sessions, tenants and jobs log through child loggers of it.
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level = 'info', destination?: pino.DestinationStream): Logger {
  return pino({ name: 'pgtenant', level, base: { pid: process.pid } }, destination ?? pino.destination({ fd: 2, sync: false }));
}

/** A logger that drops everything, for tests and library use. */
export const silentLogger: Logger = pino({ level: 'silent' });
