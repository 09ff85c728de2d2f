import type { CertificateSet, DeviceChannel, DeviceConfig } from '../bootstrap/model.js';
import { toPem, type CertField, type PemKind } from './pem.js';

/**
 * What changed between two configurations, so that the caller can decide what to redo (write a new
 * generation, reconnect, resubscribe, notify) and skip all of it when nothing did.
 */
export interface ConfigDiff {
  /** The content string differs (byte for byte; absent and "" count as different). */
  content: boolean;
  /** Channel IDs present in b only / in a only. Order of channels is not significant. */
  channelsAdded: string[];
  channelsRemoved: string[];
  /** Channel IDs present in both whose name or metadata differs. */
  channelsChanged: string[];
  /** MQTT username or password. */
  credentials: boolean;
  /** MQTT broker URL. */
  broker: boolean;
  /** Client certificate, client key or CA certificate, compared after PEM normalisation. */
  certs: boolean;
  domain: boolean;
  /** Response family or v0.30 enrollment ID. */
  enrollment: boolean;
}

/** JSON with object keys sorted, so that key order does not count as a change. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'undefined';
}

function channelSignature(channel: DeviceChannel): string {
  // The server sends "metadata": null where there is none; absent means the same.
  return canonicalJson({ name: channel.name, metadata: channel.metadata ?? undefined });
}

/** PEM-normalised text, so that the same certificate as base64 DER or with CRLF is not a change. */
function canonicalCert(value: string | undefined, kind: PemKind, field: CertField): string | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  try {
    return toPem(value, kind, field);
  } catch {
    return value.replace(/\r\n?/g, '\n').trim();
  }
}

function certsDiffer(a: CertificateSet, b: CertificateSet): boolean {
  return (
    canonicalCert(a.clientCert, 'certificate', 'client_cert') !== canonicalCert(b.clientCert, 'certificate', 'client_cert') ||
    canonicalCert(a.clientKey, 'private key', 'client_key') !== canonicalCert(b.clientKey, 'private key', 'client_key') ||
    canonicalCert(a.caCert, 'certificate', 'ca_cert') !== canonicalCert(b.caCert, 'certificate', 'ca_cert')
  );
}

export function diffConfigs(a: DeviceConfig, b: DeviceConfig): ConfigDiff {
  const before = new Map(a.channels.map((c) => [c.id, c]));
  const after = new Map(b.channels.map((c) => [c.id, c]));
  const channelsAdded = [...after.keys()].filter((id) => !before.has(id));
  const channelsRemoved = [...before.keys()].filter((id) => !after.has(id));
  const channelsChanged = [...after.entries()]
    .filter(([id, channel]) => {
      const old = before.get(id);
      return old !== undefined && channelSignature(old) !== channelSignature(channel);
    })
    .map(([id]) => id);
  return {
    content: a.content !== b.content,
    channelsAdded,
    channelsRemoved,
    channelsChanged,
    credentials: a.mqtt.username !== b.mqtt.username || a.mqtt.password !== b.mqtt.password,
    broker: a.mqtt.url !== b.mqtt.url,
    certs: certsDiffer(a.certs, b.certs),
    domain: a.domainId !== b.domainId,
    enrollment: a.family !== b.family || a.enrollmentId !== b.enrollmentId,
  };
}

export function hasChanges(diff: ConfigDiff): boolean {
  return (
    diff.content ||
    diff.channelsAdded.length > 0 ||
    diff.channelsRemoved.length > 0 ||
    diff.channelsChanged.length > 0 ||
    diff.credentials ||
    diff.broker ||
    diff.certs ||
    diff.domain ||
    diff.enrollment
  );
}

/** True when nothing the agent acts on differs (a fetched config identical to the stored one). */
export function sameConfig(a: DeviceConfig, b: DeviceConfig): boolean {
  return !hasChanges(diffConfigs(a, b));
}
