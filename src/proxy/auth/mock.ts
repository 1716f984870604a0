// A SCRAM exchange that can never succeed, so an unknown tenant looks exactly like a wrong password.
import { createHmac, randomBytes } from 'node:crypto';
import { invalidPassword } from '../errors.js';
import type { ClientConnection } from '../client.js';
import { Frontend } from '../protocol/constants.js';
import { parseSASLInitialResponse } from '../protocol/frontend.js';
import type { BackendWriter } from '../protocol/writer.js';

/** Per-process secret so the fake salt for a name is stable, like a real role's, but unguessable. */
const MOCK_SECRET = randomBytes(32);

/**
 * Goes through SCRAM-SHA-256 as Postgres does for a role that does not exist, then
 * fails with the same 28P01 it gives for a wrong password.
 */
export async function mockAuthentication(
  client: ClientConnection,
  user: string,
  writer: BackendWriter,
  mechanisms: readonly string[] = ['SCRAM-SHA-256'],
): Promise<never> {
  // The same mechanisms a real role would be offered on this connection, -PLUS included.
  client.write(writer.authenticationSASL(mechanisms).flush());
  const first = await client.readMessage(Frontend.PasswordMessage, 'SASLInitialResponse');
  const { response } = parseSASLInitialResponse(first.body);
  const nonce = /(?:^|,)r=([^,]+)/.exec(response?.toString('utf8') ?? '')?.[1];
  if (nonce) {
    const salt = createHmac('sha256', MOCK_SECRET).update(user).digest().subarray(0, 16).toString('base64');
    const serverFirst = `r=${nonce}${randomBytes(18).toString('base64')},s=${salt},i=4096`;
    client.write(writer.authenticationSASLContinue(Buffer.from(serverFirst)).flush());
    await client.readMessage(Frontend.PasswordMessage, 'SASLResponse');
  }
  throw invalidPassword(user);
}
