import type { StatusFile } from '../lifecycle/status-file.js';
import { hintFor } from './hints.js';
import { safeUrl, summariseCertificate } from './redact.js';
import { agentProcessState, readCurrentGeneration, readStatusFile } from './state-reader.js';

/*
 * `mg-device-agent status`: the running agent's own report (status.json) joined with the generation
 * on disk. collectStatus does the reading; formatStatus is pure, so the wording is unit-tested.
 */

export interface CertificateExpiry {
  subject: string;
  validTo: string;
  daysLeft: number;
}

export interface StatusReport {
  /** null when there is no status file to take a pid from. */
  running: boolean | null;
  status: StatusFile | null;
  /** Why status.json could not be used, when it exists but is unreadable or malformed. */
  statusProblem?: string;
  generation: {
    id: number;
    fetchedAt: string;
    externalId: string;
    broker: string | undefined;
    client: string;
    channels: { id: string; name?: string }[];
    certificates: { clientCert?: CertificateExpiry; caCert?: CertificateExpiry };
  } | null;
  generationWarnings: string[];
  checkedAt: string;
}

const DAY_MS = 24 * 3600 * 1000;

function expiry(pem: string | undefined, field: 'client_cert' | 'ca_cert', now: Date): CertificateExpiry | undefined {
  const summary = summariseCertificate(pem, field);
  if (!summary || 'invalid' in summary) return undefined;
  return { subject: summary.subject, validTo: summary.validTo, daysLeft: Math.floor((Date.parse(summary.validTo) - now.getTime()) / DAY_MS) };
}

export async function collectStatus(stateDir: string, keepGenerations: number, now: Date): Promise<StatusReport> {
  const read = await readStatusFile(stateDir);
  const status = 'status' in read ? read.status : null;
  const running = status ? (await agentProcessState(status.pid)) === 'running' : null;
  const current = await readCurrentGeneration(stateDir, keepGenerations);
  const gen = current.generation;
  return {
    running,
    status,
    ...('problem' in read ? { statusProblem: read.problem } : {}),
    generation: gen
      ? {
          id: gen.id,
          fetchedAt: gen.fetchedAt.toISOString(),
          externalId: gen.externalId,
          broker: safeUrl(gen.config.mqtt.url),
          client: gen.config.mqtt.username,
          channels: gen.config.channels.map((c) => ({ id: c.id, ...(c.name ? { name: c.name } : {}) })),
          certificates: {
            ...(expiry(gen.config.certs.clientCert, 'client_cert', now) ? { clientCert: expiry(gen.config.certs.clientCert, 'client_cert', now) } : {}),
            ...(expiry(gen.config.certs.caCert, 'ca_cert', now) ? { caCert: expiry(gen.config.certs.caCert, 'ca_cert', now) } : {}),
          },
        }
      : null,
    generationWarnings: current.warnings,
    checkedAt: now.toISOString(),
  };
}

function channelNames(ids: string[], known: { id: string; name?: string }[]): string {
  if (ids.length === 0) return '(none)';
  return ids.map((id) => {
    const name = known.find((c) => c.id === id)?.name;
    return name ? `${id} (${name})` : id;
  }).join(', ');
}

/** The human-readable report: one "label: value" line per fact. */
export function formatStatus(report: StatusReport): string {
  const lines: string[] = [];
  const { status, generation } = report;
  if (status) {
    lines.push(report.running ? `agent: running (pid ${status.pid})` : `agent: not running (pid ${status.pid} from the status file is gone; what follows is its last report)`);
    lines.push(`state: ${status.state}${status.detail ? ` (${status.detail})` : ''} since ${status.since}`);
  } else {
    lines.push(report.statusProblem ? `agent: unknown (${report.statusProblem})` : 'agent: unknown (no status file: the agent has not run here yet)');
  }
  if (generation) {
    lines.push(`generation: ${generation.id} on disk, fetched ${generation.fetchedAt}, external ID ${generation.externalId}`);
    if (status?.generation != null && status.generation !== generation.id) lines.push(`  (the agent reported generation ${status.generation})`);
  } else {
    lines.push('generation: none on disk');
  }
  for (const warning of report.generationWarnings) lines.push(`  warning: ${warning}`);
  if (status?.lastBootstrap) {
    const b = status.lastBootstrap;
    const hint = !b.ok && b.code ? hintFor(b.code) : undefined;
    lines.push(`last bootstrap: ${b.ok ? 'ok' : `failed (${b.code ?? 'unknown error'})`} at ${b.at}${hint ? `\n  hint: ${hint}` : ''}`);
  } else if (status) {
    lines.push('last bootstrap: none yet');
  }
  if (status?.connection) {
    const c = status.connection;
    const broker = c.broker ?? generation?.broker ?? 'the broker';
    lines.push(c.connected ? `connection: connected to ${broker}${c.since ? ` since ${c.since}` : ''}` : `connection: not connected (${broker})${c.since ? ` since ${c.since}` : ''}`);
  } else if (generation) {
    lines.push(`connection: broker ${generation.broker} as client ${generation.client} (no live report)`);
  }
  const known = generation?.channels ?? [];
  if (status?.channels) {
    lines.push(`channels subscribed: ${channelNames(status.channels.subscribed, known)}`);
    if (status.channels.refused.length > 0) lines.push(`channels refused: ${channelNames(status.channels.refused, known)}\n  hint: ${hintFor('MQTT_SUBSCRIBE_REFUSED')}`);
  } else if (generation) {
    lines.push(`channels configured: ${channelNames(known.map((c) => c.id), known)}`);
  }
  for (const [label, cert] of [
    ['client certificate', generation?.certificates.clientCert],
    ['CA certificate', generation?.certificates.caCert],
  ] as const) {
    if (!cert) continue;
    const days = (n: number) => `${n} day${n === 1 ? '' : 's'}`;
    const when = cert.daysLeft < 0 ? `EXPIRED ${days(-cert.daysLeft)} ago` : `in ${days(cert.daysLeft)}`;
    lines.push(`${label}: ${cert.subject}, expires ${cert.validTo} (${when})`);
  }
  if (status) lines.push(`status updated: ${status.updatedAt}`);
  return lines.join('\n');
}
