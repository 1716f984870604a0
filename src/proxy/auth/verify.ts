// Proxy-side authentication: checks the client's SCRAM-SHA-256 or MD5 answer against the role's secret from the auth query.
import { randomBytes } from 'node:crypto';
import type { RoleSecret } from '../../tenants/directory.js';
import type { ClientConnection } from '../client.js';
import { invalidAuthorization, invalidPassword, protocolViolation } from '../errors.js';
import { Frontend } from '../protocol/constants.js';
import { parsePasswordMessage, parseSASLInitialResponse } from '../protocol/frontend.js';
import type { BackendWriter } from '../protocol/writer.js';
import { mockAuthentication } from './mock.js';
import { isMd5Secret, parseScramSecret, ScramServerExchange, verifyMd5Response, type ScramKeys } from './scram.js';

/** What logging into a backend as the role needs, recovered from the client's proof (never the password). */
export type BackendCredentials = { readonly kind: 'scram'; readonly keys: ScramKeys } | { readonly kind: 'md5'; readonly secret: string };

const SCRAM = 'SCRAM-SHA-256';
const SCRAM_PLUS = 'SCRAM-SHA-256-PLUS';

/** What pgtenant offers: -PLUS too on a TLS connection whose certificate allows binding (as PostgreSQL does). */
function scramMechanisms(endPoint: Buffer | null): string[] {
  return endPoint ? [SCRAM_PLUS, SCRAM] : [SCRAM];
}

async function scram(
  client: ClientConnection,
  writer: BackendWriter,
  user: string,
  secret: NonNullable<ReturnType<typeof parseScramSecret>>,
  endPoint: Buffer | null,
) {
  const offered = scramMechanisms(endPoint);
  client.write(writer.authenticationSASL(offered).flush());
  const first = await client.readMessage(Frontend.PasswordMessage, 'SASLInitialResponse');
  const { mechanism, response } = parseSASLInitialResponse(first.body);
  if (!offered.includes(mechanism)) throw protocolViolation('client selected an invalid SASL authentication mechanism');
  if (!response) throw protocolViolation('malformed SCRAM message: no client-first-message');
  const exchange = new ScramServerExchange(secret, undefined, { offered: endPoint !== null, selected: mechanism === SCRAM_PLUS, endPoint });
  client.write(writer.authenticationSASLContinue(exchange.serverFirst(response)).flush());
  const final = await client.readMessage(Frontend.PasswordMessage, 'SASLResponse');
  const result = exchange.clientFinal(final.body);
  if (!result) throw invalidPassword(user);
  client.write(writer.authenticationSASLFinal(result.serverFinal).flush());
  return result.keys;
}

async function md5(client: ClientConnection, writer: BackendWriter, user: string, secret: string): Promise<void> {
  const salt = randomBytes(4);
  client.write(writer.authenticationMD5Password(salt).flush());
  const reply = await client.readMessage(Frontend.PasswordMessage, 'password');
  if (!verifyMd5Response(secret, salt, parsePasswordMessage(reply.body))) throw invalidPassword(user);
}

/**
 * Runs the password exchange the role's secret calls for and returns the credentials for its backends.
 * A role that does not exist or has no password gets a SCRAM exchange that cannot succeed, so nothing tells
 * them apart from a wrong password. As in PostgreSQL, an expired password fails like a wrong one.
 */
export async function authenticateClient(
  client: ClientConnection,
  writer: BackendWriter,
  user: string,
  role: RoleSecret | null,
  endPoint: Buffer | null,
): Promise<BackendCredentials> {
  const stored = role?.secret ?? null;
  const scramSecret = stored ? parseScramSecret(stored) : null;
  let credentials: BackendCredentials;
  if (scramSecret) credentials = { kind: 'scram', keys: await scram(client, writer, user, scramSecret, endPoint) };
  else if (stored && isMd5Secret(stored)) {
    await md5(client, writer, user, stored);
    credentials = { kind: 'md5', secret: stored };
  } else return mockAuthentication(client, user, writer, scramMechanisms(endPoint));
  if (role!.validUntil !== null && role!.validUntil < Date.now()) throw invalidPassword(user);
  return credentials;
}

/** After the password and the tenant's state: a NOLOGIN role (that pgtenant did not suspend) stays out. */
export function requireLogin(role: RoleSecret | null, name: string): void {
  if (role && !role.canLogin) throw invalidAuthorization(`role "${name}" is not permitted to log in`);
}
