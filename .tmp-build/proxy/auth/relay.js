import { PgError, protocolViolation } from '../errors.js';
import { Frontend } from '../protocol/constants.js';
/** A backend ErrorResponse, as an error for the client (the server's SQLSTATE is kept). */
export function backendError(m) {
    const e = m;
    const severity = e.severity === 'ERROR' ? 'ERROR' : 'FATAL';
    return new PgError(e.code ?? '08006', e.message ?? 'upstream error', severity, e.detail, e.hint);
}
function frame(type, body) {
    const out = Buffer.allocUnsafe(5 + body.length);
    out[0] = type;
    out.writeInt32BE(4 + body.length, 1);
    body.copy(out, 5);
    return out;
}
async function forwardClientReply(client, backend, what) {
    const reply = await client.readMessage(Frontend.PasswordMessage, what);
    backend.send(frame(reply.type, reply.body));
}
/** Challenges the client is shown and answers it gives; each returns once the reply is forwarded. */
const challenges = {
    authenticationCleartextPassword: async (_m, c, b, w) => {
        c.write(w.authenticationCleartextPassword().flush());
        await forwardClientReply(c, b, 'password');
    },
    authenticationMD5Password: async (m, c, b, w) => {
        c.write(w.authenticationMD5Password(m.salt).flush());
        await forwardClientReply(c, b, 'password');
    },
    authenticationSASL: async (m, c, b, w) => {
        // Channel binding would bind to the proxy's TLS session, not the server's: offer only the plain mechanisms.
        const mechanisms = (m.mechanisms ?? []).filter((x) => !x.endsWith('-PLUS'));
        if (mechanisms.length === 0)
            throw protocolViolation('the upstream server offers only channel-bound SASL mechanisms');
        c.write(w.authenticationSASL(mechanisms).flush());
        await forwardClientReply(c, b, 'SASLInitialResponse');
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
export async function relayAuthentication(client, backend, writer) {
    for (;;) {
        const m = await backend.next();
        if (m.name === 'authenticationOk')
            return;
        if (m.name === 'error')
            throw backendError(m);
        if (m.name === 'notice')
            continue;
        const step = challenges[m.name];
        if (!step)
            throw protocolViolation(`unexpected message "${m.name}" from the upstream server during authentication`);
        await step(m, client, backend, writer);
    }
}
//# sourceMappingURL=relay.js.map