import type { AgentConfig } from '../config/schema.js';
import type { CertificateSet, DeviceConfig } from '../bootstrap/model.js';
import { certificateInfo, type CertField } from '../storage/pem.js';

/*
 * Views of the configuration that are safe to print, log or send over the control channel: no MQTT
 * password, no private key, no content (v0.30 content carries the MQTT secret), no URL user info.
 * Built by picking the fields that are known to be safe, never by deleting the known secrets, so a
 * field added later stays out until someone decides it is safe.
 */

export const REDACTED = '[redacted]';

/** A URL without user info (user:password@), or a placeholder when it does not parse. */
export function safeUrl(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  try {
    const parsed = new URL(url);
    parsed.username = '';
    parsed.password = '';
    return parsed.href;
  } catch {
    return '(not a valid URL)';
  }
}

export interface CertificateSummary {
  subject: string;
  issuer: string;
  validFrom: string;
  validTo: string;
  fingerprint256: string;
}

/** Public facts about the first certificate of a PEM, or a note when it does not parse. */
export function summariseCertificate(pem: string | undefined, field: CertField): CertificateSummary | { invalid: true } | undefined {
  if (pem === undefined) return undefined;
  try {
    const info = certificateInfo(pem, field);
    return {
      subject: info.subject.replace(/\n/g, ', '),
      issuer: info.issuer.replace(/\n/g, ', '),
      validFrom: info.validFrom.toISOString(),
      validTo: info.validTo.toISOString(),
      fingerprint256: info.fingerprint256,
    };
  } catch {
    return { invalid: true };
  }
}

export function redactedCertificates(certs: CertificateSet): Record<string, unknown> {
  return {
    clientCert: summariseCertificate(certs.clientCert, 'client_cert') ?? null,
    clientKey: certs.clientKey === undefined ? null : REDACTED,
    caCert: summariseCertificate(certs.caCert, 'ca_cert') ?? null,
  };
}

export function redactedDeviceConfig(config: DeviceConfig): Record<string, unknown> {
  return {
    family: config.family,
    ...(config.enrollmentId !== undefined ? { enrollmentId: config.enrollmentId } : {}),
    mqtt: { url: safeUrl(config.mqtt.url), username: config.mqtt.username, password: REDACTED },
    domainId: config.domainId ?? null,
    channels: config.channels.map((c) => ({ id: c.id, ...(c.name !== undefined ? { name: c.name } : {}), ...(c.metadata ? { metadata: c.metadata } : {}) })),
    content: config.content === undefined ? null : { bytes: Buffer.byteLength(config.content, 'utf8'), value: REDACTED },
    certs: redactedCertificates(config.certs),
  };
}

/**
 * The agent's own configuration. The schema keeps every secret in a file and only names the file
 * here, so paths and settings are safe as they are; only URL user info has to go.
 */
export function redactedAgentConfig(config: AgentConfig): Record<string, unknown> {
  return {
    ...config,
    bootstrap: { ...config.bootstrap, url: safeUrl(config.bootstrap.url) ?? null },
    mqtt: { ...config.mqtt, url: safeUrl(config.mqtt.url) ?? null },
  };
}
