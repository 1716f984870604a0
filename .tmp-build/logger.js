// The pino root logger; sessions, tenants and jobs log through child loggers of it.
import pino from 'pino';
export function createLogger(level = 'info', destination) {
    return pino({ name: 'pgtenant', level, base: { pid: process.pid } }, destination ?? pino.destination({ fd: 2, sync: false }));
}
/** A logger that drops everything, for tests and library use. */
export const silentLogger = pino({ level: 'silent' });
//# sourceMappingURL=logger.js.map