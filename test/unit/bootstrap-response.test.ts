import { describe, expect, it } from 'vitest';
import { decryptCfb } from '../../agent/bootstrap/crypto.js';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { detectResponseFamily, mapBootstrapResponse, type MappingFallbacks } from '../../agent/bootstrap/response.js';
import type { AgentError } from '../../agent/errors/agent-error.js';
import { thrownAgentError } from '../helpers/agent-errors.js';
import { aesKeyByName, loadVectors, responseVectorById, type ResponseVector } from '../helpers/vectors.js';

const vectors = loadVectors();

const CLIENT_ID = 'ffec2491-0de1-4051-9e75-ad2e2d241627';
const SECRET = '30c775d7-3504-42c6-976c-52c02474bf2f';
const FALLBACK_URL = 'mqtts://fallback.example.com:8883';
const FALLBACK_DOMAIN = 'd0d0d0d0-0000-4000-8000-000000000000';

const vector = (id: string): ResponseVector => responseVectorById(vectors, id);

function plainJson(v: ResponseVector): Record<string, unknown> {
  return JSON.parse(v.plain_endpoint_body) as Record<string, unknown>;
}

function decryptedJson(v: ResponseVector): Record<string, unknown> {
  return JSON.parse(decryptCfb(aesKeyByName(vectors, v.key), Buffer.from(v.secure_body_hex, 'hex')).toString('utf8')) as Record<string, unknown>;
}

function mapError(json: unknown, fallbacks: MappingFallbacks): AgentError {
  return thrownAgentError(() => mapBootstrapResponse(json, fallbacks));
}

/** No secret value of the response may surface in what gets logged. */
function expectNoSecrets(err: AgentError, secrets: string[]): void {
  const logged = `${err.message}\n${JSON.stringify(err.toLog())}`;
  for (const secret of secrets) expect(logged).not.toContain(secret);
}

type Channel = { id: string; name?: string; metadata?: Record<string, unknown> | null };

describe('every response vector, plain body and decrypted plaintext', () => {
  const allFallbacks: MappingFallbacks = { mqttUrl: FALLBACK_URL, domainId: FALLBACK_DOMAIN, requireDomain: true };

  it.each(vectors.response_vectors)('$id', (v) => {
    const raw = plainJson(v);
    const fromPlain = mapBootstrapResponse(raw, allFallbacks);
    const fromSecure = mapBootstrapResponse(decryptedJson(v), allFallbacks);
    expect(fromSecure).toEqual(fromPlain);

    // Expectations are read from the vector's own JSON, independently of the mapper.
    const content = typeof raw['content'] === 'string' ? raw['content'] : undefined;
    const contentJson = content === undefined ? undefined : (JSON.parse(content) as Record<string, any>);
    if (content === undefined) expect(fromPlain).not.toHaveProperty('content');
    else expect(fromPlain.content).toBe(content);

    if ('id' in raw) {
      expect(v.shape).toMatch(/v0\.30/);
      expect(fromPlain.family).toBe('profiles');
      expect(fromPlain.enrollmentId).toBe(raw['id']);
      expect(fromPlain.mqtt).toEqual({
        url: contentJson?.['mqtt']?.['url'],
        username: contentJson?.['mqtt']?.['client_id'],
        password: contentJson?.['mqtt']?.['secret'],
      });
      expect(fromPlain.mqtt.username).not.toBe(raw['id']); // the enrollment ID is not the MQTT username
      expect(fromPlain.domainId).toBe(contentJson?.['domain_id']);
      expect(fromPlain.channels).toEqual([
        { id: contentJson?.['telemetry']?.['channel_id'], name: 'telemetry' },
        { id: contentJson?.['commands']?.['channel_id'], name: 'commands' },
      ]);
      // <, >, & arrive escaped inside content and stay exactly so.
      expect(fromPlain.content).toContain('a\\u003cb \\u0026 c\\u003ed');
      expect(fromPlain.certs).toEqual({ clientCert: raw['client_cert'], clientKey: raw['client_key'], caCert: raw['ca_cert'] });
      return;
    }

    const [idField, keyField, channelsField, family] =
      'client_id' in raw
        ? (['client_id', 'client_secret', 'channels', 'clients'] as const)
        : 'thing_id' in raw
          ? (['thing_id', 'thing_key', 'channels', 'things'] as const)
          : (['mainflux_id', 'mainflux_key', 'mainflux_channels', 'mainflux'] as const);
    expect(fromPlain.family).toBe(family);
    expect(fromPlain.enrollmentId).toBeUndefined();
    expect(fromPlain.mqtt.username).toBe(raw[idField]);
    expect(fromPlain.mqtt.password).toBe(raw[keyField]);
    expect(fromPlain.mqtt.url).toBe(contentJson?.['agent']?.['mqtt']?.['url'] ?? FALLBACK_URL);
    expect(fromPlain.domainId).toBe(FALLBACK_DOMAIN); // v0.20 never sends a domain
    const channels = (raw[channelsField] as Channel[] | null) ?? [];
    expect(fromPlain.channels).toEqual(channels);
    expect(fromPlain.certs).toEqual({});
  });

  it('v0.20 with channels keeps names, object metadata and explicit null metadata', () => {
    const config = mapBootstrapResponse(plainJson(vector('resp-K32-v020-channels')), { requireDomain: false });
    expect(config.channels).toEqual([
      { id: 'bc9a0af7-6d0f-4806-aa5a-61d68c0a7cf7', name: 'commands', metadata: { type: 'control' } },
      { id: 'b465a688-c1ca-417d-a36f-71f6f1be2409', name: 'telemetry', metadata: null },
    ]);
    expect(config.mqtt.url).toBe('tcp://localhost:1883'); // from content.agent.mqtt.url, no fallback given
    expect(config).not.toHaveProperty('domainId');
  });

  it('v0.20 "channels": null maps to no channels', () => {
    const config = mapBootstrapResponse(plainJson(vector('resp-K32-v020-nochannels')), { mqttUrl: FALLBACK_URL, requireDomain: false });
    expect(config.channels).toEqual([]);
    expect(config.mqtt).toEqual({ url: FALLBACK_URL, username: CLIENT_ID, password: SECRET });
    expect(config).not.toHaveProperty('content');
  });
});

describe('family detection', () => {
  it.each([
    [{ client_id: 'a', client_secret: 'b', channels: null }, 'clients'],
    [{ id: 'a' }, 'profiles'],
    [{ thing_id: 'a', thing_key: 'b', channels: null }, 'things'],
    [{ mainflux_id: 'a', mainflux_key: 'b', mainflux_channels: null }, 'mainflux'],
  ] as const)('%j → %s', (json, family) => {
    expect(detectResponseFamily(json)).toBe(family);
  });

  it.each([[null], [[]], ['text'], [42], [{ name: 'no id field' }]])('%j is not a bootstrap response', (json) => {
    const err = mapError(json, { requireDomain: false });
    expect(err.code).toBe('BOOTSTRAP_RESPONSE_INVALID');
  });

  it('names the identifying fields it looked for', () => {
    expect(mapError({ device: 'x' }, { requireDomain: false }).message).toContain('client_id, id, thing_id or mainflux_id');
  });
});

describe('precedence: response over the agent configuration', () => {
  const base = { client_id: CLIENT_ID, client_secret: SECRET, channels: null };

  it('content.mqtt.url beats content.agent.mqtt.url beats the configured mqtt.url', () => {
    const both = JSON.stringify({ mqtt: { url: 'mqtts://a.example.com:8883' }, agent: { mqtt: { url: 'tcp://b.example.com:1883' } } });
    const onlyAgent = JSON.stringify({ agent: { mqtt: { url: 'tcp://b.example.com:1883' } } });
    const fallbacks = { mqttUrl: FALLBACK_URL, requireDomain: false };
    expect(mapBootstrapResponse({ ...base, content: both }, fallbacks).mqtt.url).toBe('mqtts://a.example.com:8883');
    expect(mapBootstrapResponse({ ...base, content: onlyAgent }, fallbacks).mqtt.url).toBe('tcp://b.example.com:1883');
    expect(mapBootstrapResponse({ ...base, content: '{}' }, fallbacks).mqtt.url).toBe(FALLBACK_URL);
    expect(mapBootstrapResponse({ ...base, content: 'not json at all' }, fallbacks).mqtt.url).toBe(FALLBACK_URL);
  });

  it('content.domain_id beats the configured mqtt.domainId', () => {
    const content = JSON.stringify({ domain_id: 'from-content', mqtt: { url: 'mqtt://x.example.com' } });
    const config = mapBootstrapResponse({ ...base, content }, { domainId: FALLBACK_DOMAIN, requireDomain: true });
    expect(config.domainId).toBe('from-content');
    const fallback = mapBootstrapResponse({ ...base, content: '{"mqtt":{"url":"mqtt://x.example.com"}}' }, { domainId: FALLBACK_DOMAIN, requireDomain: true });
    expect(fallback.domainId).toBe(FALLBACK_DOMAIN);
  });

  it('a Profiles response takes url and domain from the configuration when its content has none', () => {
    const content = JSON.stringify({ mqtt: { username: 'user-1', password: 'pw-1' } });
    const config = mapBootstrapResponse({ id: 'enr-1', content }, { mqttUrl: FALLBACK_URL, domainId: FALLBACK_DOMAIN, requireDomain: true });
    expect(config.mqtt).toEqual({ url: FALLBACK_URL, username: 'user-1', password: 'pw-1' });
    expect(config.domainId).toBe(FALLBACK_DOMAIN);
  });
});

describe('missing values → BOOTSTRAP_CONFIG_INCOMPLETE', () => {
  it('no broker URL anywhere: says what is missing and where it could come from', () => {
    const err = mapError(plainJson(vector('resp-K32-v020-nochannels')), { requireDomain: false });
    expect(err.code).toBe('BOOTSTRAP_CONFIG_INCOMPLETE');
    expect(err.message).toContain('no MQTT broker URL: the response has no content and mqtt.url is not set in the agent configuration');
    expect(err.details['missing']).toBe('mqtt.url');
    expectNoSecrets(err, [SECRET]);
  });

  it('JSON content without a URL points at content.mqtt.url', () => {
    const err = mapError({ client_id: CLIENT_ID, client_secret: SECRET, channels: null, content: '{"other":1}' }, { requireDomain: false });
    expect(err.message).toContain(
      'no MQTT broker URL: the response has none (content.mqtt.url or content.agent.mqtt.url) and mqtt.url is not set in the agent configuration',
    );
  });

  it('domain is required only when asked for', () => {
    const json = plainJson(vector('resp-K32-v020-channels'));
    expect(mapBootstrapResponse(json, { requireDomain: false })).not.toHaveProperty('domainId');
    const err = mapError(json, { requireDomain: true });
    expect(err.code).toBe('BOOTSTRAP_CONFIG_INCOMPLETE');
    expect(err.message).toContain('no domain ID: the response has none (content.domain_id) and mqtt.domainId is not set in the agent configuration');
    expect(err.details['missing']).toBe('domainId');
    expectNoSecrets(err, [SECRET]);
  });

  it('lists every missing value in one error', () => {
    const err = mapError(plainJson(vector('resp-K32-v020-nochannels')), { requireDomain: true });
    expect(err.details['missing']).toBe('mqtt.url, domainId');
    expect(err.message).toContain('no MQTT broker URL');
    expect(err.message).toContain('no domain ID');
  });

  it('a Profiles response whose content is not JSON has no credentials, whatever the fallbacks', () => {
    const err = mapError({ id: 'enr-1', content: 'temperature-sensor' }, { mqttUrl: FALLBACK_URL, domainId: FALLBACK_DOMAIN, requireDomain: true });
    expect(err.code).toBe('BOOTSTRAP_CONFIG_INCOMPLETE');
    expect(err.details['missing']).toBe('mqtt.username, mqtt.password');
    expect(err.message).toContain('content.mqtt.client_id');
    expect(err.message).toContain('the response content is not a JSON object');
  });

  it('a Profiles response without content says so', () => {
    const err = mapError({ id: 'enr-1' }, { requireDomain: false });
    expect(err.details['missing']).toBe('mqtt.username, mqtt.password, mqtt.url');
    expect(err.message).toContain('the response has no content');
  });

  it('a Profiles response missing only the secret names just that', () => {
    const content = JSON.stringify({ mqtt: { url: 'mqtt://b.example.com', client_id: CLIENT_ID } });
    const err = mapError({ id: 'enr-1', content }, { requireDomain: false });
    expect(err.details['missing']).toBe('mqtt.password');
    expect(err.message).toContain('no MQTT password');
    expect(err.message).toContain('content.mqtt.secret (or content.mqtt.password)');
  });
});

describe('schema violations → BOOTSTRAP_RESPONSE_INVALID naming the field', () => {
  const fallbacks: MappingFallbacks = { mqttUrl: FALLBACK_URL, requireDomain: false };

  it.each([
    [{ client_id: CLIENT_ID, client_secret: 12345, channels: null }, 'client_secret: must be a string'],
    [{ client_id: CLIENT_ID, channels: null }, 'client_secret: is missing'],
    [{ client_id: '', client_secret: SECRET, channels: null }, 'client_id: must not be empty'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: 'ch-1' }, 'channels: must be a list or null'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: [{ id: 'a' }, { name: 'x' }] }, 'channels[1].id: is missing'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: [{ id: 'a', metadata: 'x' }] }, 'channels[0].metadata: must be an object or null'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: null, content: 7 }, 'content: must be a string'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: null, ca_cert: ['x'] }, 'ca_cert: must be a string'],
    [{ thing_id: CLIENT_ID, thing_key: null, channels: null }, 'thing_key: must be a string'],
    [{ mainflux_id: CLIENT_ID, mainflux_key: SECRET, mainflux_channels: [7] }, 'mainflux_channels[0]: must be an object'],
    [{ id: 42 }, 'id: must be a string'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: null, content: '{"mqtt":{"url":"http://x.example.com"}}' }, 'content.mqtt.url: must be a broker URL'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: null, content: '{"agent":{"mqtt":{"url":5}}}' }, 'content.agent.mqtt.url: must be a string'],
    [{ client_id: CLIENT_ID, client_secret: SECRET, channels: null, content: '{"domain_id":""}' }, 'content.domain_id: must not be empty'],
    [{ id: 'e', content: '{"mqtt":{"client_id":"u","secret":9}}' }, 'content.mqtt.secret: must be a string'],
    [{ id: 'e', content: '{"telemetry":"chan"}' }, 'content.telemetry: must be an object'],
    [{ id: 'e', content: '{"channels":[7]}' }, 'content.channels[0]: must be a channel ID string or an object with "id"'],
  ])('%j', (json, expected) => {
    const err = mapError(json, fallbacks);
    expect(err.code).toBe('BOOTSTRAP_RESPONSE_INVALID');
    expect(err.message).toContain(expected);
    expect(err.details['field']).toBe(expected.slice(0, expected.indexOf(':')));
    expectNoSecrets(err, [SECRET]);
  });

  it('never quotes a wrongly typed secret value', () => {
    const secret = 987654321;
    const err = mapError({ client_id: CLIENT_ID, client_secret: secret, channels: null }, fallbacks);
    expectNoSecrets(err, [String(secret)]);
    const profile = mapError({ id: 'e', content: JSON.stringify({ mqtt: { client_id: 'u', secret: ['hunter2-secret'] } }) }, fallbacks);
    expectNoSecrets(profile, ['hunter2-secret']);
    const url = mapError({ id: 'e', content: JSON.stringify({ mqtt: { url: 'http://user:pa55word@x.example.com' } }) }, fallbacks);
    expect(url.code).toBe('BOOTSTRAP_RESPONSE_INVALID');
    expectNoSecrets(url, ['pa55word']);
  });

  it('names the response family it expected', () => {
    expect(mapError({ thing_id: CLIENT_ID, channels: null }, fallbacks).message).toContain('Things (v0.14/v0.15)');
  });
});

describe('tolerance', () => {
  const fallbacks: MappingFallbacks = { mqttUrl: FALLBACK_URL, requireDomain: false };

  it('unknown extra fields are ignored at every level', () => {
    const config = mapBootstrapResponse(
      {
        client_id: CLIENT_ID,
        client_secret: SECRET,
        channels: [{ id: 'c1', name: 'n', metadata: null, created_at: 'x', extra: { deep: true } }],
        state: 1,
        new_field_from_v1: [1, 2],
      },
      fallbacks,
    );
    expect(config.channels).toEqual([{ id: 'c1', name: 'n', metadata: null }]);
  });

  it('omitted optional fields and omitted channels are fine', () => {
    const config = mapBootstrapResponse({ client_id: CLIENT_ID, client_secret: SECRET }, fallbacks);
    expect(config).toEqual<DeviceConfig>({
      family: 'clients',
      mqtt: { url: FALLBACK_URL, username: CLIENT_ID, password: SECRET },
      channels: [],
      certs: {},
    });
  });

  it('null optional fields count as absent; a channel without name or metadata stays bare', () => {
    const config = mapBootstrapResponse(
      { client_id: CLIENT_ID, client_secret: SECRET, channels: [{ id: 'c1' }], content: null, client_cert: null, client_key: null, ca_cert: null },
      fallbacks,
    );
    expect(config.channels).toEqual([{ id: 'c1' }]);
    expect(config).not.toHaveProperty('content');
    expect(config.certs).toEqual({});
  });

  it('content is kept exactly as received, JSON or not, whitespace included', () => {
    for (const content of ['plain text\n', '  {"mqtt": {"url": "mqtt://k.example.com"}}  \n', '[1,2]', '']) {
      const config = mapBootstrapResponse({ client_id: CLIENT_ID, client_secret: SECRET, channels: null, content }, fallbacks);
      expect(config.content).toBe(content);
    }
  });

  it('certificates pass through byte for byte, PEM or base64 DER; empty ones are left out', () => {
    const der = Buffer.from([0x30, 0x82, 0x01, 0x0a, 0xff]).toString('base64');
    const pem = '-----BEGIN CERTIFICATE-----\r\nMIIB\r\n-----END CERTIFICATE-----';
    const config = mapBootstrapResponse(
      { client_id: CLIENT_ID, client_secret: SECRET, channels: null, client_cert: pem, client_key: der, ca_cert: '' },
      fallbacks,
    );
    expect(config.certs).toEqual({ clientCert: pem, clientKey: der });
  });
});

describe('Profiles content conventions', () => {
  const fallbacks: MappingFallbacks = { requireDomain: true };

  it('accepts username/password as aliases of client_id/secret, client_id/secret winning', () => {
    const aliases = JSON.stringify({ domain_id: 'd', mqtt: { url: 'mqtt://h.example.com', username: 'u', password: 'p' } });
    expect(mapBootstrapResponse({ id: 'e', content: aliases }, fallbacks).mqtt).toEqual({ url: 'mqtt://h.example.com', username: 'u', password: 'p' });
    const both = JSON.stringify({ domain_id: 'd', mqtt: { url: 'mqtt://h.example.com', username: 'u', password: 'p', client_id: 'cid', secret: 's' } });
    expect(mapBootstrapResponse({ id: 'e', content: both }, fallbacks).mqtt).toEqual({ url: 'mqtt://h.example.com', username: 'cid', password: 's' });
  });

  it('reads the broker URL from content.agent.mqtt.url too', () => {
    const content = JSON.stringify({ domain_id: 'd', agent: { mqtt: { url: 'wss://h.example.com/mqtt' } }, mqtt: { client_id: 'u', secret: 's' } });
    expect(mapBootstrapResponse({ id: 'e', content }, fallbacks).mqtt.url).toBe('wss://h.example.com/mqtt');
  });

  it('channels: telemetry, commands, then the list; deduplicated, the first name kept', () => {
    const content = JSON.stringify({
      domain_id: 'd',
      mqtt: { url: 'mqtt://h.example.com', client_id: 'u', secret: 's' },
      telemetry: { channel_id: 'same' },
      commands: { channel_id: 'same' },
      channels: ['extra-1', { id: 'extra-2', name: 'alarms' }, { id: 'same', name: 'ignored' }, 'extra-1', { id: 'extra-1', name: 'late-name' }],
    });
    expect(mapBootstrapResponse({ id: 'e', content }, fallbacks).channels).toEqual([
      { id: 'same', name: 'telemetry' },
      { id: 'extra-1', name: 'late-name' },
      { id: 'extra-2', name: 'alarms' },
    ]);
  });

  it('telemetry/commands blocks without channel_id add no channel', () => {
    const content = JSON.stringify({ domain_id: 'd', mqtt: { url: 'mqtt://h.example.com', client_id: 'u', secret: 's' }, telemetry: { topic: 't' }, commands: {} });
    expect(mapBootstrapResponse({ id: 'e', content }, fallbacks).channels).toEqual([]);
  });
});
