import { describe, expect, it } from 'vitest';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { diffConfigs, sameConfig, type ConfigDiff } from '../../agent/storage/config-diff.js';
import { useTestPki } from '../helpers/openssl-pki.js';

const pki = useTestPki();

function baseConfig(): DeviceConfig {
  return {
    family: 'clients',
    mqtt: { url: 'mqtt://broker.example.com:1883', username: 'ffec2491-0de1-4051-9e75-ad2e2d241627', password: '30c775d7-3504-42c6-976c-52c02474bf2f' },
    domainId: 'e9692c28-b730-4797-8a15-2e25c08f9641',
    channels: [
      { id: 'bc9a0af7-6d0f-4806-aa5a-61d68c0a7cf7', name: 'commands', metadata: { type: 'control', nested: { a: 1, b: 2 } } },
      { id: 'b465a688-c1ca-417d-a36f-71f6f1be2409', name: 'telemetry', metadata: null },
    ],
    content: '{"agent":{"mqtt":{"url":"tcp://localhost:1883"}}}',
    certs: { clientCert: pki.ec.certPem, clientKey: pki.ec.keySec1Pem, caCert: pki.caCertPem },
  };
}

const NO_CHANGE: ConfigDiff = {
  content: false,
  channelsAdded: [],
  channelsRemoved: [],
  channelsChanged: [],
  credentials: false,
  broker: false,
  certs: false,
  domain: false,
  enrollment: false,
};

function expectOnly(a: DeviceConfig, b: DeviceConfig, changed: Partial<ConfigDiff>): void {
  expect(diffConfigs(a, b)).toEqual({ ...NO_CHANGE, ...changed });
  expect(sameConfig(a, b)).toBe(false);
}

describe('sameConfig / diffConfigs: what does not count as a change', () => {
  it('an identical configuration fetched again', () => {
    expect(diffConfigs(baseConfig(), baseConfig())).toEqual(NO_CHANGE);
    expect(sameConfig(baseConfig(), baseConfig())).toBe(true);
  });

  it('the same certificates sent as base64 DER or with CRLF instead of the stored PEM', () => {
    const fetched = baseConfig();
    fetched.certs = {
      clientCert: pki.ec.certDerBase64,
      clientKey: pki.ec.keySec1DerBase64,
      caCert: pki.caCertPem.replace(/\n/g, '\r\n'),
    };
    expect(sameConfig(baseConfig(), fetched)).toBe(true);
  });

  it('channels in another order, metadata keys in another order, null metadata versus none', () => {
    const fetched = baseConfig();
    const [commands, telemetry] = fetched.channels;
    fetched.channels = [
      { id: telemetry!.id, name: 'telemetry' },
      { id: commands!.id, name: 'commands', metadata: { nested: { b: 2, a: 1 }, type: 'control' } },
    ];
    expect(sameConfig(baseConfig(), fetched)).toBe(true);
  });
});

describe('sameConfig / diffConfigs: each kind of change', () => {
  it('content, down to trailing whitespace and line endings', () => {
    expectOnly(baseConfig(), { ...baseConfig(), content: `${baseConfig().content} ` }, { content: true });
    expectOnly({ ...baseConfig(), content: 'a\nb' }, { ...baseConfig(), content: 'a\r\nb' }, { content: true });
    const { content: _omitted, ...withoutContent } = baseConfig();
    expectOnly(baseConfig(), withoutContent, { content: true });
  });

  it('channels added, removed and changed, by ID', () => {
    const fetched = baseConfig();
    fetched.channels = [
      { id: 'bc9a0af7-6d0f-4806-aa5a-61d68c0a7cf7', name: 'commands', metadata: { type: 'control', nested: { a: 1, b: 3 } } },
      { id: 'new-channel', name: 'alarms' },
    ];
    expectOnly(baseConfig(), fetched, {
      channelsAdded: ['new-channel'],
      channelsRemoved: ['b465a688-c1ca-417d-a36f-71f6f1be2409'],
      channelsChanged: ['bc9a0af7-6d0f-4806-aa5a-61d68c0a7cf7'],
    });
  });

  it('a renamed channel', () => {
    const fetched = baseConfig();
    fetched.channels[1] = { id: 'b465a688-c1ca-417d-a36f-71f6f1be2409', name: 'telemetry-v2', metadata: null };
    expectOnly(baseConfig(), fetched, { channelsChanged: ['b465a688-c1ca-417d-a36f-71f6f1be2409'] });
  });

  it('MQTT credentials and broker', () => {
    const base = baseConfig();
    expectOnly(base, { ...base, mqtt: { ...base.mqtt, password: 'rotated-secret' } }, { credentials: true });
    expectOnly(base, { ...base, mqtt: { ...base.mqtt, username: 'another-client' } }, { credentials: true });
    expectOnly(base, { ...base, mqtt: { ...base.mqtt, url: 'mqtts://broker.example.com:8883' } }, { broker: true });
  });

  it('certificates: a new client pair, a new CA, certificates removed', () => {
    const base = baseConfig();
    expectOnly(base, { ...base, certs: { ...base.certs, clientCert: pki.rsa.certPem, clientKey: pki.rsa.keyPkcs8Pem } }, { certs: true });
    expectOnly(base, { ...base, certs: { ...base.certs, caCert: pki.caBundlePem } }, { certs: true });
    expectOnly(base, { ...base, certs: {} }, { certs: true });
  });

  it('domain and enrollment', () => {
    const base = baseConfig();
    expectOnly(base, { ...base, domainId: 'other-domain' }, { domain: true });
    const { domainId: _omitted, ...withoutDomain } = base;
    expectOnly(base, withoutDomain, { domain: true });
    expectOnly(base, { ...base, family: 'profiles', enrollmentId: '3094cf29-e73f-4be1-a4d2-b5c5d7a827ec' }, { enrollment: true });
  });
});
