import { describe, expect, it } from 'vitest';
import { startBootstrapServer, type BootstrapServer } from '../../agent/devstack/bootstrap-server.js';
import { startBroker, type BrokerEvents, type DevBroker } from '../../agent/devstack/broker.js';
import { createRegistry, type ClientRecord, type Registry } from '../../agent/devstack/registry.js';
import { usePki, useTeardown } from '../helpers/agent-harness.js';
import {
  apiRequest,
  connectMqtt,
  connectRefusal,
  nextMessage,
  publish,
  subscribe,
} from './devstack-helpers.js';

const DOMAIN = 'dom-1';
const TOKEN = 'user-token';
const SUBACK_FAILURE = 128;

const t = useTeardown();

async function broker(registry: Registry, extra: Partial<Parameters<typeof startBroker>[0]> = {}): Promise<DevBroker> {
  const b = await startBroker({ registry, ...extra });
  t.add(() => b.close());
  return b;
}

/** A config whose client is not yet connected to its channels (state 0), as after provisioning. */
function provision(registry: Registry, externalId: string, channels: string[]): ClientRecord {
  const added = registry.addConfig({ externalId, externalKey: 'k', domainId: DOMAIN, channels });
  if (!added.ok) throw new Error(added.message);
  return registry.getClient(added.value.clientId)!;
}

const creds = (client: ClientRecord) => ({ username: client.id, password: client.secret, clientId: `mqtt-${client.id}` });

describe('dev broker: authentication', () => {
  it('accepts username = client ID and password = secret; refuses anything else with CONNACK 4', async () => {
    const registry = createRegistry();
    const client = provision(registry, 'a', ['ch']);
    const b = await broker(registry);
    const refusals: BrokerEvents['connectRefused'][] = [];
    b.events.on('connectRefused', (e: BrokerEvents['connectRefused']) => refusals.push(e));

    const ok = await connectMqtt(b.url, creds(client));
    expect(ok.connected).toBe(true);
    expect(b.clients()).toEqual([`mqtt-${client.id}`]);
    expect(b.sessions()).toEqual([{ mqttClientId: `mqtt-${client.id}`, username: client.id }]);

    expect(await connectRefusal(b.url, { username: client.id, password: 'wrong' })).toBe(4);
    expect(await connectRefusal(b.url, { username: 'unknown-client', password: client.secret })).toBe(4);
    expect(await connectRefusal(b.url, { username: client.id })).toBe(4);
    expect(await connectRefusal(b.url, {})).toBe(4);
    // The client's name is not its username.
    expect(await connectRefusal(b.url, { username: 'a', password: client.secret })).toBe(4);
    expect(refusals.map((r) => r.returnCode)).toEqual([4, 4, 4, 4, 4]);
    expect(JSON.stringify(refusals)).not.toContain(client.secret);
  });

  it('a rotated secret works for new connections and the old one is refused', async () => {
    const registry = createRegistry();
    const client = provision(registry, 'a', ['ch']);
    const b = await broker(registry);
    const rotated = registry.rotateClientSecret(client.id);
    if (!rotated.ok) throw new Error('rotation failed');
    expect(await connectRefusal(b.url, creds(client))).toBe(4);
    expect((await connectMqtt(b.url, { ...creds(client), password: rotated.value.secret })).connected).toBe(true);
  });

  it('kickOnRevoke closes live sessions when the secret is rotated', async () => {
    const registry = createRegistry();
    const client = provision(registry, 'a', ['ch']);
    const b = await broker(registry, { kickOnRevoke: true });
    const session = await connectMqtt(b.url, creds(client));
    const closed = new Promise<void>((resolve) => session.once('close', () => resolve()));
    registry.rotateClientSecret(client.id);
    await closed;
    expect(b.clients()).toEqual([]);
  });
});

describe('dev broker: authorisation follows the bootstrap state', () => {
  it('refuses a subscription (SUBACK 0x80, connection stays up) until state 1, then grants it', async () => {
    const registry = createRegistry();
    const b = await broker(registry);
    const server: BootstrapServer = await startBootstrapServer({ registry, encryptKey: 'MG_BS_KEY_16byte', responseFamily: 'v0.20', userToken: TOKEN });
    t.add(() => server.close());
    const created = await apiRequest(server.url, 'POST', `/${DOMAIN}/clients/configs`, TOKEN, { external_id: 'gw', external_key: 'k', channels: ['commands'] });
    const clientId = String(created.headers['location']).split('/').pop()!;
    const view = JSON.parse((await apiRequest(server.url, 'GET', `/${DOMAIN}/clients/configs/${clientId}`, TOKEN)).body.toString()) as { client_secret: string };
    const topic = `m/${DOMAIN}/c/commands`;

    const device = await connectMqtt(b.url, { username: clientId, password: view.client_secret });
    expect(await subscribe(device, topic)).toBe(SUBACK_FAILURE);
    expect(device.connected).toBe(true);

    expect((await apiRequest(server.url, 'PUT', `/${DOMAIN}/clients/state/${clientId}`, TOKEN, { state: 1 })).status).toBe(200);
    expect(await subscribe(device, topic)).toBe(1);
    const message = nextMessage(device);
    await b.publish(topic, 'reboot', { qos: 1 });
    expect(await message).toMatchObject({ topic, payload: 'reboot' });

    // Back to state 0: new subscriptions are refused again.
    await apiRequest(server.url, 'PUT', `/${DOMAIN}/clients/state/${clientId}`, TOKEN, { state: 0 });
    expect(await subscribe(device, `${topic}/other`)).toBe(SUBACK_FAILURE);
  });

  it('allows only literal channel topics of connected channels (domain form, subtopics, legacy form)', async () => {
    const registry = createRegistry();
    const client = provision(registry, 'a', ['ch-1', 'ch-2']);
    registry.setConfigState(DOMAIN, client.id, 1);
    registry.addChannel({ id: 'foreign', domainId: DOMAIN });
    const b = await broker(registry);
    const device = await connectMqtt(b.url, creds(client));

    const cases: [string, boolean][] = [
      [`m/${DOMAIN}/c/ch-1`, true],
      [`m/${DOMAIN}/c/ch-1/status`, true],
      [`m/${DOMAIN}/c/ch-1/#`, true],
      [`m/${DOMAIN}/c/ch-2/+/x`, true],
      ['channels/ch-1/messages', true],
      ['channels/ch-1/messages/sub', true],
      [`m/${DOMAIN}/c/+`, false],
      [`m/${DOMAIN}/c/#`, false],
      [`m/+/c/ch-1`, false],
      ['#', false],
      ['channels/+/messages', false],
      [`m/other-domain/c/ch-1`, false],
      [`m/${DOMAIN}/c/foreign`, false],
      [`m/${DOMAIN}/c/unknown`, false],
      ['channels/ch-1', false],
      ['random/topic', false],
    ];
    for (const [topic, allowed] of cases) {
      expect(await subscribe(device, topic), topic).toBe(allowed ? 1 : SUBACK_FAILURE);
    }
    expect(device.connected).toBe(true);
  });

  it('drops a publish on a channel the client is not connected to, and keeps the connection', async () => {
    const registry = createRegistry();
    const listener = provision(registry, 'listener', ['ch-1', 'ch-2']);
    registry.setConfigState(DOMAIN, listener.id, 1);
    const talker = provision(registry, 'talker', ['ch-2']);
    registry.setConfigState(DOMAIN, talker.id, 1);
    const b = await broker(registry);
    const refused: BrokerEvents['publishRefused'][] = [];
    b.events.on('publishRefused', (e: BrokerEvents['publishRefused']) => refused.push(e));

    const receiver = await connectMqtt(b.url, creds(listener));
    expect(await subscribe(receiver, `m/${DOMAIN}/c/ch-1`)).toBe(1);
    expect(await subscribe(receiver, `m/${DOMAIN}/c/ch-2`)).toBe(1);
    const sender = await connectMqtt(b.url, creds(talker));

    const first = nextMessage(receiver);
    await publish(sender, `m/${DOMAIN}/c/ch-1`, 'not allowed', { qos: 1 });
    await publish(sender, `m/${DOMAIN}/c/ch-2`, 'allowed', { qos: 1 });
    // Messages of one connection are routed in order: had the first one passed, it would arrive first.
    expect(await first).toMatchObject({ topic: `m/${DOMAIN}/c/ch-2`, payload: 'allowed' });
    expect(sender.connected).toBe(true);
    expect(refused).toMatchObject([{ username: talker.id, topic: `m/${DOMAIN}/c/ch-1`, reason: 'not-connected' }]);
  });

  it('delivers a retained message to a subscriber that comes later', async () => {
    const registry = createRegistry();
    const device = provision(registry, 'device', ['status-ch']);
    registry.setConfigState(DOMAIN, device.id, 1);
    const operator = provision(registry, 'operator', ['status-ch']);
    registry.setConfigState(DOMAIN, operator.id, 1);
    const b = await broker(registry);
    const topic = `m/${DOMAIN}/c/status-ch/status`;

    const agent = await connectMqtt(b.url, creds(device));
    await publish(agent, topic, '{"online":true}', { qos: 1, retain: true });
    await new Promise<void>((resolve) => agent.end(false, {}, () => resolve()));

    const later = await connectMqtt(b.url, creds(operator));
    const message = nextMessage(later);
    expect(await subscribe(later, topic)).toBe(1);
    expect(await message).toEqual({ topic, payload: '{"online":true}', retain: true });
  });
});

describe('dev broker: TLS and shutdown', () => {
  const certs = usePki('mgda-devstack-tls-');

  it('serves MQTT over TLS with the given certificate', async () => {
    const registry = createRegistry();
    const client = provision(registry, 'a', ['ch']);
    const b = await broker(registry, { tls: { key: certs.serverKey, cert: certs.serverCert } });
    expect(b.url.startsWith('mqtts://127.0.0.1:')).toBe(true);
    const secure = await connectMqtt(b.url, { ...creds(client), ca: certs.caCert, rejectUnauthorized: true });
    expect(secure.connected).toBe(true);
    // A client that does not trust the CA never gets to MQTT.
    await expect(connectMqtt(b.url, { ...creds(client), ca: certs.otherCaCert, rejectUnauthorized: true })).rejects.toThrow();
  });

  it('close() disconnects live sessions and stops listening', async () => {
    const registry = createRegistry();
    const client = provision(registry, 'a', ['ch']);
    const b = await startBroker({ registry });
    const session = await connectMqtt(b.url, creds(client));
    const closed = new Promise<void>((resolve) => session.once('close', () => resolve()));
    await b.close();
    await closed;
    expect(b.clients()).toEqual([]);
    await expect(connectMqtt(b.url, creds(client))).rejects.toThrow(/ECONNREFUSED/);
    // A second close is harmless.
    await b.close();
  });
});
