import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { certificateInfo, keyMatchesCertificate, toPem } from '../../agent/storage/pem.js';
import { useTestPki, pemBody } from '../helpers/openssl-pki.js';
import { loadVectors, responseVectorById } from '../helpers/vectors.js';
import { thrownAgentError } from '../helpers/agent-errors.js';

const pki = useTestPki();

function crlf(text: string): string {
  return text.replace(/\n/g, '\r\n');
}

/** Base64 re-wrapped at 76 columns with stray spaces, as some tools and hand edits produce it. */
function messyBase64(b64: string): string {
  return `  ${(b64.match(/.{1,76}/g) ?? []).join(' \r\n')}\n\n`;
}

/** Fails when any 24-character stretch of the secret's base64 shows up in the text. */
function expectNoKeyMaterial(text: string, keyPem: string): void {
  const body = pemBody(keyPem);
  for (let at = 0; at + 24 <= body.length; at += 24) expect(text).not.toContain(body.slice(at, at + 24));
}

describe('toPem: certificates', () => {
  it('returns openssl PEM unchanged', () => {
    expect(toPem(pki.rsa.certPem, 'certificate')).toBe(pki.rsa.certPem);
    expect(toPem(pki.ec.certPem, 'certificate', 'ca_cert')).toBe(pki.ec.certPem);
  });

  it('normalises CRLF and surrounding whitespace to LF PEM', () => {
    expect(toPem(`\n  ${crlf(pki.rsa.certPem)}  \r\n\r\n`, 'certificate')).toBe(pki.rsa.certPem);
  });

  it('keeps every certificate of a CA bundle, in order, and drops comment lines between them', () => {
    expect(toPem(pki.caBundlePem, 'certificate', 'ca_cert')).toBe(pki.caBundlePem);
    const [first, second] = pki.caBundlePem.split(/(?<=-----END CERTIFICATE-----\n)/);
    const commented = `# Issuer: CN=mgda test CA\r\n${crlf(first!)}\r\nsubject=CN = mgda second CA\r\n${crlf(second!)}`;
    const result = toPem(commented, 'certificate', 'ca_cert');
    expect(result).toBe(pki.caBundlePem);
    expect(result.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(2);
  });

  it('turns base64 DER (with newlines and spaces) into the same PEM openssl writes', () => {
    expect(toPem(pki.rsa.certDerBase64, 'certificate')).toBe(pki.rsa.certPem);
    expect(toPem(messyBase64(pki.ec.certDerBase64), 'certificate')).toBe(pki.ec.certPem);
  });

  it('refuses things that are not certificates, naming the field', () => {
    const cases: [string, RegExp][] = [
      ['', /ca_cert: is empty/],
      ['   \r\n ', /ca_cert: is empty/],
      ['not a certificate, at all!', /neither PEM nor base64/],
      ['bm90IGEgY2VydGlmaWNhdGU=', /not DER/],
      [pki.rsa.certPem.slice(0, 300), /truncated or malformed/],
      [pki.rsa.certPem.replace('-----END CERTIFICATE-----', '-----END PRIVATE KEY-----'), /ends with/],
      [pki.rsa.certPem.replace(/\n[A-Za-z0-9+/]{64}\n/, '\n!!!!\n'), /valid base64/],
      // A valid base64 run that is only part of the DER (truncated on the wire).
      [pki.rsa.certDerBase64.slice(0, 400), /not DER/],
      // Complete DER followed by junk bytes.
      [Buffer.concat([Buffer.from(pki.rsa.certDerBase64, 'base64'), Buffer.from([1, 2, 3])]).toString('base64'), /not DER/],
      [Buffer.from('30030201ff', 'hex').toString('base64'), /does not parse as X\.509/],
    ];
    for (const [value, reason] of cases) {
      const error = thrownAgentError(() => toPem(value, 'certificate', 'ca_cert'));
      expect(error.code).toBe('CERT_INVALID');
      expect(error.details.field).toBe('ca_cert');
      expect(error.message).toMatch(/^ca_cert: /);
      expect(error.message).toMatch(reason);
    }
  });

  it('refuses a private key given as a certificate without echoing it', () => {
    const error = thrownAgentError(() => toPem(pki.rsa.keyPkcs8Pem, 'certificate', 'client_cert'));
    expect(error.code).toBe('CERT_INVALID');
    expect(error.message).toBe('client_cert: expected certificates but found a private key');
    expectNoKeyMaterial(JSON.stringify(error.toLog()), pki.rsa.keyPkcs8Pem);
  });

  it('refuses the placeholder certificates of the upstream v0.30 vector', () => {
    const vector = responseVectorById(loadVectors(), 'resp-K32-v030-full');
    const body = JSON.parse(vector.plain_endpoint_body) as Record<string, string>;
    expect(thrownAgentError(() => toPem(body.client_cert!, 'certificate', 'client_cert')).message).toMatch(/^client_cert: /);
    expect(thrownAgentError(() => toPem(body.ca_cert!, 'certificate', 'ca_cert')).message).toMatch(/^ca_cert: /);
    const keyError = thrownAgentError(() => toPem(body.client_key!, 'private key'));
    expect(keyError.code).toBe('CERT_INVALID');
    expect(keyError.message).toMatch(/^client_key: /);
    expect(keyError.message).not.toContain('TESTVECTORONLY');
  });
});

describe('toPem: private keys', () => {
  it('accepts PKCS#8, PKCS#1 RSA and SEC1 EC PEM as openssl wrote them', () => {
    expect(toPem(pki.rsa.keyPkcs8Pem, 'private key')).toBe(pki.rsa.keyPkcs8Pem);
    expect(toPem(pki.rsa.keyPkcs1Pem, 'private key')).toBe(pki.rsa.keyPkcs1Pem);
    expect(pki.rsa.keyPkcs1Pem).toContain('-----BEGIN RSA PRIVATE KEY-----');
    expect(toPem(pki.ec.keySec1Pem, 'private key')).toBe(pki.ec.keySec1Pem);
    expect(pki.ec.keySec1Pem).toContain('-----BEGIN EC PRIVATE KEY-----');
    expect(toPem(pki.ec.keyPkcs8Pem, 'private key')).toBe(pki.ec.keyPkcs8Pem);
  });

  it('drops the EC PARAMETERS block that openssl ecparam -genkey writes before the key', () => {
    expect(pki.ec.keySec1WithParamsPem).toContain('-----BEGIN EC PARAMETERS-----');
    expect(toPem(crlf(pki.ec.keySec1WithParamsPem), 'private key')).toBe(pki.ec.keySec1Pem);
  });

  it('turns base64 DER keys into PEM with the label of their encoding', () => {
    expect(toPem(pki.rsa.keyPkcs8DerBase64, 'private key')).toBe(pki.rsa.keyPkcs8Pem);
    expect(toPem(messyBase64(pki.rsa.keyPkcs1DerBase64), 'private key')).toBe(pki.rsa.keyPkcs1Pem);
    expect(toPem(pki.ec.keySec1DerBase64, 'private key')).toBe(pki.ec.keySec1Pem);
  });

  it('refuses bad keys with the reason and never the key text', () => {
    const truncated = pki.rsa.keyPkcs1Pem.slice(0, 600) + pki.rsa.keyPkcs1Pem.slice(-30);
    const cases: [string, string, RegExp][] = [
      [pki.encryptedKeyPem, pki.encryptedKeyPem, /encrypted private key/],
      [pki.encryptedLegacyKeyPem, pki.encryptedLegacyKeyPem, /encrypted private key/],
      [truncated, pki.rsa.keyPkcs1Pem, /does not parse as a PKCS1 private key/],
      [pki.rsa.keyPkcs8Pem + pki.ec.keyPkcs8Pem, pki.rsa.keyPkcs8Pem, /exactly one private key, found 2/],
      [pki.rsa.certPem, pki.rsa.certPem, /found a "CERTIFICATE" block/],
      [pki.rsa.keyPkcs8DerBase64.slice(0, 200), pki.rsa.keyPkcs8Pem, /not one DER structure/],
      // One published docs page shows the MQTT secret under client_key.
      ['30c775d7-3504-42c6-976c-52c02474bf2f', '', /neither PEM nor base64/],
    ];
    for (const [value, secret, reason] of cases) {
      const error = thrownAgentError(() => toPem(value, 'private key', 'client_key'));
      expect(error.code).toBe('CERT_INVALID');
      expect(error.details.field).toBe('client_key');
      expect(error.message).toMatch(reason);
      const logged = JSON.stringify(error.toLog()) + error.message;
      expect(logged).not.toContain('30c775d7');
      if (secret) expectNoKeyMaterial(logged, secret);
    }
  });

  it('refuses well-formed DER that is no private key', () => {
    const error = thrownAgentError(() => toPem(pki.rsa.certDerBase64, 'private key', 'client_key'));
    expect(error.code).toBe('CERT_INVALID');
    expect(error.message).toBe('client_key: DER does not parse as a PKCS#8, PKCS#1 RSA or SEC1 EC private key');
  });
});

describe('keyMatchesCertificate', () => {
  it('is true for a certificate and its own key in any encoding', () => {
    expect(keyMatchesCertificate(pki.rsa.certPem, pki.rsa.keyPkcs8Pem)).toBe(true);
    expect(keyMatchesCertificate(pki.rsa.certPem, pki.rsa.keyPkcs1Pem)).toBe(true);
    expect(keyMatchesCertificate(pki.ec.certPem, pki.ec.keySec1Pem)).toBe(true);
    expect(keyMatchesCertificate(pki.ec.certDerBase64, pki.ec.keyPkcs8Pem)).toBe(true);
  });

  it('is false for a key that belongs to another certificate or to none', () => {
    expect(keyMatchesCertificate(pki.rsa.certPem, pki.unrelatedRsaKeyPem)).toBe(false);
    expect(keyMatchesCertificate(pki.ec.certPem, pki.unrelatedEcKeyPem)).toBe(false);
    expect(keyMatchesCertificate(pki.rsa.certPem, pki.ec.keySec1Pem)).toBe(false);
    expect(keyMatchesCertificate(pki.ec.certPem, pki.rsa.keyPkcs8Pem)).toBe(false);
  });
});

describe('certificateInfo', () => {
  it('reports subject, issuer, validity and the same SHA-256 fingerprint openssl computes', () => {
    const info = certificateInfo(pki.rsa.certPem);
    expect(info.subject).toBe('CN=device-rsa');
    expect(info.issuer).toBe('CN=mgda test CA');
    const days = (info.validTo.getTime() - info.validFrom.getTime()) / 86_400_000;
    expect(days).toBe(365);
    expect(Math.abs(info.validFrom.getTime() - Date.now())).toBeLessThan(86_400_000);
    const opensslFingerprint = execFileSync('openssl', ['x509', '-noout', '-fingerprint', '-sha256'], { input: pki.rsa.certPem })
      .toString()
      .trim()
      .replace(/^.*Fingerprint=/i, '');
    expect(info.fingerprint256).toBe(opensslFingerprint);
  });

  it('describes the first certificate of a bundle', () => {
    expect(certificateInfo(pki.caBundlePem, 'ca_cert').subject).toBe('CN=mgda test CA');
  });
});
