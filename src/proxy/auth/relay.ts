// Relays the server's password challenge to the client and the client's answers back, so Postgres itself checks the password.
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { PgError, protocolViolation } from '../errors.js';
import type { ClientConnection } from '../client.js';
import { Frontend } from '../protocol/constants.js';
import { parseSASLInitialResponse } from '../protocol/frontend.js';
import type { BackendWriter } from '../protocol/writer.js';
import { backendError, type BackendConnection } from '../upstream.js';

type Sasl = BackendMessage & { mechanisms?: string[]; data?: string; salt?: Buffer };

const channelBindingUnavailable = () =>
  new PgError(
    '0A000',
    'SCRAM channel binding cannot pass through pgtenant while its own upstream connection uses TLS',
    'FATAL',
    undefined,
    'Connect with channel_binding=disable (TLS to the proxy still protects the password exchange).',
  );

async function forwardClientReply(client: ClientConnection, backend: BackendConnection, what: string): Promise<void> {
  const reply = await client.readMessage(Frontend.PasswordMessage, what);
  backend.send(reply.frame);
}

/** Challenges the client is shown and answers it gives; each returns once the reply is forwarded. */
const challenges: Partial<Record<string, (m: Sasl, c: ClientConnection, b: BackendConnection, w: BackendWriter) => Promise<void>>> = {
  authenticationCleartextPassword: async (_m, c, b, w) => {
    c.write(w.authenticationCleartextPassword().flush());
    await forwardClientReply(c, b, 'password');
  },
  authenticationMD5Password: async (m, c, b, w) => {
    c.write(w.authenticationMD5Password(m.salt!).flush());
    await forwardClientReply(c, b, 'password');
  },
  authenticationSASL: async (m, c, b, w) => {
    // Channel binding would bind to the proxy's TLS session, not the server's: offer only the plain mechanisms.
    const offered = m.mechanisms ?? [];
    const mechanisms = offered.filter((x) => !x.endsWith('-PLUS'));
    if (mechanisms.length === 0) throw protocolViolation('the upstream server offers only channel-bound SASL mechanisms');
    c.write(w.authenticationSASL(mechanisms).flush());
    const reply = await c.readMessage(Frontend.PasswordMessage, 'SASLInitialResponse');
    // A TLS client that supports binding says so ("y") inside the signed exchange; a server that offered
    // -PLUS takes that as a downgrade attack. Say what to do instead of letting it fail obscurely.
    if (offered.length > mechanisms.length && parseSASLInitialResponse(reply.body).response?.[0] === 0x79) {
      throw channelBindingUnavailable();
    }
    b.send(reply.frame);
  },
  authenticationSASLContinue: async (m, c, b, w) => {
    c.write(w.authenticationSASLContinue(Buffer.from(m.data ?? '', 'utf8')).flush());
    await forwardClientReply(c, b, 'SASLResponse');
  },
  authenticationSASLFinal: async (m, c, _b, w) => {
    c.write(w.authenticationSASLFinal(Buffer.from(m.data ?? '', 'utf8')).flush());
  },
};

/** Runs the exchange until the server sends AuthenticationOk (which is not forwarded: the caller decides what follows). */
export async function relayAuthentication(client: ClientConnection, backend: BackendConnection, writer: BackendWriter): Promise<void> {
  for (;;) {
    const m = await backend.next();
    if (m.name === 'authenticationOk') return;
    if (m.name === 'error') throw backendError(m);
    if (m.name === 'notice') continue;
    const step = challenges[m.name];
    if (!step) throw protocolViolation(`unexpected message "${m.name}" from the upstream server during authentication`);
    await step(m as Sasl, client, backend, writer);
  }
}
