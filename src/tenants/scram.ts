// SCRAM-SHA-256 password verifiers (RFC 5802, RFC 7677), so a tenant's password never reaches the server in clear text.
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';

const hmac = (key: Buffer, text: string): Buffer => createHmac('sha256', key).update(text).digest();

/**
 * The verifier PostgreSQL stores in pg_authid.rolpassword: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
 * SASLprep is skipped: callers pass printable ASCII (see validatePassword), which SASLprep leaves unchanged.
 * Sent as `PASSWORD '<verifier>'`, the server stores it as is, so logs and pg_stat_statements never see the password.
 */
export function scramVerifier(password: string, iterations = 4096, salt: Buffer = randomBytes(16)): string {
  const salted = pbkdf2Sync(Buffer.from(password, 'utf8'), salt, iterations, 32, 'sha256');
  const storedKey = createHash('sha256').update(hmac(salted, 'Client Key')).digest();
  const serverKey = hmac(salted, 'Server Key');
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}
