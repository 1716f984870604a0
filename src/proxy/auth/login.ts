// Logs a backend in as the role with credentials recovered from a client's proof (SCRAM pass-through, or the MD5 secret).
import { serialize } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { PgError, protocolViolation } from '../errors.js';
import { backendError, type BackendConnection } from '../upstream.js';
import { md5Response, ScramClientExchange } from './scram.js';
import type { BackendCredentials } from './verify.js';

type Auth = BackendMessage & { mechanisms?: string[]; data?: string; salt?: Buffer };

const cannotPassThrough = (what: string) =>
  new PgError(
    '28000',
    `the upstream server asks for ${what}, which pgtenant cannot answer without the password`,
    'FATAL',
    undefined,
    'Use scram-sha-256 (or md5 for roles with MD5 secrets) in the server\'s pg_hba.conf for connections from pgtenant.',
  );

/** Answers the server's authentication requests until AuthenticationOk, then reads up to ReadyForQuery. */
export async function loginBackend(backend: BackendConnection, credentials: BackendCredentials): Promise<void> {
  let scram: ScramClientExchange | null = null;
  for (;;) {
    const m = (await backend.next()) as Auth;
    switch (m.name) {
      case 'authenticationOk':
        return backend.readUntilReady();
      case 'error':
        throw backendError(m);
      case 'notice':
        break;
      case 'authenticationMD5Password':
        if (credentials.kind !== 'md5') throw cannotPassThrough('an MD5 password while the role has a SCRAM secret');
        backend.send(serialize.password(md5Response(credentials.secret, m.salt!)));
        break;
      case 'authenticationSASL':
        if (credentials.kind !== 'scram' || !m.mechanisms?.includes('SCRAM-SHA-256')) {
          throw cannotPassThrough(`SASL (${m.mechanisms?.join(', ')}) while the role has an MD5 secret`);
        }
        scram = new ScramClientExchange(credentials.keys);
        backend.send(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', scram.clientFirst().toString('utf8')));
        break;
      case 'authenticationSASLContinue':
        if (!scram) throw protocolViolation('SASLContinue from the upstream server before SASL started');
        backend.send(serialize.sendSCRAMClientFinalMessage(scram.clientFinal(Buffer.from(m.data ?? '', 'utf8')).toString('utf8')));
        break;
      case 'authenticationSASLFinal':
        if (!scram) throw protocolViolation('SASLFinal from the upstream server before SASL started');
        scram.verifyServerFinal(Buffer.from(m.data ?? '', 'utf8'));
        break;
      case 'authenticationCleartextPassword':
        throw cannotPassThrough('a cleartext password');
      default:
        throw protocolViolation(`unexpected message "${m.name}" from the upstream server during authentication`);
    }
  }
}
