import { describe, expect, it } from 'vitest';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { describeChanges } from '../../agent/diagnostics/describe-changes.js';
import { formatStatus, type StatusReport } from '../../agent/diagnostics/status-report.js';
import { usePki } from '../helpers/agent-harness.js';

const pki = usePki('mgda-describe-pki-');

function base(): DeviceConfig {
  return {
    family: 'clients',
    mqtt: { url: 'mqtt://broker.example:1883', username: 'client-1', password: 'password-one' },
    domainId: 'dom-1',
    channels: [{ id: 'c1', name: 'commands' }, { id: 'c2' }],
    content: 'content-one',
    certs: {},
  };
}

describe('describeChanges (bootstrap --dry-run, doctor)', () => {
  it('nothing stored yet: the whole configuration, secrets as "not shown"', () => {
    const after = { ...base(), certs: { clientCert: pki.clientCert, clientKey: pki.clientKey, caCert: pki.caCert } };
    const described = describeChanges(undefined, after);
    expect(described.changed).toBe(true);
    expect(described.lines).toEqual([
      'broker: mqtt://broker.example:1883 as client client-1 (password not shown)',
      'domain: dom-1',
      'channels: c1 (commands), c2',
      expect.stringMatching(/^client certificate: CN=device-client, expires \d{4}-/),
      'client key: present (not shown)',
      expect.stringMatching(/^CA certificate: CN=mgda test CA, expires/),
      'content: 11 bytes (not shown)',
    ]);
    expect(described.files).toEqual(['config.json', 'content (11 bytes)', 'certs/client.crt', 'certs/client.key', 'certs/ca.crt']);
  });

  it('identical configurations: no change', () => {
    expect(describeChanges(base(), { ...base(), channels: [...base().channels].reverse() })).toEqual({ changed: false, lines: [], brokerEffects: [], files: [] });
  });

  it('every kind of change, each on its own line, never a secret value', () => {
    const before = { ...base(), certs: { caCert: pki.caCert } };
    const after: DeviceConfig = {
      ...base(),
      mqtt: { url: 'mqtts://user:pw@broker2.example:8883', username: 'client-1', password: 'password-two' },
      domainId: 'dom-2',
      channels: [{ id: 'c1', name: 'control' }, { id: 'c3', name: 'alerts' }],
      content: 'content-two-longer',
      certs: { caCert: pki.otherCaCert, clientCert: pki.clientCert, clientKey: pki.clientKey },
    };
    const described = describeChanges(before, after);
    expect(described.lines).toEqual([
      'broker URL: mqtt://broker.example:1883 -> mqtts://broker2.example:8883',
      'MQTT credentials: client client-1 unchanged, password changed (not shown)',
      'domain: dom-1 -> dom-2',
      'channels added: c3 (alerts)',
      'channels removed: c2',
      'channels with a new name or metadata: c1 (control)',
      expect.stringMatching(/^client certificate: none -> CN=device-client, expires /),
      'client key: added (not shown)',
      expect.stringMatching(/^CA certificate: CN=mgda test CA, expires .* -> CN=mgda unrelated CA, expires /),
      'content: changed (11 -> 18 bytes; not shown)',
    ]);
    expect(described.brokerEffects).toEqual(['reconnect (broker URL, credentials, certificates, domain changed)', 'subscribe to 1 more channel(s)', 'stop listening on 1 channel(s)']);
    const all = JSON.stringify(described);
    for (const secret of ['password-one', 'password-two', 'content-one', 'content-two', 'pw@', pki.clientKey.split('\n')[1] as string]) expect(all).not.toContain(secret);
  });

  it('a certificate re-encoded (base64 DER, CRLF) is not a change', () => {
    const pem = pki.clientCert;
    const der = pem.split('\n').filter((l) => l && !l.startsWith('-----')).join('');
    const before = { ...base(), certs: { clientCert: pem, clientKey: pki.clientKey } };
    const after = { ...base(), certs: { clientCert: der, clientKey: pki.clientKey.replace(/\n/g, '\r\n') } };
    expect(describeChanges(before, after).changed).toBe(false);
  });
});

describe('formatStatus', () => {
  const report: StatusReport = {
    running: false,
    status: {
      pid: 4242,
      state: 'waiting',
      detail: 'bootstrap failed (BOOTSTRAP_FORBIDDEN), retry in 60s',
      since: '2025-01-01T10:00:00.000Z',
      generation: 3,
      externalId: 'dev-1',
      lastBootstrap: { at: '2025-01-01T09:59:00.000Z', ok: false, code: 'BOOTSTRAP_FORBIDDEN' },
      connection: { broker: 'mqtt://b:1883', connected: false, since: null },
      channels: { subscribed: ['c1'], refused: ['c2'] },
      updatedAt: '2025-01-01T10:00:01.000Z',
    },
    generation: {
      id: 3,
      fetchedAt: '2024-12-31T00:00:00.000Z',
      externalId: 'dev-1',
      broker: 'mqtt://b:1883',
      client: 'client-1',
      channels: [{ id: 'c1', name: 'commands' }, { id: 'c2' }],
      certificates: { clientCert: { subject: 'CN=dev', validTo: '2025-01-02T00:00:00.000Z', daysLeft: -3 } },
    },
    generationWarnings: [],
    checkedAt: '2025-01-05T00:00:00.000Z',
  };

  it('a stopped agent: its last report, with hints for the failure and the refused channel', () => {
    expect(formatStatus(report).split('\n')).toEqual([
      'agent: not running (pid 4242 from the status file is gone; what follows is its last report)',
      'state: waiting (bootstrap failed (BOOTSTRAP_FORBIDDEN), retry in 60s) since 2025-01-01T10:00:00.000Z',
      'generation: 3 on disk, fetched 2024-12-31T00:00:00.000Z, external ID dev-1',
      'last bootstrap: failed (BOOTSTRAP_FORBIDDEN) at 2025-01-01T09:59:00.000Z',
      expect.stringMatching(/^ {2}hint: wrong external key/),
      'connection: not connected (mqtt://b:1883)',
      'channels subscribed: c1 (commands)',
      'channels refused: c2',
      expect.stringMatching(/^ {2}hint: the client is not connected to this channel/),
      'client certificate: CN=dev, expires 2025-01-02T00:00:00.000Z (EXPIRED 3 days ago)',
      'status updated: 2025-01-01T10:00:01.000Z',
    ]);
  });

  it('no status file and no generation', () => {
    expect(formatStatus({ running: null, status: null, generation: null, generationWarnings: [], checkedAt: '' })).toBe(
      'agent: unknown (no status file: the agent has not run here yet)\ngeneration: none on disk',
    );
  });
});
