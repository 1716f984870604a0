// Errors sent to Postgres clients: one class, named constructors, each with a real SQLSTATE.

export type Severity = 'FATAL' | 'ERROR' | 'WARNING' | 'NOTICE';

export class PgError extends Error {
  override readonly name = 'PgError';
  constructor(
    readonly code: string,
    message: string,
    readonly severity: Severity = 'FATAL',
    readonly detail?: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

export const protocolViolation = (message: string) => new PgError('08P01', message);
export const invalidPassword = (user: string) => new PgError('28P01', `password authentication failed for user "${user}"`);
export const invalidAuthorization = (message: string) => new PgError('28000', message);
export const cannotConnectNow = (message: string, hint?: string) => new PgError('57P03', message, 'FATAL', undefined, hint);
export const adminShutdown = (message = 'terminating connection due to administrator command') => new PgError('57P01', message);
export const connectionFailure = (message: string) => new PgError('08006', message);
export const tooManyConnections = (message: string, hint?: string) => new PgError('53300', message, 'FATAL', undefined, hint);
export const featureNotSupported = (message: string) => new PgError('0A000', message);
export const idleInTransactionTimeout = () => new PgError('25P03', 'terminating connection due to idle-in-transaction timeout');
