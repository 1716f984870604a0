// A bare SCRAM-SHA-256 login over a raw socket, light enough to hold thousands of idle connections from one process.
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import net from 'node:net';

const int32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const cstr = (s) => Buffer.from(`${s}\0`);
const frame = (type, ...parts) => {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from(type), int32(body.length + 4), body]);
};
const hmac = (key, text) => createHmac('sha256', key).update(text).digest();

/** PBKDF2 is the costly part of a login and the same for every connection of one role: computed once per salt. */
const saltedCache = new Map();
function saltedPassword(password, salt, iterations) {
  const key = `${password}\0${salt}\0${iterations}`;
  let v = saltedCache.get(key);
  if (!v) saltedCache.set(key, (v = pbkdf2Sync(password, Buffer.from(salt, 'base64'), iterations, 32, 'sha256')));
  return v;
}

/** Logs in and resolves with the idle socket once ReadyForQuery arrives; rejects on an ErrorResponse. */
export function login({ port, user, password, database }) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let buffered = Buffer.alloc(0);
    const bare = `n=,r=${randomBytes(18).toString('base64')}`;
    let serverFirst = '';
    const fail = (err) => {
      socket.destroy();
      reject(err);
    };
    socket.on('error', fail);
    socket.on('connect', () => {
      const params = Buffer.concat([cstr('user'), cstr(user), cstr('database'), cstr(database), Buffer.from([0])]);
      socket.write(Buffer.concat([int32(params.length + 8), int32(196608), params]));
    });
    socket.on('data', (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 5 && buffered.length >= 1 + buffered.readInt32BE(1)) {
        const type = String.fromCharCode(buffered[0]);
        const body = buffered.subarray(5, 1 + buffered.readInt32BE(1));
        buffered = buffered.subarray(1 + body.length + 4);
        if (type === 'E') return fail(new Error(`login refused: ${body.toString('utf8').replace(/\0/g, ' ')}`));
        if (type === 'R') {
          const code = body.readInt32BE(0);
          if (code === 10) {
            const first = Buffer.from(`n,,${bare}`);
            socket.write(frame('p', cstr('SCRAM-SHA-256'), int32(first.length), first));
          } else if (code === 11) {
            serverFirst = body.subarray(4).toString('utf8');
            const a = Object.fromEntries(serverFirst.split(',').map((p) => [p[0], p.slice(2)]));
            const clientKey = hmac(saltedPassword(password, a.s, Number(a.i)), 'Client Key');
            const withoutProof = `c=biws,r=${a.r}`;
            const signature = hmac(createHash('sha256').update(clientKey).digest(), `${bare},${serverFirst},${withoutProof}`);
            const proof = Buffer.from(clientKey.map((x, i) => x ^ signature[i]));
            socket.write(frame('p', Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));
          } else if (code !== 12 && code !== 0) {
            return fail(new Error(`unexpected authentication request ${code}`));
          }
        } else if (type === 'Z') {
          socket.removeAllListeners('data');
          socket.on('error', () => undefined);
          return resolve(socket);
        }
      }
    });
  });
}
