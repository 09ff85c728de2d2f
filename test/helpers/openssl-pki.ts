import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll } from 'vitest';
import { makeTempDir } from './temp-dir.js';

/**
 * Real certificates made by the openssl CLI (not by the code under test): a CA, an RSA and an EC
 * client certificate signed by it, their keys in every encoding the agent must accept, and keys
 * that belong to no certificate. Generate once per test file (beforeAll); keygen is slow on a Pi.
 */
export interface TestPki {
  caCertPem: string;
  /** Several certificates in one file, as CA bundles come. */
  caBundlePem: string;
  rsa: {
    certPem: string;
    certDerBase64: string;
    keyPkcs8Pem: string;
    keyPkcs1Pem: string;
    keyPkcs8DerBase64: string;
    keyPkcs1DerBase64: string;
  };
  ec: {
    certPem: string;
    certDerBase64: string;
    keySec1Pem: string;
    /** `openssl ecparam -genkey` output: an EC PARAMETERS block, then the key. */
    keySec1WithParamsPem: string;
    keyPkcs8Pem: string;
    keySec1DerBase64: string;
  };
  /** Valid keys that match none of the certificates above. */
  unrelatedEcKeyPem: string;
  unrelatedRsaKeyPem: string;
  /** The RSA key, encrypted with a passphrase the agent never has (PKCS#8 and legacy Proc-Type forms). */
  encryptedKeyPem: string;
  encryptedLegacyKeyPem: string;
}

export function makeTestPki(): { pki: TestPki; cleanup: () => void } {
  const { dir, cleanup } = makeTempDir('mgda-pki-');
  const path = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const text = (name: string) => readFileSync(path(name), 'utf8');
  const base64 = (name: string) => readFileSync(path(name)).toString('base64');
  try {
    openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key');
    openssl('req', '-x509', '-new', '-key', 'ca.key', '-subj', '/CN=mgda test CA', '-days', '3650', '-out', 'ca.crt',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
    openssl('ecparam', '-name', 'secp384r1', '-genkey', '-noout', '-out', 'ca2.key');
    openssl('req', '-x509', '-new', '-key', 'ca2.key', '-subj', '/CN=mgda second CA', '-days', '3650', '-out', 'ca2.crt');

    const sign = (keyFile: string, cn: string, out: string) => {
      openssl('req', '-new', '-key', keyFile, '-subj', `/CN=${cn}`, '-out', `${out}.csr`);
      openssl('x509', '-req', '-in', `${out}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '365', '-out', out);
    };

    openssl('genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'rsa.key');
    openssl('pkey', '-in', 'rsa.key', '-traditional', '-out', 'rsa-pkcs1.key');
    // openssl 3.0 `pkey -outform DER` writes the traditional (PKCS#1) form; pkcs8 -topk8 forces PKCS#8.
    openssl('pkcs8', '-topk8', '-nocrypt', '-in', 'rsa.key', '-outform', 'DER', '-out', 'rsa.key.der');
    openssl('pkey', '-in', 'rsa.key', '-traditional', '-outform', 'DER', '-out', 'rsa-pkcs1.key.der');
    sign('rsa.key', 'device-rsa', 'rsa.crt');
    openssl('x509', '-in', 'rsa.crt', '-outform', 'DER', '-out', 'rsa.crt.der');
    openssl('pkey', '-in', 'rsa.key', '-aes256', '-passout', 'pass:not-known-to-the-agent', '-out', 'rsa-encrypted.key');
    openssl('pkey', '-in', 'rsa.key', '-traditional', '-aes256', '-passout', 'pass:not-known-to-the-agent', '-out', 'rsa-encrypted-legacy.key');

    openssl('ecparam', '-name', 'prime256v1', '-genkey', '-out', 'ec-with-params.key');
    openssl('ec', '-in', 'ec-with-params.key', '-out', 'ec.key');
    openssl('pkey', '-in', 'ec.key', '-out', 'ec-pkcs8.key');
    openssl('ec', '-in', 'ec.key', '-outform', 'DER', '-out', 'ec.key.der');
    sign('ec.key', 'device-ec', 'ec.crt');
    openssl('x509', '-in', 'ec.crt', '-outform', 'DER', '-out', 'ec.crt.der');

    openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'unrelated-ec.key');
    openssl('genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'unrelated-rsa.key');

    const pki: TestPki = {
      caCertPem: text('ca.crt'),
      caBundlePem: text('ca.crt') + text('ca2.crt'),
      rsa: {
        certPem: text('rsa.crt'),
        certDerBase64: base64('rsa.crt.der'),
        keyPkcs8Pem: text('rsa.key'),
        keyPkcs1Pem: text('rsa-pkcs1.key'),
        keyPkcs8DerBase64: base64('rsa.key.der'),
        keyPkcs1DerBase64: base64('rsa-pkcs1.key.der'),
      },
      ec: {
        certPem: text('ec.crt'),
        certDerBase64: base64('ec.crt.der'),
        keySec1Pem: text('ec.key'),
        keySec1WithParamsPem: text('ec-with-params.key'),
        keyPkcs8Pem: text('ec-pkcs8.key'),
        keySec1DerBase64: base64('ec.key.der'),
      },
      unrelatedEcKeyPem: text('unrelated-ec.key'),
      unrelatedRsaKeyPem: text('unrelated-rsa.key'),
      encryptedKeyPem: text('rsa-encrypted.key'),
      encryptedLegacyKeyPem: text('rsa-encrypted-legacy.key'),
    };
    return { pki, cleanup };
  } catch (error) {
    cleanup();
    throw error;
  }
}

/**
 * makeTestPki() once for the file (or suite) it is called in, in beforeAll, removed after all its
 * tests. The object is filled in by beforeAll, so read it in tests and hooks only.
 */
export function useTestPki(): TestPki {
  const pki = {} as TestPki;
  beforeAll(() => {
    const made = makeTestPki();
    Object.assign(pki, made.pki);
    return made.cleanup;
  });
  return pki;
}

/** The base64 body of a PEM (what must never appear in a message or a log line). */
export function pemBody(pem: string): string {
  return pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
}
