// SCRAM channel binding to the proxy's own TLS certificate (tls-server-end-point, RFC 5929), as PostgreSQL computes it.
import { createHash, X509Certificate } from 'node:crypto';

/** Signature algorithm OIDs (DER content, hex) -> the hash tls-server-end-point uses: MD5 and SHA-1 become SHA-256. */
const HASH_OF_SIGNATURE: Record<string, string> = {
  '2a864886f70d010104': 'sha256', // md5WithRSAEncryption
  '2a864886f70d010105': 'sha256', // sha1WithRSAEncryption
  '2a864886f70d01010b': 'sha256', // sha256WithRSAEncryption
  '2a864886f70d01010c': 'sha384', // sha384WithRSAEncryption
  '2a864886f70d01010d': 'sha512', // sha512WithRSAEncryption
  '2a8648ce3d0401': 'sha256', // ecdsa-with-SHA1
  '2a8648ce3d040302': 'sha256', // ecdsa-with-SHA256
  '2a8648ce3d040303': 'sha384', // ecdsa-with-SHA384
  '2a8648ce3d040304': 'sha512', // ecdsa-with-SHA512
};

/** One DER element at `at`: where its contents start and end. */
function element(der: Buffer, at: number, tag: number): { start: number; end: number } {
  if (der[at] !== tag) throw new Error(`DER: expected tag 0x${tag.toString(16)} at ${at}`);
  let length = der[at + 1]!;
  let start = at + 2;
  if (length & 0x80) {
    const bytes = length & 0x7f;
    if (bytes === 0 || bytes > 4) throw new Error('DER: unsupported length');
    length = 0;
    for (let i = 0; i < bytes; i++) length = length * 256 + der[start + i]!;
    start += bytes;
  }
  if (start + length > der.length) throw new Error('DER: element runs past the end');
  return { start, end: start + length };
}

const SEQUENCE = 0x30;
const OID = 0x06;

/** The certificate's signatureAlgorithm OID: Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, ... }. */
function signatureOid(der: Buffer): string {
  const certificate = element(der, 0, SEQUENCE);
  const tbs = element(der, certificate.start, SEQUENCE);
  const algorithm = element(der, tbs.end, SEQUENCE);
  const oid = element(der, algorithm.start, OID);
  return der.toString('hex', oid.start, oid.end);
}

/**
 * The tls-server-end-point binding data for a PEM certificate (the first one of a chain), or null when its
 * signature algorithm has no defined hash (RSASSA-PSS, Ed25519): PostgreSQL then offers no -PLUS either.
 */
export function tlsServerEndPoint(pem: string | Buffer): Buffer | null {
  const der = new X509Certificate(pem).raw;
  const hash = HASH_OF_SIGNATURE[signatureOid(der)];
  return hash ? createHash(hash).update(der).digest() : null;
}
