// tls-server-end-point from certificates signed with each kind of algorithm; expected hashes from `openssl x509 -outform der | openssl dgst`.
import { describe, expect, it } from 'vitest';
import { tlsServerEndPoint } from '../../src/proxy/auth/channel-binding.js';

const RSA_SHA256 = `-----BEGIN CERTIFICATE-----
MIIB+jCCAWOgAwIBAgIUbMVnBAedk3zvdvBG3Uu1lSqvnR0wDQYJKoZIhvcNAQEL
BQAwDjEMMAoGA1UEAwwDcnNhMCAXDTI2MTIwMTA2MDYzNFoYDzIxMjYxMTA3MDYw
NjM0WjAOMQwwCgYDVQQDDANyc2EwgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGB
ANVI1dlDvPlFFFCKt6rWW5gdbF4zbSR7rdZJ1iKqFhBvGm5GUHB8F1IW2bEYrEma
0dsseQFzdK2QvkIiAIAKZht+43/W9QadT3+0RIx3kV/4VZdC1RjG81ddaazNn8sY
QI/rKz4ns9mEpjgSXZqGwSHBsPvRAJXU30VUkogHhGV7AgMBAAGjUzBRMB0GA1Ud
DgQWBBSgbKxVWQ8eMPuy7aGqjcJhRnc3AjAfBgNVHSMEGDAWgBSgbKxVWQ8eMPuy
7aGqjcJhRnc3AjAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4GBABTP
x6PyD8cTS9rnM7wCBEcdKhpUlX4rPOSj2mq3czIvotK0lZ7nEsE/3n+BJxNcQHCG
hqeAbTuZKEhxCsJLVo94vWcFUSgpEdwVAPHPwfjcVGEQj9TeAfr/gORs4XNfM8Mn
TVbA+gEbe6w0AgZ8jaD8qEjYBByrn1ymmSjWSSI7
-----END CERTIFICATE-----
`;
const ECDSA_SHA384 = `-----BEGIN CERTIFICATE-----
MIIBcjCCARegAwIBAgIUSWSMe6pufLQNCc6BW8zTnB0NN6wwCgYIKoZIzj0EAwMw
DTELMAkGA1UEAwwCZWMwIBcNMjYxMjAxMDYwNjM0WhgPMjEyNjExMDcwNjA2MzRa
MA0xCzAJBgNVBAMMAmVjMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8S1iRVZN
Q+EpaEwgrBtxpKhpTFIobrayYjTBRXPp/Zps1w6zX6QvybtdLNtyu5UCsQRXpWXp
CeVJ7oYAFZPYQqNTMFEwHQYDVR0OBBYEFNp7DoI36C+v6TEPpmpqHARMLYK5MB8G
A1UdIwQYMBaAFNp7DoI36C+v6TEPpmpqHARMLYK5MA8GA1UdEwEB/wQFMAMBAf8w
CgYIKoZIzj0EAwMDSQAwRgIhAP5Gw6eH/Ztg8T5SeGPbO/LEkJ0uADauglKYiPrD
t8VMAiEAxp6MQBCoz8JgFqQJpakkU7cZx1jia3Gtv74Tq5WcpPU=
-----END CERTIFICATE-----
`;
const RSA_SHA1 = `-----BEGIN CERTIFICATE-----
MIIB/DCCAWWgAwIBAgIUVkw1FRyJPzoNOJI545QXuKXvU2wwDQYJKoZIhvcNAQEF
BQAwDzENMAsGA1UEAwwEc2hhMTAgFw0yNjEyMDEwNjA2MzRaGA8yMTI2MTEwNzA2
MDYzNFowDzENMAsGA1UEAwwEc2hhMTCBnzANBgkqhkiG9w0BAQEFAAOBjQAwgYkC
gYEAx7PDJcl4cmFHo1fZHuqmdf+sYPOHFUahCi8dP9BDq3cPXmoE7MjGORXvVDhA
+7IpGtsryBYSF3m/aAwH0vhQPLqsJI/75mkiH0lfNgXQAjEp0Cjse2zx8c/6isw8
S8FIMzgYJsT4GJGXV5BKS41a2Mc/8I/RANJqX8eokepG/bECAwEAAaNTMFEwHQYD
VR0OBBYEFKAchFXUhbZqhFO7CSBHzuAxBE1oMB8GA1UdIwQYMBaAFKAchFXUhbZq
hFO7CSBHzuAxBE1oMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZIhvcNAQEFBQADgYEA
NTNfKHj4fQNOe94GJAH/X6RWcqmkRFNGxjmLYXDkllUxIirh5ffLxcUQ9gwujPTw
rEP2kAR6VVRA4oTvrzqqaiCrbjM5SjepyeTV6S8QKzCBodXeGr9W9RMCSp9xIOqT
HJAjJBzp4sjifhxZzga8OXerof4UFaGo86H7R0pmZz8=
-----END CERTIFICATE-----
`;
const ED25519 = `-----BEGIN CERTIFICATE-----
MIIBMDCB46ADAgECAhR4Sx3LgslTTkK7eGvM+9fIzfHDNDAFBgMrZXAwDTELMAkG
A1UEAwwCZWQwIBcNMjYxMjAxMDYwNjM5WhgPMjEyNjExMDcwNjA2MzlaMA0xCzAJ
BgNVBAMMAmVkMCowBQYDK2VwAyEArhnHchl3E7pACW5L9mtySbZ7mY8+RLkSQykT
O5xHIlejUzBRMB0GA1UdDgQWBBSe238xOwX0U0zesyWeeBLzcw9OHTAfBgNVHSME
GDAWgBSe238xOwX0U0zesyWeeBLzcw9OHTAPBgNVHRMBAf8EBTADAQH/MAUGAytl
cANBAKI6HsaUJB7BcmPKNdO/IyBmEzoNbjQU8oTn9XZNNG/k1SrSQvs4yk5sTSEL
NG8ouGEo9Sy/oitdH2FzhiZ5Nww=
-----END CERTIFICATE-----
`;

describe('tls-server-end-point', () => {
  it('hashes the DER certificate with its signature hash: SHA-256 for sha256WithRSAEncryption', () => {
    expect(tlsServerEndPoint(RSA_SHA256)?.toString('hex')).toBe('239b308db6501393568b9fa6d40f8be94e83b71135bab8743998a4172c674a7b');
  });

  it('SHA-384 for ecdsa-with-SHA384', () => {
    expect(tlsServerEndPoint(ECDSA_SHA384)?.toString('hex')).toBe(
      '522417aa27fb6cc76db7d1f20ce36ce86f6c2380adaf7f25701e197ad125c65d77073740bcadf7fd520708e8288525c3',
    );
  });

  it('SHA-256 in place of SHA-1 (RFC 5929: MD5 and SHA-1 are replaced)', () => {
    expect(tlsServerEndPoint(RSA_SHA1)?.toString('hex')).toBe('d3270fd917bf4ddec460f8e15b03f01bc140223058244df67cbcdf00c73eb975');
  });

  it('none for Ed25519, which defines no hash: -PLUS is then not offered, as in PostgreSQL', () => {
    expect(tlsServerEndPoint(ED25519)).toBeNull();
  });

  it('uses the first certificate of a chain', () => {
    expect(tlsServerEndPoint(RSA_SHA256 + ECDSA_SHA384)).toEqual(tlsServerEndPoint(RSA_SHA256));
  });
});
