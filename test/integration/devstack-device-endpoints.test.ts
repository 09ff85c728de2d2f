import { describe, expect, it } from 'vitest';
import { decryptCfb, secureToken } from '../../agent/bootstrap/crypto.js';
import { startBootstrapServer, type BootstrapServer, type BootstrapServerOptions } from '../../agent/devstack/bootstrap-server.js';
import { faultNext } from '../../agent/devstack/faults.js';
import { createRegistry, type Registry } from '../../agent/devstack/registry.js';
import { useTeardown } from '../helpers/agent-harness.js';
import { keyByName, loadVectors, responseVectorById, type ResponseVector } from '../helpers/vectors.js';
import { rawRequest } from './devstack-helpers.js';

const vectors = loadVectors();
const K32 = keyByName(vectors, 'K32').env_value;
const K16 = keyByName(vectors, 'K16').env_value;
const DOMAIN = 'e9692c28-b730-4797-8a15-2e25c08f9641';
const EXTERNAL_ID = 'rpi-warehouse-1-temp-001';
const EXTERNAL_KEY = 'rpi-temp-001-bootstrap-key';

const t = useTeardown();

async function start(registry: Registry, overrides: Partial<BootstrapServerOptions> = {}): Promise<BootstrapServer> {
  const server = await startBootstrapServer({ registry, encryptKey: K32, responseFamily: 'v0.20', userToken: 'token', ...overrides });
  t.add(() => server.close());
  return server;
}

const responseVector = (id: string): ResponseVector => responseVectorById(vectors, id);

/** A registry holding exactly what produced an upstream v0.20 vector (values read from the vector body). */
function registryForV020(vector: ResponseVector): Registry {
  const body = JSON.parse(vector.plain_endpoint_body) as {
    client_id: string;
    client_secret: string;
    channels: { id: string; name: string; metadata: Record<string, unknown> | null }[] | null;
    content?: string;
  };
  const registry = createRegistry();
  for (const ch of body.channels ?? []) {
    expect(registry.addChannel({ id: ch.id, domainId: DOMAIN, name: ch.name, metadata: ch.metadata }).ok).toBe(true);
  }
  const added = registry.addConfig({
    externalId: EXTERNAL_ID,
    externalKey: EXTERNAL_KEY,
    clientId: body.client_id,
    clientSecret: body.client_secret,
    domainId: DOMAIN,
    channels: (body.channels ?? []).map((c) => c.id),
    ...(body.content === undefined ? {} : { content: body.content }),
  });
  expect(added.ok).toBe(true);
  return registry;
}

/** The same for a v0.30 vector: enrollment ID, content and certificates from the vector. */
function registryForV030(vector: ResponseVector, contentOverride?: string): Registry {
  const body = JSON.parse(vector.plain_endpoint_body) as { id: string; content: string; client_cert: string; client_key: string; ca_cert: string };
  const content = JSON.parse(body.content) as { mqtt: { client_id: string; secret: string }; commands: { channel_id: string }; telemetry: { channel_id: string } };
  const registry = createRegistry();
  const added = registry.addConfig({
    id: body.id,
    externalId: EXTERNAL_ID,
    externalKey: EXTERNAL_KEY,
    clientId: content.mqtt.client_id,
    clientSecret: content.mqtt.secret,
    domainId: DOMAIN,
    channels: [content.commands.channel_id, content.telemetry.channel_id],
    content: contentOverride ?? body.content,
    clientCert: body.client_cert,
    clientKey: body.client_key,
    caCert: body.ca_cert,
  });
  expect(added.ok).toBe(true);
  return registry;
}

const plainAuth = { Authorization: `Client ${EXTERNAL_KEY}` };

describe('dev bootstrap server: bodies byte-exact with the upstream vectors', () => {
  for (const id of ['resp-K32-v020-channels', 'resp-K32-v020-nochannels']) {
    it(`v0.20 plain and secure bodies match ${id}`, async () => {
      const vector = responseVector(id);
      const fixedIv = Buffer.from(vectors.fixed_ivs.response, 'hex');
      const server = await start(registryForV020(vector), { responseIv: () => fixedIv });

      const plain = await rawRequest(server.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: plainAuth });
      expect(plain.status).toBe(200);
      expect(plain.headers['content-type']).toBe('application/json');
      expect(plain.body.toString('utf8')).toBe(vector.plain_endpoint_body);

      const token = secureToken(Buffer.from(K32), EXTERNAL_KEY);
      const secure = await rawRequest(server.url, `/clients/bootstrap/secure/${EXTERNAL_ID}`, { headers: { Authorization: `Client ${token}` } });
      expect(secure.status).toBe(200);
      expect(secure.headers['content-type']).toBe('application/octet-stream');
      expect(decryptCfb(Buffer.from(K32), secure.body).toString('utf8')).toBe(vector.secure_plaintext_json);
      expect(secure.body.toString('hex')).toBe(vector.secure_body_hex);
    });
  }

  for (const [id, key] of [
    ['resp-K32-v030-full', K32],
    ['resp-K16-v030-full', K16],
  ] as const) {
    it(`v0.30 plain and secure bodies match ${id}`, async () => {
      const vector = responseVector(id);
      const server = await start(registryForV030(vector), { responseFamily: 'v0.30', encryptKey: key });

      const plain = await rawRequest(server.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: plainAuth });
      expect(plain.status).toBe(200);
      expect(plain.body.toString('utf8')).toBe(vector.plain_endpoint_body);

      const token = secureToken(Buffer.from(key), EXTERNAL_KEY);
      const secure = await rawRequest(server.url, `/clients/bootstrap/secure/${EXTERNAL_ID}`, { headers: { Authorization: `Client ${token}` } });
      expect(secure.status).toBe(200);
      expect(secure.body.length).toBe(vector.secure_body_len);
      expect(decryptCfb(Buffer.from(key), secure.body).toString('utf8')).toBe(vector.secure_plaintext_json);
      // Fresh random IV per response, as upstream.
      const again = await rawRequest(server.url, `/clients/bootstrap/secure/${EXTERNAL_ID}`, { headers: { Authorization: `Client ${token}` } });
      expect(again.body.subarray(0, 16).equals(secure.body.subarray(0, 16))).toBe(false);
    });
  }

  it('v0.30 renders empty content like the profile template behind the vector (sorted keys, 2-space indent)', async () => {
    const vector = responseVector('resp-K32-v030-full');
    const upstreamContent = (JSON.parse(vector.plain_endpoint_body) as { content: string }).content;
    // The vector's template also wrote "note", "qos" and a telemetry "topic"; ours writes the rest identically.
    const expected = upstreamContent
      .replace(/\n {2}"note": [^\n]*,/, '')
      .replace(/\n {2}"qos": 1,/, '')
      .replace(/,\n {4}"topic": "[^"]*"/, '');
    expect(expected).not.toBe(upstreamContent);
    const mqttUrl = (JSON.parse(upstreamContent) as { mqtt: { url: string } }).mqtt.url;
    const server = await start(registryForV030(vector, ''), { responseFamily: 'v0.30', brokerUrl: mqttUrl });

    const plain = await rawRequest(server.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: plainAuth });
    expect(plain.status).toBe(200);
    expect((JSON.parse(plain.body.toString('utf8')) as { content: string }).content).toBe(expected);
  });

  it('escapes <, > and & the way Go does, in the body and inside rendered content', async () => {
    const registry = createRegistry();
    registry.addConfig({ externalId: 'dev-1', externalKey: 'k', domainId: 'd', content: 'a<b & c>d' });
    const server = await start(registry);
    const plain = await rawRequest(server.url, '/clients/bootstrap/dev-1', { headers: { Authorization: 'Client k' } });
    expect(plain.body.toString('utf8')).toContain('"content":"a\\u003cb \\u0026 c\\u003ed"');

    const templated = createRegistry();
    templated.addConfig({ externalId: 'x<&>y', externalKey: 'k', domainId: 'd' });
    const v030 = await start(templated, { responseFamily: 'v0.30' });
    const res = await rawRequest(v030.url, '/clients/bootstrap/x<&>y', { headers: { Authorization: 'Client k' } });
    expect(res.status).toBe(200);
    const content = (JSON.parse(res.body.toString('utf8')) as { content: string }).content;
    expect(content).toContain('"external_id": "x\\u003c\\u0026\\u003ey"');
  });
});

describe('dev bootstrap server: status codes of the device endpoints', () => {
  function simpleRegistry(): Registry {
    const registry = createRegistry();
    registry.addConfig({ externalId: EXTERNAL_ID, externalKey: EXTERNAL_KEY, domainId: DOMAIN });
    registry.addConfig({ externalId: 'dc:a6:32:01:02:03', externalKey: EXTERNAL_KEY, domainId: DOMAIN });
    registry.addConfig({ externalId: 'dev one', externalKey: EXTERNAL_KEY, domainId: DOMAIN });
    return registry;
  }

  async function expectError(res: Promise<Awaited<ReturnType<typeof rawRequest>>>, status: number): Promise<string> {
    const r = await res;
    expect(r.status).toBe(status);
    expect(r.headers['content-type']).toBe('application/json');
    const text = r.body.toString('utf8');
    expect(text.endsWith('}\n')).toBe(true);
    const body = JSON.parse(text) as { message: string };
    expect(Object.keys(body)).toEqual(['message']);
    return body.message;
  }

  it('404 for an unknown external ID is decided before the key is checked', async () => {
    const server = await start(simpleRegistry());
    await expectError(rawRequest(server.url, '/clients/bootstrap/unknown-id', { headers: { Authorization: 'Client wrong-key' } }), 404);
    await expectError(rawRequest(server.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: { Authorization: 'Client wrong-key' } }), 403);
    const token = secureToken(Buffer.from(K32), 'wrong-key');
    await expectError(rawRequest(server.url, '/clients/bootstrap/secure/unknown-id', { headers: { Authorization: `Client ${token}` } }), 404);
    await expectError(rawRequest(server.url, `/clients/bootstrap/secure/${EXTERNAL_ID}`, { headers: { Authorization: `Client ${token}` } }), 403);
  });

  it('401 for a missing header or any scheme other than the exact "Client "', async () => {
    const server = await start(simpleRegistry());
    const path = `/clients/bootstrap/${EXTERNAL_ID}`;
    await expectError(rawRequest(server.url, path), 401);
    for (const header of [`client ${EXTERNAL_KEY}`, `CLIENT ${EXTERNAL_KEY}`, `Bearer ${EXTERNAL_KEY}`, `Thing ${EXTERNAL_KEY}`, EXTERNAL_KEY, 'Client ', 'Client']) {
      await expectError(rawRequest(server.url, path, { headers: { Authorization: header } }), 401);
    }
    // Two spaces: the key then starts with a space and does not match.
    await expectError(rawRequest(server.url, path, { headers: { Authorization: `Client  ${EXTERNAL_KEY}` } }), 403);
  });

  it('400 for an empty external ID (with a key)', async () => {
    const server = await start(simpleRegistry());
    await expectError(rawRequest(server.url, '/clients/bootstrap/', { headers: plainAuth }), 400);
    await expectError(rawRequest(server.url, '/clients/bootstrap', { headers: plainAuth }), 400);
    await expectError(rawRequest(server.url, '/clients/bootstrap/secure/', { headers: plainAuth }), 400);
  });

  it('looks the raw path up as Go does: "dc%3Aa6..." is 404, "dc:a6..." and "dev%20one" work', async () => {
    const server = await start(simpleRegistry());
    expect((await rawRequest(server.url, '/clients/bootstrap/dc:a6:32:01:02:03', { headers: plainAuth })).status).toBe(200);
    await expectError(rawRequest(server.url, '/clients/bootstrap/dc%3Aa6%3A32%3A01%3A02%3A03', { headers: plainAuth }), 404);
    await expectError(rawRequest(server.url, '/clients/bootstrap/dc%3aa6%3a32%3a01%3a02%3a03', { headers: plainAuth }), 404);
    expect((await rawRequest(server.url, '/clients/bootstrap/dev%20one', { headers: plainAuth })).status).toBe(200);
  });

  it('accepts the upstream request vectors (ASCII and Unicode keys) on the secure endpoint, and raw UTF-8 on the plain one', async () => {
    for (const vector of vectors.request_vectors.filter((v) => v.external_key !== '' && (v.key === 'K32' || v.key === 'K16'))) {
      const registry = createRegistry();
      registry.addConfig({ externalId: 'dev-v', externalKey: vector.external_key, domainId: DOMAIN });
      const server = await start(registry, { encryptKey: keyByName(vectors, vector.key).env_value });
      const secure = await rawRequest(server.url, '/clients/bootstrap/secure/dev-v', { headers: { Authorization: vector.authorization } });
      expect(secure.status, vector.id).toBe(200);
      // The key's UTF-8 bytes, sent as they are (a latin1 string is written byte for byte).
      const rawHeader = 'Client ' + Buffer.from(vector.external_key, 'utf8').toString('latin1');
      const plain = await rawRequest(server.url, '/clients/bootstrap/dev-v', { headers: { Authorization: rawHeader } });
      expect(plain.status, vector.id).toBe(200);
    }
  });

  it('answers the negative request vectors as their expected_outcome says', async () => {
    const negatives = vectors.negative_vectors.filter((v) => v.side === 'request' || v.side === 'server-config');
    expect(negatives.length).toBeGreaterThanOrEqual(6);
    for (const vector of negatives) {
      const expectedStatus = Number(/HTTP (\d{3})/.exec(vector.expected_outcome)?.[1]);
      expect(expectedStatus, vector.id).toBeGreaterThan(0);
      const serverKey = vector.server_key === 'K32' || vector.server_key === undefined ? K32 : vector.server_key;
      const registry = createRegistry();
      registry.addConfig({ externalId: EXTERNAL_ID, externalKey: EXTERNAL_KEY, domainId: DOMAIN });
      const server = await start(registry, { encryptKey: serverKey });
      const res = await rawRequest(server.url, `/clients/bootstrap/secure/${EXTERNAL_ID}`, {
        headers: vector.authorization === undefined ? {} : { Authorization: vector.authorization },
      });
      expect(res.status, vector.id).toBe(expectedStatus);
      expect(res.headers['content-type'], vector.id).toBe('application/json');
      if (vector.id === 'neg-server-key-50-bytes') {
        // A server with an unusable key still serves the plain endpoint.
        expect((await rawRequest(server.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: plainAuth })).status).toBe(200);
      }
    }
  });

  it('v0.30 answers a disabled config with 500 and an empty body; v0.20 ignores it', async () => {
    const registry = simpleRegistry();
    const config = registry.findConfigByExternalId(EXTERNAL_ID)!;
    registry.setConfigEnabled(DOMAIN, config.clientId, false);
    const v030 = await start(registry, { responseFamily: 'v0.30' });
    const res = await rawRequest(v030.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: plainAuth });
    expect(res.status).toBe(500);
    expect(res.body.length).toBe(0);
    // Credentials are still checked first.
    expect((await rawRequest(v030.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: { Authorization: 'Client nope' } })).status).toBe(403);
    v030.setResponseFamily('v0.20');
    expect((await rawRequest(v030.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: plainAuth })).status).toBe(200);
  });

  it('logs method, raw path and status of every request, and no credential', async () => {
    const server = await start(simpleRegistry());
    await rawRequest(server.url, '/clients/bootstrap/dc%3Aa6?x=1', { headers: plainAuth });
    await rawRequest(server.url, `/clients/bootstrap/${EXTERNAL_ID}`, { headers: plainAuth });
    expect(server.requests.map((r) => [r.method, r.path, r.status, r.endpoint])).toEqual([
      ['GET', '/clients/bootstrap/dc%3Aa6', 404, 'plain'],
      ['GET', `/clients/bootstrap/${EXTERNAL_ID}`, 200, 'plain'],
    ]);
    expect(Number.isNaN(Date.parse(server.requests[0]!.time))).toBe(false);
    expect(JSON.stringify(server.requests)).not.toContain(EXTERNAL_KEY);
  });
});

describe('dev bootstrap server: injected faults', () => {
  async function faultyServer(): Promise<BootstrapServer> {
    const registry = createRegistry();
    registry.addConfig({ externalId: EXTERNAL_ID, externalKey: EXTERNAL_KEY, domainId: DOMAIN, content: 'x'.repeat(300) });
    return start(registry);
  }
  const path = `/clients/bootstrap/${EXTERNAL_ID}`;

  it('a status fault answers the next N requests, then the real answer comes back', async () => {
    const server = await faultyServer();
    server.setFault(faultNext(2, { kind: 'status', status: 503, headers: { 'Retry-After': '7' } }));
    const first = await rawRequest(server.url, path, { headers: plainAuth });
    expect(first.status).toBe(503);
    expect(first.headers['retry-after']).toBe('7');
    expect((await rawRequest(server.url, path, { headers: plainAuth })).status).toBe(503);
    expect((await rawRequest(server.url, path, { headers: plainAuth })).status).toBe(200);
    expect(server.requests.map((r) => r.fault)).toEqual(['status', 'status', undefined]);
  });

  it('close drops the connection without a response', async () => {
    const server = await faultyServer();
    server.setFault(faultNext(1, { kind: 'close' }));
    await expect(rawRequest(server.url, path, { headers: plainAuth })).rejects.toThrow(/socket hang up|ECONNRESET/);
    expect((await rawRequest(server.url, path, { headers: plainAuth })).status).toBe(200);
  });

  it('hang never answers; the request is logged without a status once the client gives up', async () => {
    const server = await faultyServer();
    server.setFault(faultNext(1, { kind: 'hang' }));
    const arrived = new Promise<void>((resolve) => {
      const check = (): void => {
        if (server.requests.length > 0) resolve();
        else setTimeout(check, 5);
      };
      check();
    });
    const abort = new AbortController();
    const pending = rawRequest(server.url, path, { headers: plainAuth, signal: abort.signal });
    await arrived;
    const completed = new Promise((resolve) => server.events.once('request', resolve));
    abort.abort();
    await expect(pending).rejects.toThrow();
    await completed;
    expect(server.requests[0]).toMatchObject({ status: null, fault: 'hang' });
  });

  it('close() of the server ends hanging requests too', async () => {
    const server = await faultyServer();
    server.setFault(() => ({ kind: 'hang' }));
    const pending = rawRequest(server.url, path, { headers: plainAuth });
    while (server.requests.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    await server.close();
    await expect(pending).rejects.toThrow();
  });

  it('garbage answers 200 with a body that is no valid response', async () => {
    const server = await faultyServer();
    server.setFault(faultNext(1, { kind: 'garbage', body: 'not json {' }));
    const res = await rawRequest(server.url, path, { headers: plainAuth });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.body.toString()).toBe('not json {');
    const token = secureToken(Buffer.from(K32), EXTERNAL_KEY);
    server.setFault(faultNext(1, { kind: 'garbage' }));
    const secure = await rawRequest(server.url, `/clients/bootstrap/secure/${EXTERNAL_ID}`, { headers: { Authorization: `Client ${token}` } });
    expect(secure.status).toBe(200);
    expect(secure.headers['content-type']).toBe('application/octet-stream');
    expect(() => JSON.parse(decryptCfb(Buffer.from(K32), secure.body).toString('utf8'))).toThrow();
  });

  it('trickle sends the real body in many small pieces', async () => {
    const server = await faultyServer();
    const normal = await rawRequest(server.url, path, { headers: plainAuth });
    server.setFault(faultNext(1, { kind: 'trickle', bytesPerChunk: 64, intervalMs: 1 }));
    const slow = await rawRequest(server.url, path, { headers: plainAuth });
    expect(slow.status).toBe(200);
    expect(slow.body.equals(normal.body)).toBe(true);
    expect(slow.chunks).toBeGreaterThanOrEqual(Math.ceil(normal.body.length / 64));
  });

  it('faults can also be set over HTTP (/dev/fault), for stacks run as a separate process', async () => {
    const server = await faultyServer();
    const set = await rawRequest(server.url, '/dev/fault', {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ fault: { kind: 'status', status: 429 }, count: 1 }),
    });
    expect(set.status).toBe(204);
    expect((await rawRequest(server.url, path, { headers: plainAuth })).status).toBe(429);
    expect((await rawRequest(server.url, path, { headers: plainAuth })).status).toBe(200);
    const bad = await rawRequest(server.url, '/dev/fault', { method: 'PUT', body: JSON.stringify({ fault: { kind: 'explode' } }) });
    expect(bad.status).toBe(400);
  });
});
