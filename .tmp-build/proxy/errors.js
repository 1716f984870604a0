// Errors sent to Postgres clients: one class, named constructors, each with a real SQLSTATE.
export class PgError extends Error {
    code;
    severity;
    detail;
    hint;
    name = 'PgError';
    constructor(code, message, severity = 'FATAL', detail, hint) {
        super(message);
        this.code = code;
        this.severity = severity;
        this.detail = detail;
        this.hint = hint;
    }
}
export const protocolViolation = (message) => new PgError('08P01', message);
export const invalidPassword = (user) => new PgError('28P01', `password authentication failed for user "${user}"`);
export const invalidAuthorization = (message) => new PgError('28000', message);
export const cannotConnectNow = (message, hint) => new PgError('57P03', message, 'FATAL', undefined, hint);
export const adminShutdown = (message = 'terminating connection due to administrator command') => new PgError('57P01', message);
export const connectionFailure = (message) => new PgError('08006', message);
export const featureNotSupported = (message) => new PgError('0A000', message);
export const tooManyConnections = (message) => new PgError('53300', message);
//# sourceMappingURL=errors.js.map