import { X509Certificate, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { AgentError } from '../errors/agent-error.js';

/**
 * Certificates and keys arrive from Bootstrap as PEM or as base64-encoded DER, with whatever line
 * endings the operator's tooling produced. Everything is normalised to LF-terminated PEM and proven
 * to parse before it is written, so a bad value is refused while the previous one is still on disk.
 * Messages name the field and the problem, never the value (a private key must not reach a log).
 */

export type PemKind = 'certificate' | 'private key';
export type CertField = 'client_cert' | 'client_key' | 'ca_cert';

export interface CertificateInfo {
  subject: string;
  issuer: string;
  validFrom: Date;
  validTo: Date;
  /** SHA-256 fingerprint as colon-separated upper-case hex (OpenSSL's format). */
  fingerprint256: string;
}

type PrivateKeyType = 'pkcs8' | 'pkcs1' | 'sec1';

const KEY_LABELS: Record<string, PrivateKeyType> = {
  'PRIVATE KEY': 'pkcs8',
  'RSA PRIVATE KEY': 'pkcs1',
  'EC PRIVATE KEY': 'sec1',
};
const LABEL_OF_KEY_TYPE: Record<PrivateKeyType, string> = {
  pkcs8: 'PRIVATE KEY',
  pkcs1: 'RSA PRIVATE KEY',
  sec1: 'EC PRIVATE KEY',
};
// Tried in this order for bare DER, whose type is not labelled.
const KEY_TYPES: readonly PrivateKeyType[] = ['pkcs8', 'pkcs1', 'sec1'];

interface PemBlock {
  label: string;
  hasHeaders: boolean;
  der: Buffer;
}

function invalid(field: CertField, reason: string, details: Record<string, string | number> = {}): AgentError {
  return new AgentError('CERT_INVALID', `${field}: ${reason}`, { details: { field, reason, ...details } });
}

function defaultField(kind: PemKind): CertField {
  return kind === 'private key' ? 'client_key' : 'client_cert';
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

function decodeBase64Strict(text: string): Buffer | undefined {
  const compact = text.replace(/\s+/g, '');
  if (compact.length === 0 || compact.length % 4 !== 0 || !BASE64.test(compact)) return undefined;
  return Buffer.from(compact, 'base64');
}

/**
 * Splits concatenated DER into its top-level SEQUENCEs; undefined when the bytes are not exactly
 * a run of complete SEQUENCEs (catches truncation and trailing garbage that parsers may ignore).
 */
export function splitDerSequences(der: Buffer): Buffer[] | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  while (at < der.length) {
    if (der[at] !== 0x30 || at + 2 > der.length) return undefined;
    const first = der[at + 1]!;
    let headerLength = 2;
    let contentLength = first;
    if (first & 0x80) {
      const lengthBytes = first & 0x7f;
      if (lengthBytes === 0 || lengthBytes > 4 || at + 2 + lengthBytes > der.length) return undefined;
      contentLength = 0;
      for (let i = 0; i < lengthBytes; i++) contentLength = contentLength * 256 + der[at + 2 + i]!;
      headerLength = 2 + lengthBytes;
    }
    const end = at + headerLength + contentLength;
    if (end > der.length) return undefined;
    parts.push(der.subarray(at, end));
    at = end;
  }
  return parts.length > 0 ? parts : undefined;
}

function parsePemBlocks(text: string, field: CertField): PemBlock[] {
  const blocks: PemBlock[] = [];
  const pattern = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END ([A-Z0-9 ]+)-----/g;
  for (const match of text.matchAll(pattern)) {
    const label = match[1]!;
    if (match[3] !== label) throw invalid(field, `PEM block "${label}" ends with "END ${match[3]}"`);
    let body = match[2]!;
    // RFC 1421 headers (Proc-Type, DEK-Info) precede a blank line; they mark legacy encrypted keys.
    const headerEnd = body.search(/\n[ \t]*\n/);
    const hasHeaders = /^\s*[A-Za-z-]+:/.test(body) && headerEnd >= 0;
    if (hasHeaders) body = body.slice(headerEnd);
    const der = decodeBase64Strict(body);
    if (!der) throw invalid(field, `PEM block "${label}" does not contain valid base64`);
    blocks.push({ label, hasHeaders, der });
  }
  const begins = text.match(/-----BEGIN /g)?.length ?? 0;
  if (begins !== blocks.length) throw invalid(field, 'PEM is truncated or malformed (a BEGIN line has no matching END line)');
  return blocks;
}

function wrapPem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

function parseCertificate(der: Buffer, field: CertField, position: number): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch {
    throw invalid(field, `certificate #${position} does not parse as X.509`);
  }
}

function certificatesToPem(derList: Buffer[], field: CertField): string {
  return derList
    .map((der, index) => {
      const certificate = parseCertificate(der, field, index + 1);
      return wrapPem('CERTIFICATE', certificate.raw);
    })
    .join('');
}

function parsePrivateKey(der: Buffer, type: PrivateKeyType): KeyObject | undefined {
  try {
    return createPrivateKey({ key: der, format: 'der', type });
  } catch {
    return undefined;
  }
}

function certificateFromText(text: string, field: CertField): string {
  if (text.includes('-----BEGIN ')) {
    const blocks = parsePemBlocks(text, field);
    const certificates: Buffer[] = [];
    for (const block of blocks) {
      if (block.label !== 'CERTIFICATE') {
        const what = block.label.includes('PRIVATE KEY') ? 'a private key' : `a "${block.label}" block`;
        throw invalid(field, `expected certificates but found ${what}`);
      }
      if (block.hasHeaders) throw invalid(field, 'certificate PEM block carries unexpected headers');
      const parts = splitDerSequences(block.der);
      if (!parts || parts.length !== 1) throw invalid(field, 'certificate PEM block does not hold exactly one DER structure');
      certificates.push(block.der);
    }
    return certificatesToPem(certificates, field);
  }
  const der = decodeBase64Strict(text);
  if (!der) throw invalid(field, 'is neither PEM nor base64-encoded DER');
  const parts = splitDerSequences(der);
  if (!parts) throw invalid(field, 'base64 decodes to something that is not DER (truncated or trailing bytes)');
  return certificatesToPem(parts, field);
}

function privateKeyFromText(text: string, field: CertField): string {
  if (text.includes('-----BEGIN ')) {
    // `openssl ecparam -genkey` puts an EC PARAMETERS block before the key; it adds nothing.
    const blocks = parsePemBlocks(text, field).filter((b) => b.label !== 'EC PARAMETERS');
    const keyBlocks = blocks.filter((b) => b.label.includes('PRIVATE KEY'));
    if (blocks.some((b) => b.label === 'ENCRYPTED PRIVATE KEY') || keyBlocks.some((b) => b.hasHeaders)) {
      throw invalid(field, 'is an encrypted private key; the agent has no passphrase, supply it unencrypted');
    }
    const other = blocks.find((b) => !(b.label in KEY_LABELS));
    if (other) throw invalid(field, `expected one private key but found a "${other.label}" block`);
    if (keyBlocks.length !== 1) throw invalid(field, `expected exactly one private key, found ${keyBlocks.length}`);
    const block = keyBlocks[0]!;
    const type = KEY_LABELS[block.label]!;
    const parts = splitDerSequences(block.der);
    if (!parts || parts.length !== 1 || !parsePrivateKey(block.der, type)) {
      throw invalid(field, `"${block.label}" block does not parse as a ${type.toUpperCase()} private key`);
    }
    return wrapPem(block.label, block.der);
  }
  const der = decodeBase64Strict(text);
  if (!der) throw invalid(field, 'is neither PEM nor base64-encoded DER');
  const parts = splitDerSequences(der);
  if (!parts || parts.length !== 1) throw invalid(field, 'base64 decodes to something that is not one DER structure');
  for (const type of KEY_TYPES) {
    if (parsePrivateKey(der, type)) return wrapPem(LABEL_OF_KEY_TYPE[type], der);
  }
  throw invalid(field, 'DER does not parse as a PKCS#8, PKCS#1 RSA or SEC1 EC private key');
}

/**
 * Normalises a certificate (or CA bundle / chain) or a private key given as PEM or base64 DER to
 * LF-terminated PEM, proving that it parses. Throws CERT_INVALID naming `field`.
 */
export function toPem(value: string, kind: PemKind, field: CertField = defaultField(kind)): string {
  const text = value.replace(/\r\n?/g, '\n').trim();
  if (text.length === 0) throw invalid(field, 'is empty');
  return kind === 'certificate' ? certificateFromText(text, field) : privateKeyFromText(text, field);
}

function firstCertificate(pem: string, field: CertField): X509Certificate {
  const normalised = toPem(pem, 'certificate', field);
  const first = parsePemBlocks(normalised, field)[0]!;
  return parseCertificate(first.der, field, 1);
}

/**
 * True when the private key belongs to the (first, i.e. leaf) certificate. Throws CERT_INVALID
 * when either does not parse.
 */
export function keyMatchesCertificate(certPem: string, keyPem: string): boolean {
  const certificate = firstCertificate(certPem, 'client_cert');
  const normalisedKey = toPem(keyPem, 'private key', 'client_key');
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(normalisedKey);
  } catch {
    // Well-formed DER that OpenSSL still refuses (a flipped bit inside the key; found by the torture harness).
    throw invalid('client_key', 'does not parse as a private key');
  }
  const fromKey = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  let fromCertificate: Buffer;
  try {
    fromCertificate = certificate.publicKey.export({ type: 'spki', format: 'der' });
  } catch {
    throw invalid('client_cert', 'its public key does not parse');
  }
  if (fromKey.equals(fromCertificate)) return true;
  // Same key, different encoding of the public point or parameters: let OpenSSL decide.
  try {
    return certificate.checkPrivateKey(privateKey);
  } catch {
    return false;
  }
}

/** Facts about the first certificate of `pem`, for logs and expiry warnings. */
export function certificateInfo(pem: string, field: CertField = 'client_cert'): CertificateInfo {
  const certificate = firstCertificate(pem, field);
  return {
    subject: certificate.subject,
    issuer: certificate.issuer,
    validFrom: new Date(certificate.validFrom),
    validTo: new Date(certificate.validTo),
    fingerprint256: certificate.fingerprint256,
  };
}
