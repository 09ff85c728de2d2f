import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startBootstrapServer, type BootstrapServer } from '../../agent/devstack/bootstrap-server.js';
import { createRegistry, type Registry } from '../../agent/devstack/registry.js';
import { isAgentError } from '../../agent/errors/agent-error.js';
import { K32_ENCRYPT_KEY, useTeardown } from '../helpers/agent-harness.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { apiRequest, rawRequest } from './devstack-helpers.js';

const TOKEN = 'dev-user-token';
const DOMAIN = 'dom-1';

const t = useTeardown();

async function start(registry: Registry = createRegistry()): Promise<BootstrapServer> {
  const server = await startBootstrapServer({ registry, encryptKey: K32_ENCRYPT_KEY, responseFamily: 'v0.20', userToken: TOKEN });
  t.add(() => server.close());
  return server;
}

function json(res: { body: Buffer }): Record<string, unknown> {
  return JSON.parse(res.body.toString('utf8')) as Record<string, unknown>;
}

async function bootstrapAs(server: BootstrapServer, externalId: string, externalKey: string): Promise<{ status: number; body: Record<string, unknown> | undefined }> {
  const res = await rawRequest(server.url, `/clients/bootstrap/${externalId}`, { headers: { Authorization: `Client ${externalKey}` } });
  return { status: res.status, body: res.status === 200 ? json(res) : undefined };
}

describe('dev bootstrap server: management API', () => {
  it('refuses calls without the exact bearer token (401)', async () => {
    const server = await start();
    for (const token of [undefined, 'wrong', `${TOKEN}x`]) {
      const res = await apiRequest(server.url, 'GET', `/${DOMAIN}/clients/configs`, token);
      expect(res.status).toBe(401);
      expect(json(res)).toEqual({ message: 'missing or invalid bearer user token' });
    }
    const lowercase = await rawRequest(server.url, `/${DOMAIN}/clients/configs`, { headers: { Authorization: `bearer ${TOKEN}` } });
    expect(lowercase.status).toBe(401);
  });

  it('round trip: create, view, list, update, certs, connections, state, delete, as the device sees it', async () => {
    const registry = createRegistry();
    const server = await start(registry);

    const created = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, {
      external_id: 'aa:bb:cc:dd:ee:01',
      external_key: 'key-1',
      channels: ['ch-a', 'ch-b'],
      content: '{"hello":1}',
      name: 'gateway 1',
    });
    expect(created.status).toBe(201);
    expect(created.body.length).toBe(0);
    const location = String(created.headers['location']);
    expect(location).toMatch(/^\/clients\/configs\/[0-9a-f-]{36}$/);
    const clientId = location.split('/').pop()!;

    const view = await apiRequest(server.url, 'GET', `/${DOMAIN}/clients/configs/${clientId}`, TOKEN);
    expect(view.status).toBe(200);
    const viewed = json(view);
    expect(viewed).toMatchObject({
      client_id: clientId,
      external_id: 'aa:bb:cc:dd:ee:01',
      external_key: 'key-1',
      content: '{"hello":1}',
      name: 'gateway 1',
      state: 0,
      channels: [{ id: 'ch-a' }, { id: 'ch-b' }],
    });
    const secret = viewed['client_secret'];
    expect(typeof secret).toBe('string');

    // The device gets the same client and secret, even before the state is 1.
    let device = await bootstrapAs(server, 'aa:bb:cc:dd:ee:01', 'key-1');
    expect(device.status).toBe(200);
    expect(device.body).toEqual({
      client_id: clientId,
      client_secret: secret,
      channels: [
        { id: 'ch-a', metadata: null },
        { id: 'ch-b', metadata: null },
      ],
      content: '{"hello":1}',
    });

    const duplicate = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'aa:bb:cc:dd:ee:01', external_key: 'other' });
    expect(duplicate.status).toBe(409);

    await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'second', external_key: 'key-2' });
    const list = await apiRequest(server.url, 'GET', `/${DOMAIN}/clients/configs?offset=1&limit=1`, TOKEN);
    expect(list.status).toBe(200);
    const page = json(list);
    expect(page).toMatchObject({ total: 2, offset: 1, limit: 1 });
    expect((page['configs'] as unknown[]).length).toBe(1);
    expect(json(await apiRequest(server.url, 'GET', `/other-domain/clients/configs`, TOKEN))).toMatchObject({ total: 0, configs: [] });
    expect((await apiRequest(server.url, 'GET', `/${DOMAIN}/clients/configs?limit=101`, TOKEN)).status).toBe(400);

    const updated = await apiRequest(server.url, 'PUT', `/${DOMAIN}/clients/configs/${clientId}`, TOKEN, { name: 'renamed', content: 'v2' });
    expect(updated.status).toBe(200);
    const certs = await apiRequest(server.url, 'PATCH', `/${DOMAIN}/clients/configs/certs/${clientId}`, TOKEN, {
      client_cert: 'CERT',
      client_key: 'KEY',
      ca_cert: 'CA',
    });
    expect(certs.status).toBe(200);
    expect(json(certs)).toEqual({ client_id: clientId, client_cert: 'CERT', client_key: 'KEY', ca_cert: 'CA' });
    const connections = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs/connections/${clientId}`, TOKEN, { channels: ['ch-b', 'ch-c'] });
    expect(connections.status).toBe(200);

    device = await bootstrapAs(server, 'aa:bb:cc:dd:ee:01', 'key-1');
    expect(device.body).toMatchObject({
      content: 'v2',
      client_cert: 'CERT',
      client_key: 'KEY',
      ca_cert: 'CA',
      channels: [
        { id: 'ch-b', metadata: null },
        { id: 'ch-c', metadata: null },
      ],
    });

    expect(registry.connectionsOf(clientId)).toEqual([]);
    const active = await apiRequest(server.url, 'PUT', `/${DOMAIN}/clients/state/${clientId}`, TOKEN, { state: 1 });
    expect(active.status).toBe(200);
    expect(registry.connectionsOf(clientId).sort()).toEqual(['ch-b', 'ch-c']);
    expect(json(await apiRequest(server.url, 'GET', `/${DOMAIN}/clients/configs/${clientId}`, TOKEN))['state']).toBe(1);
    // While active, changing the channel list moves the connections too.
    await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs/connections/${clientId}`, TOKEN, { channels: ['ch-a'] });
    expect(registry.connectionsOf(clientId)).toEqual(['ch-a']);
    expect((await apiRequest(server.url, 'PUT', `/${DOMAIN}/clients/state/${clientId}`, TOKEN, { state: 2 })).status).toBe(400);
    await apiRequest(server.url, 'PUT', `/${DOMAIN}/clients/state/${clientId}`, TOKEN, { state: 0 });
    expect(registry.connectionsOf(clientId)).toEqual([]);

    // Another domain cannot see or change it.
    expect((await apiRequest(server.url, 'GET', `/other-domain/clients/configs/${clientId}`, TOKEN)).status).toBe(404);
    expect((await apiRequest(server.url, 'PUT', `/other-domain/clients/state/${clientId}`, TOKEN, { state: 1 })).status).toBe(404);

    const removed = await apiRequest(server.url, 'DELETE', `/${DOMAIN}/clients/configs/${clientId}`, TOKEN);
    expect(removed.status).toBe(204);
    expect((await bootstrapAs(server, 'aa:bb:cc:dd:ee:01', 'key-1')).status).toBe(404);
    expect((await apiRequest(server.url, 'GET', `/${DOMAIN}/clients/configs/${clientId}`, TOKEN)).status).toBe(404);
  });

  it('uses an existing client when client_id is given, and refuses an unknown one', async () => {
    const registry = createRegistry();
    const client = registry.addClient({ domainId: DOMAIN, name: 'pre-made' });
    if (!client.ok) throw new Error('client not created');
    const server = await start(registry);
    const created = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, {
      external_id: 'ext',
      external_key: 'k',
      client_id: client.value.id,
    });
    expect(created.status).toBe(201);
    expect(created.headers['location']).toBe(`/clients/configs/${client.value.id}`);
    expect((await bootstrapAs(server, 'ext', 'k')).body).toMatchObject({ client_id: client.value.id, client_secret: client.value.secret });
    const unknown = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'ext2', external_key: 'k', client_id: 'nope' });
    expect(unknown.status).toBe(404);
  });

  it('validates requests: 400 for missing fields or bad JSON, 415 without a JSON content type', async () => {
    const server = await start();
    const path = `/${DOMAIN}/clients/configs`;
    expect((await apiRequest(server.url, 'POST', path, TOKEN, { external_key: 'k' })).status).toBe(400);
    expect((await apiRequest(server.url, 'POST', path, TOKEN, { external_id: 'x' })).status).toBe(400);
    expect((await apiRequest(server.url, 'POST', path, TOKEN, { external_id: 'x', external_key: 'k', channels: 'ch' })).status).toBe(400);
    const badJson = await rawRequest(server.url, path, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      body: '{"external_id":',
    });
    expect(badJson.status).toBe(400);
    const noType = await rawRequest(server.url, path, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` }, body: '{}' });
    expect(noType.status).toBe(415);
  });

  it('v0.30 enable/disable endpoints switch the device answer between 200 and 500', async () => {
    const server = await start();
    server.setResponseFamily('v0.30');
    const created = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'e', external_key: 'k' });
    const clientId = String(created.headers['location']).split('/').pop()!;
    expect((await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs/${clientId}/disable`, TOKEN)).status).toBe(200);
    expect((await bootstrapAs(server, 'e', 'k')).status).toBe(500);
    expect((await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs/${clientId}/enable`, TOKEN)).status).toBe(200);
    expect((await bootstrapAs(server, 'e', 'k')).status).toBe(200);
  });
});

describe('dev bootstrap server: /dev endpoints', () => {
  it('rotates a client secret, which the device sees at its next bootstrap', async () => {
    const server = await start();
    const created = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'r', external_key: 'k' });
    const clientId = String(created.headers['location']).split('/').pop()!;
    const before = (await bootstrapAs(server, 'r', 'k')).body?.['client_secret'];

    const rotated = await rawRequest(server.url, `/dev/clients/${clientId}/secret`, { method: 'POST' });
    expect(rotated.status).toBe(200);
    const after = json(rotated)['client_secret'];
    expect(after).not.toBe(before);
    expect((await bootstrapAs(server, 'r', 'k')).body?.['client_secret']).toBe(after);

    const chosen = await rawRequest(server.url, `/dev/clients/${clientId}/secret`, { method: 'POST', body: JSON.stringify({ secret: 'chosen-secret' }) });
    expect(json(chosen)['client_secret']).toBe('chosen-secret');
    expect((await rawRequest(server.url, '/dev/clients/unknown/secret', { method: 'POST' })).status).toBe(404);
  });

  it('switches the response family at run time', async () => {
    const server = await start();
    await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'f', external_key: 'k' });
    expect(Object.keys((await bootstrapAs(server, 'f', 'k')).body!)).toEqual(['client_id', 'client_secret', 'channels']);
    const switched = await rawRequest(server.url, '/dev/family', { method: 'PUT', body: JSON.stringify({ family: 'v0.30' }) });
    expect(switched.status).toBe(200);
    expect(server.responseFamily).toBe('v0.30');
    expect(Object.keys((await bootstrapAs(server, 'f', 'k')).body!)).toEqual(['id', 'content']);
    expect((await rawRequest(server.url, '/dev/family', { method: 'PUT', body: JSON.stringify({ family: 'v0.40' }) })).status).toBe(400);
  });

  it('creates named channels with metadata, which v0.20 responses carry', async () => {
    const server = await start();
    const channel = await rawRequest(server.url, '/dev/channels', {
      method: 'POST',
      body: JSON.stringify({ domain_id: DOMAIN, name: 'commands', metadata: { z: 1, a: '<x>' } }),
    });
    expect(channel.status).toBe(201);
    const channelId = String(json(channel)['id']);
    await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'c', external_key: 'k', channels: [channelId] });
    const res = await rawRequest(server.url, '/clients/bootstrap/c', { headers: { Authorization: 'Client k' } });
    // Go writes map keys sorted and escapes HTML characters.
    expect(res.body.toString()).toContain(`"channels":[{"id":"${channelId}","name":"commands","metadata":{"a":"\\u003cx\\u003e","z":1}}]`);
  });

  it('serves the request log over HTTP', async () => {
    const server = await start();
    await rawRequest(server.url, '/clients/bootstrap/none', { headers: { Authorization: 'Client secret-key' } });
    const log = await rawRequest(server.url, '/dev/requests');
    const entries = (json(log)['requests'] as { path: string; status: number }[]).filter((e) => e.path.startsWith('/clients'));
    expect(entries).toMatchObject([{ path: '/clients/bootstrap/none', status: 404 }]);
    expect(log.body.toString()).not.toContain('secret-key');
  });

  it('answers unknown paths like chi: 404 page not found', async () => {
    const server = await start();
    const res = await rawRequest(server.url, '/nothing/here');
    expect(res.status).toBe(404);
    expect(res.body.toString()).toBe('404 page not found\n');
    expect((await rawRequest(server.url, '/health')).status).toBe(200);
  });
});

describe('dev stack registry persistence', () => {
  it('saves every change atomically (mode 0600) and a new registry loads it back', async () => {
    const { dir, cleanup } = makeTempDir('mgda-devstack-');
    onTestFinished(cleanup);
    const file = join(dir, 'state', 'registry.json');
    const first = createRegistry({ persistFile: file });
    const server = await start(first);
    const created = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'p', external_key: 'k', channels: ['ch'] });
    const clientId = String(created.headers['location']).split('/').pop()!;
    await apiRequest(server.url, 'PUT', `/${DOMAIN}/clients/state/${clientId}`, TOKEN, { state: 1 });
    const firstAnswer = (await bootstrapAs(server, 'p', 'k')).body;
    await server.close();

    expect(statSync(file).mode & 0o777).toBe(0o600);
    const second = createRegistry({ persistFile: file });
    expect(second.isConnected(clientId, 'ch')).toBe(true);
    const reloaded = await start(second);
    expect((await bootstrapAs(reloaded, 'p', 'k')).body).toEqual(firstAnswer);
    expect(readFileSync(file, 'utf8')).toContain('"mg-devstack-registry"');
    // No temp files left behind.
    expect(readdirSync(join(dir, 'state'))).toEqual(['registry.json']);
  });

  it('refuses a corrupt file instead of starting empty', () => {
    const { dir, cleanup } = makeTempDir('mgda-devstack-');
    onTestFinished(cleanup);
    const file = join(dir, 'registry.json');
    writeFileSync(file, '{"format":"mg-devstack-registry","version":1,');
    let caught: unknown;
    try {
      createRegistry({ persistFile: file });
    } catch (error) {
      caught = error;
    }
    expect(isAgentError(caught) && caught.code).toBe('STORAGE_CORRUPT');
  });
});
