// Bearer-token check for the admin API (constant time) and the rule for where the API may listen without a token.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { ConfigError, type HostPort } from '../config.js';

export function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

/**
 * The token the API demands. None configured: refused on a non-loopback address; on loopback a random one is
 * made for this process (`generated`), so the API is never open, even to other local users.
 */
export function adminToken(listen: HostPort, configured: string | undefined): { token: string; generated: boolean } {
  if (configured) {
    // RFC 6750's token characters: anything else could never be sent in an Authorization header.
    if (!/^[A-Za-z0-9\-._~+/]+=*$/.test(configured)) {
      throw new ConfigError('--admin-token: use letters, digits and - . _ ~ + / (optionally ending in =), no spaces');
    }
    return { token: configured, generated: false };
  }
  if (!isLoopback(listen.host)) {
    throw new ConfigError(
      `refusing to serve the admin API on ${listen.host}:${listen.port} without a token: set --admin-token or PGTENANT_ADMIN_TOKEN`,
    );
  }
  return { token: randomBytes(24).toString('base64url'), generated: true };
}

const digest = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest();

/** A checker of `Authorization` headers; comparing digests keeps the time independent of length and content. */
export function bearerCheck(token: string): (header: string | undefined) => boolean {
  const expected = digest(token);
  return (header) => {
    const m = header === undefined ? null : /^Bearer +(\S+) *$/i.exec(header);
    // Still compare when the header is missing, so every refusal costs the same.
    return timingSafeEqual(digest(m?.[1] ?? ''), expected) && m !== null;
  };
}
