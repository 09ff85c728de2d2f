import type { CertificateSet, DeviceChannel, DeviceConfig } from '../bootstrap/model.js';
import { diffConfigs, hasChanges } from '../storage/config-diff.js';
import type { CertField } from '../storage/pem.js';
import { safeUrl, summariseCertificate } from './redact.js';

/*
 * A person-readable, redacted account of what applying a fetched configuration would change on disk
 * and on the broker (`bootstrap --dry-run`, `doctor`). Pure: no I/O. Secrets appear only as
 * "changed": never a password, key or content, not even a prefix or a hash.
 */

export interface ChangeDescription {
  changed: boolean;
  /** One line per difference, e.g. "channels added: 5c1f… (alerts)". */
  lines: string[];
  /** What the running agent would do on the broker, e.g. "reconnect (credentials changed)". */
  brokerEffects: string[];
  /** Files a new generation would hold, with sizes where they are not secret. */
  files: string[];
}

const CERT_SLOTS: { slot: keyof CertificateSet; label: string; field: CertField }[] = [
  { slot: 'clientCert', label: 'client certificate', field: 'client_cert' },
  { slot: 'clientKey', label: 'client key', field: 'client_key' },
  { slot: 'caCert', label: 'CA certificate', field: 'ca_cert' },
];

function channelLabel(channel: DeviceChannel): string {
  return channel.name ? `${channel.id} (${channel.name})` : channel.id;
}

function listChannels(ids: string[], config: DeviceConfig): string {
  return ids.map((id) => channelLabel(config.channels.find((c) => c.id === id) ?? { id })).join(', ');
}

function bytes(text: string | undefined): number {
  return text === undefined ? 0 : Buffer.byteLength(text, 'utf8');
}

function certLabel(pem: string | undefined, field: CertField): string {
  const summary = summariseCertificate(pem, field);
  if (summary === undefined) return 'none';
  if ('invalid' in summary) return 'unparsable';
  return `${summary.subject}, expires ${summary.validTo}`;
}

/** Whether one certificate slot differs, judged by diffConfigs' own normalised comparison. */
function slotChanged(a: DeviceConfig, b: DeviceConfig, slot: keyof CertificateSet): boolean {
  const only = (config: DeviceConfig): DeviceConfig => ({
    ...config,
    certs: config.certs[slot] === undefined ? {} : { [slot]: config.certs[slot] },
  });
  return diffConfigs(only(a), only(b)).certs;
}

function filesOf(config: DeviceConfig): string[] {
  const files = ['config.json'];
  if (config.content !== undefined) files.push(`content (${bytes(config.content)} bytes)`);
  if (config.certs.clientCert !== undefined) files.push('certs/client.crt');
  if (config.certs.clientKey !== undefined) files.push('certs/client.key');
  if (config.certs.caCert !== undefined) files.push('certs/ca.crt');
  return files;
}

/** Describes the fetched configuration `after` against the stored `before` (undefined: nothing stored yet). */
export function describeChanges(before: DeviceConfig | undefined, after: DeviceConfig): ChangeDescription {
  if (before === undefined) {
    const lines = [
      `broker: ${safeUrl(after.mqtt.url)} as client ${after.mqtt.username} (password not shown)`,
      `domain: ${after.domainId ?? '(none)'}`,
      `channels: ${after.channels.length === 0 ? '(none)' : after.channels.map(channelLabel).join(', ')}`,
      ...CERT_SLOTS.filter((s) => after.certs[s.slot] !== undefined).map((s) =>
        s.slot === 'clientKey' ? `${s.label}: present (not shown)` : `${s.label}: ${certLabel(after.certs[s.slot], s.field)}`,
      ),
      `content: ${after.content === undefined ? '(none)' : `${bytes(after.content)} bytes (not shown)`}`,
    ];
    return {
      changed: true,
      lines,
      brokerEffects: [`connect and subscribe to ${after.channels.length} channel(s)`],
      files: filesOf(after),
    };
  }

  const diff = diffConfigs(before, after);
  if (!hasChanges(diff)) return { changed: false, lines: [], brokerEffects: [], files: [] };
  const lines: string[] = [];
  if (diff.enrollment) lines.push(`response family / enrollment: ${before.family} -> ${after.family}`);
  if (diff.broker) lines.push(`broker URL: ${safeUrl(before.mqtt.url)} -> ${safeUrl(after.mqtt.url)}`);
  if (diff.credentials) {
    const client = before.mqtt.username === after.mqtt.username ? `client ${after.mqtt.username} unchanged` : `client ${before.mqtt.username} -> ${after.mqtt.username}`;
    const password = before.mqtt.password === after.mqtt.password ? 'password unchanged' : 'password changed (not shown)';
    lines.push(`MQTT credentials: ${client}, ${password}`);
  }
  if (diff.domain) lines.push(`domain: ${before.domainId ?? '(none)'} -> ${after.domainId ?? '(none)'}`);
  if (diff.channelsAdded.length > 0) lines.push(`channels added: ${listChannels(diff.channelsAdded, after)}`);
  if (diff.channelsRemoved.length > 0) lines.push(`channels removed: ${listChannels(diff.channelsRemoved, before)}`);
  if (diff.channelsChanged.length > 0) lines.push(`channels with a new name or metadata: ${listChannels(diff.channelsChanged, after)}`);
  if (diff.certs) {
    for (const { slot, label, field } of CERT_SLOTS) {
      if (!slotChanged(before, after, slot)) continue;
      if (slot === 'clientKey') {
        lines.push(`${label}: ${before.certs.clientKey === undefined ? 'added' : after.certs.clientKey === undefined ? 'removed' : 'changed'} (not shown)`);
      } else {
        lines.push(`${label}: ${certLabel(before.certs[slot], field)} -> ${certLabel(after.certs[slot], field)}`);
      }
    }
  }
  if (diff.content) {
    const what = before.content === undefined ? 'added' : after.content === undefined ? 'removed' : 'changed';
    lines.push(`content: ${what} (${bytes(before.content)} -> ${bytes(after.content)} bytes; not shown)`);
  }

  // The running agent applies any change by reconnecting with the new generation.
  const reasons = [diff.broker && 'broker URL', diff.credentials && 'credentials', diff.certs && 'certificates', diff.domain && 'domain'].filter(Boolean);
  const brokerEffects = [reasons.length > 0 ? `reconnect (${reasons.join(', ')} changed)` : 'reconnect with the new generation (same broker, credentials and certificates)'];
  if (diff.channelsAdded.length > 0) brokerEffects.push(`subscribe to ${diff.channelsAdded.length} more channel(s)`);
  if (diff.channelsRemoved.length > 0) brokerEffects.push(`stop listening on ${diff.channelsRemoved.length} channel(s)`);
  return { changed: true, lines, brokerEffects, files: filesOf(after) };
}
