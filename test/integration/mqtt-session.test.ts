import { createServer, type AddressInfo, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentError } from '../../agent/errors/agent-error.js';
import { createLogger } from '../../agent/logging/logger.js';
import { MqttSession, DEFAULT_SESSION_EXPIRY_SECONDS, type MqttMessage, type MqttSessionOptions } from '../../agent/mqtt/session.js';
import { onlineStatus, statusWill } from '../../agent/mqtt/status.js';
import { channelFilter, channelTopic } from '../../agent/mqtt/topics.js';
import { createTeardown, usePki } from '../helpers/agent-harness.js';
import { connectObserver, readRetained, startAedesBroker, type TestBroker, type TestBrokerOptions } from '../helpers/aedes-broker.js';
import { startFakeBroker, type FakeBroker, type FakeBrokerScript } from '../helpers/fake-mqtt-broker.js';
import { rejectedAgentError } from '../helpers/agent-errors.js';

const USER = 'c0ffee00-1111-4222-8333-444455556666';
const PASSWORD = 'S3cr3t-Pa55-never-logged';
const OTHER_USER = 'operator-console';
const OTHER_PASSWORD = 'console-pass';
const DOMAIN = 'dom-1';
const CHANNEL = 'ch-commands';
const FORBIDDEN_CHANNEL = 'ch-not-connected';
const STATUS_TOPIC = channelTopic('domain', DOMAIN, CHANNEL, 'status');
const USERS = { [USER]: PASSWORD, [OTHER_USER]: OTHER_PASSWORD };

const t = createTeardown();
let logLines: string[] = [];
const secrets: string[] = [PASSWORD];

afterEach(async () => {
  await t.run();
  // Whatever the test did, no log line may carry a secret.
  const text = logLines.join('');
  for (const secret of secrets) expect(text).not.toContain(secret);
  logLines = [];
});

function logger(): MqttSessionOptions['logger'] {
  return createLogger({ level: 'debug', destination: { write: (line: string) => void logLines.push(line) } });
}

function logRecords(): Record<string, unknown>[] {
  return logLines.map((line) => JSON.parse(line) as Record<string, unknown>);
}

async function broker(options: TestBrokerOptions = {}): Promise<TestBroker> {
  const b = await startAedesBroker({ users: USERS, ...options });
  t.add(() => b.close());
  return b;
}

async function fakeBroker(script: FakeBrokerScript): Promise<FakeBroker> {
  const b = await startFakeBroker(script);
  t.add(() => b.close());
  return b;
}

function session(url: string, overrides: Partial<MqttSessionOptions> = {}): MqttSession {
  const s = new MqttSession({
    url,
    username: USER,
    password: PASSWORD,
    protocolVersion: 4,
    keepaliveSeconds: 30,
    connectTimeoutMs: 5_000,
    clean: false,
    will: statusWill(STATUS_TOPIC),
    logger: logger(),
    ...overrides,
  });
  t.add(() => s.stop({ timeoutMs: 1_000 }));
  return s;
}

async function observer(b: TestBroker): Promise<Awaited<ReturnType<typeof connectObserver>>> {
  const o = await connectObserver(b.url, { username: OTHER_USER, password: OTHER_PASSWORD });
  t.add(() => o.closeNow());
  return o;
}

function nextMessage(s: MqttSession, topic: string): Promise<MqttMessage> {
  return new Promise((resolve) => {
    const off = s.on('message', (m) => {
      if (m.topic === topic) {
        off();
        resolve(m);
      }
    });
  });
}

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('connect (aedes, MQTT 3.1.1)', () => {
  it('connects with a persistent session whose client ID is the username', async () => {
    const b = await broker();
    const s = session(b.url);
    await s.connect();
    expect(s.state).toBe('connected');
    const serverSide = b.client(USER);
    expect(serverSide?.clean).toBe(false);
    const connected = logRecords().find((r) => String(r['msg']).startsWith('connected to the MQTT broker'));
    expect(connected).toMatchObject({ url: b.url, clientId: USER, level: 'info' });
  });

  it('wrong password → MQTT_AUTH_REFUSED with return code 4 from the broker', async () => {
    const b = await broker();
    const s = session(b.url, { password: 'wrong-password' });
    secrets.push('wrong-password');
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe('MQTT_AUTH_REFUSED');
    expect(error.details['returnCode']).toBe(4);
    expect(s.state).toBe('idle');
    expect(b.aedes.connectedClients).toBe(0);
  });

  it('nothing listening → MQTT_NETWORK', async () => {
    const s = session(`mqtt://127.0.0.1:${await closedPort()}`);
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe('MQTT_NETWORK');
    expect(error.details['errorCode']).toBe('ECONNREFUSED');
  });

  it('a server that accepts and never answers → MQTT_TIMEOUT after connectTimeoutMs, socket closed', async () => {
    const silent = await fakeBroker({ connackCode: undefined });
    const s = session(silent.url, { connectTimeoutMs: 400 });
    const started = Date.now();
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe('MQTT_TIMEOUT');
    expect(error.details['timeoutMs']).toBe(400);
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
    expect(silent.connects).toHaveLength(1);
    await silent.allSocketsClosed(); // no client left behind
    expect(s.state).toBe('idle');
  });

  it('a server that closes before CONNACK → MQTT_NETWORK', async () => {
    const server = createServer((socket: Socket) => socket.destroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.add(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const s = session(`mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`);
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe('MQTT_NETWORK');
  });

  it('uses the given credentials, not user info in the URL, and logs the URL without it', async () => {
    const b = await broker();
    secrets.push('url-pass');
    const s = session(b.url.replace('mqtt://', 'mqtt://someone:url-pass@'));
    await s.connect();
    expect(b.client(USER)).toBeDefined();
    expect(logLines.join('')).not.toContain('someone');
  });

  it('can connect again after a failure (the agent owns retries)', async () => {
    const b = await broker();
    const s = session(b.url);
    const authenticate = b.aedes.authenticate;
    b.aedes.authenticate = (_client, _username, _password, done) =>
      done(Object.assign(new Error('not authorized'), { returnCode: 5 as const }), null);
    expect((await rejectedAgentError(s.connect())).details['returnCode']).toBe(5);
    b.aedes.authenticate = authenticate;
    await s.connect();
    expect(s.connected).toBe(true);
  });
});

describe('subscribe, messages, publish', () => {
  const granted = channelFilter('domain', DOMAIN, CHANNEL);
  const refused = channelFilter('domain', DOMAIN, FORBIDDEN_CHANNEL);

  it('reports a refused filter as granted: false; the granted one keeps receiving', async () => {
    const b = await broker({ canSubscribe: (_user, filter) => !filter.includes(FORBIDDEN_CHANNEL) });
    const s = session(b.url);
    await s.connect();

    const results = await s.subscribe([refused, granted, granted], 1);
    expect(results).toEqual([
      { filter: refused, granted: false, reasonCode: 0x80 },
      { filter: granted, granted: true, qos: 1 },
      { filter: granted, granted: true, qos: 1 },
    ]);
    expect(s.connected).toBe(true);

    const o = await observer(b);
    const topic = channelTopic('domain', DOMAIN, CHANNEL, 'commands');
    const received = nextMessage(s, topic);
    o.publish(topic, '{"cmd":"reboot"}', { qos: 1 });
    const message = await received;
    expect(message.payload).toEqual(Buffer.from('{"cmd":"reboot"}'));
    expect(message.retain).toBe(false);
    expect(message.qos).toBe(1);

    const logs = logRecords();
    expect(logs.find((r) => r['msg'] === 'MQTT message received')).toMatchObject({ topic, bytes: 16 });
    expect(logs.find((r) => String(r['msg']).startsWith('subscriptions refused'))).toMatchObject({ level: 'warn' });
    expect(logLines.join('')).not.toContain('reboot"');
  });

  it('delivers a retained message with retain: true, and unsubscribe stops delivery', async () => {
    const b = await broker();
    const o = await observer(b);
    const topic = channelTopic('domain', DOMAIN, CHANNEL, 'config');
    await o.publishAsync(topic, 'v1', { qos: 1, retain: true });

    const s = session(b.url);
    await s.connect();
    const retained = nextMessage(s, topic);
    await s.subscribe([granted], 1);
    expect(await retained).toMatchObject({ topic, retain: true, payload: Buffer.from('v1') });

    await s.unsubscribe([granted]);
    // After UNSUBACK the broker has no subscription for us; a marker on another subscribed filter
    // arrives while the unsubscribed topic's message does not.
    const marker = channelFilter('domain', DOMAIN, 'marker');
    await s.subscribe([marker], 1);
    const seen: string[] = [];
    s.on('message', (m) => seen.push(m.topic));
    const markerTopic = channelTopic('domain', DOMAIN, 'marker');
    const markerArrived = nextMessage(s, markerTopic);
    await o.publishAsync(topic, 'v2', { qos: 1 });
    await o.publishAsync(markerTopic, 'm', { qos: 1 });
    await markerArrived;
    expect(seen).toEqual([markerTopic]);
  });

  it('publish() resolves after PUBACK and the broker has the message', async () => {
    const b = await broker();
    const s = session(b.url);
    await s.connect();
    const topic = channelTopic('domain', DOMAIN, CHANNEL, 'telemetry');
    await s.publish(topic, Buffer.from([1, 2, 3]), { qos: 1, retain: false });
    expect(b.published.filter((p) => p.topic === topic)).toEqual([
      { topic, payload: '\u0001\u0002\u0003', retain: false, qos: 1, clientId: USER },
    ]);
  });

  it('publish/subscribe before connect reject with MQTT_NETWORK instead of queueing', async () => {
    const b = await broker();
    const s = session(b.url);
    expect((await rejectedAgentError(s.publish(STATUS_TOPIC, 'x', { qos: 1, retain: false }))).code).toBe('MQTT_NETWORK');
    expect((await rejectedAgentError(s.subscribe([granted], 1))).code).toBe('MQTT_NETWORK');
    expect(await s.subscribe([], 1)).toEqual([]);
  });
});

describe('status, Will and stop', () => {
  it('retained online, then stop() leaves retained offline and the Will is not fired', async () => {
    const b = await broker();
    const s = session(b.url);
    await s.connect();
    const online = onlineStatus(STATUS_TOPIC);
    await s.publish(online.topic, online.payload, online);
    expect(await readRetained(b.url, STATUS_TOPIC, { username: OTHER_USER, password: OTHER_PASSWORD })).toBe('online');

    const gone = b.disconnected(USER);
    await s.stop({ status: { topic: STATUS_TOPIC, payload: 'offline' }, timeoutMs: 2_000 });
    await gone;
    expect(s.state).toBe('stopped');
    expect(await readRetained(b.url, STATUS_TOPIC, { username: OTHER_USER, password: OTHER_PASSWORD })).toBe('offline');
    // Exactly two publishes on the status topic: ours. A Will would be a third.
    expect(b.published.filter((p) => p.topic === STATUS_TOPIC).map((p) => [p.payload, p.retain])).toEqual([
      ['online', true],
      ['offline', true],
    ]);
  });

  it('killing the socket fires the Will (retained offline) and emits lost once', async () => {
    const b = await broker();
    const s = session(b.url);
    const lost: AgentError[] = [];
    const lostOnce = new Promise<void>((resolve) => s.on('lost', (e) => (lost.push(e), resolve())));
    await s.connect();
    await s.publish(STATUS_TOPIC, 'online', { qos: 1, retain: true });

    const gone = b.disconnected(USER);
    b.dropClient(USER);
    await lostOnce;
    await gone;
    expect(await readRetained(b.url, STATUS_TOPIC, { username: OTHER_USER, password: OTHER_PASSWORD })).toBe('offline');
    expect(b.published.filter((p) => p.topic === STATUS_TOPIC).map((p) => p.payload)).toEqual(['online', 'offline']);

    expect(lost).toHaveLength(1);
    expect(lost[0]?.code).toBe('MQTT_NETWORK');
    expect(s.state).toBe('idle');
    expect((await rejectedAgentError(s.publish(STATUS_TOPIC, 'x', { qos: 1, retain: false }))).code).toBe('MQTT_NETWORK');
    await s.stop({ timeoutMs: 500 }); // safe after a loss
    expect(lost).toHaveLength(1);
    expect(logRecords().filter((r) => String(r['msg']).startsWith('MQTT connection lost'))).toHaveLength(1);
  });

  it('stop() is idempotent, safe before connect, and a stopped session cannot connect', async () => {
    const b = await broker();
    const s = session(b.url);
    await Promise.all([s.stop({ timeoutMs: 100 }), s.stop({ timeoutMs: 100 })]);
    expect(s.state).toBe('stopped');
    expect((await rejectedAgentError(s.connect())).code).toBe('INTERNAL');
    expect(b.published).toEqual([]);
  });

  it('stop() during connect abandons the attempt and closes the socket', async () => {
    const silent = await fakeBroker({ connackCode: undefined });
    const s = session(silent.url, { connectTimeoutMs: 10_000 });
    const connecting = rejectedAgentError(s.connect());
    await new Promise<void>((resolve) => {
      const poll = (): void => (silent.connects.length > 0 ? resolve() : void setTimeout(poll, 10));
      poll();
    });
    await s.stop({ timeoutMs: 500 });
    expect((await connecting).code).toBe('MQTT_NETWORK');
    await silent.allSocketsClosed();
  });

  it('stop() is bounded by timeoutMs when the broker never acknowledges, then closes the socket', async () => {
    const mute = await fakeBroker({ connackCode: 0, ackPublishes: false });
    const s = session(mute.url);
    await s.connect();
    await s.stop({ status: { topic: STATUS_TOPIC, payload: 'offline' }, timeoutMs: 300 });
    expect(s.state).toBe('stopped');
    expect(mute.published).toEqual([{ topic: STATUS_TOPIC, payload: 'offline', qos: 1, retain: true }]);
    await mute.allSocketsClosed();
  });
});

describe('persistent session', () => {
  it('a QoS 1 message published while the client was away is delivered on reconnect', async () => {
    const b = await broker();
    const filter = channelFilter('domain', DOMAIN, CHANNEL);
    const topic = channelTopic('domain', DOMAIN, CHANNEL, 'commands');

    const first = session(b.url);
    await first.connect();
    await first.subscribe([filter], 1);
    const gone = b.disconnected(USER);
    await first.stop({ timeoutMs: 2_000 });
    await gone;

    const o = await observer(b);
    await o.publishAsync(topic, 'sent-while-offline', { qos: 1 });

    const second = session(b.url);
    const delivered = nextMessage(second, topic);
    await second.connect(); // no new SUBSCRIBE: the broker kept the session
    expect((await delivered).payload.toString()).toBe('sent-while-offline');
  });
});

describe('TLS (aedes over tls.createServer, openssl-made certificates)', () => {
  const certs = usePki('mgda-mqtt-tls-');

  const keyMarker = (): string => certs.clientKey.split('\n')[1] ?? 'unreachable';

  it('verify on with the right CA → connected', async () => {
    const b = await broker({ tls: { cert: certs.serverCert, key: certs.serverKey } });
    const s = session(b.url, { tls: { ca: certs.caCert, verify: true } });
    await s.connect();
    expect((b.client(USER)?.conn as TLSSocket).encrypted).toBe(true);
  });

  it('wrong CA → MQTT_TLS', async () => {
    const b = await broker({ tls: { cert: certs.serverCert, key: certs.serverKey } });
    const s = session(b.url, { tls: { ca: certs.otherCaCert, verify: true } });
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe('MQTT_TLS');
    expect(error.details['errorCode']).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('wrong CA with verify off → connected, with a warning in the log', async () => {
    const b = await broker({ tls: { cert: certs.serverCert, key: certs.serverKey } });
    const s = session(b.url, { tls: { ca: certs.otherCaCert, verify: false } });
    await s.connect();
    expect(logRecords().some((r) => r['level'] === 'warn' && String(r['msg']).includes('verification is OFF'))).toBe(true);
  });

  it('expired broker certificate → MQTT_TLS_CLOCK', async () => {
    const b = await broker({ tls: { cert: certs.expiredServerCert, key: certs.serverKey } });
    const s = session(b.url, { tls: { ca: certs.caCert, verify: true } });
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe('MQTT_TLS_CLOCK');
    expect(error.details['errorCode']).toBe('CERT_HAS_EXPIRED');
  });

  it('mutual TLS: the broker sees the client certificate; the key never reaches the log', async () => {
    secrets.push(keyMarker());
    const b = await broker({
      tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.caCert, requestCert: true, rejectUnauthorized: true },
    });
    const s = session(b.url, { tls: { ca: certs.caCert, cert: certs.clientCert, key: certs.clientKey, verify: true } });
    await s.connect();
    const socket = b.client(USER)?.conn as TLSSocket;
    expect(socket.authorized).toBe(true);
    expect(socket.getPeerCertificate().subject.CN).toBe('device-client');
  });

  it('mutual TLS without a client certificate → MQTT_TLS', async () => {
    const b = await broker({
      tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.caCert, requestCert: true, rejectUnauthorized: true },
    });
    const s = session(b.url, { tls: { ca: certs.caCert, verify: true } });
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe('MQTT_TLS');
  });

  it('certificates with a plain mqtt:// URL are not used (no silent TLS on the plain port)', async () => {
    secrets.push(keyMarker());
    const b = await broker();
    const s = session(b.url, { tls: { ca: certs.caCert, cert: certs.clientCert, key: certs.clientKey, verify: true } });
    await s.connect();
    expect((b.client(USER)?.conn as Partial<TLSSocket>).encrypted).toBeUndefined();
    expect(logRecords().some((r) => r['level'] === 'warn' && String(r['msg']).includes('not used'))).toBe(true);
  });
});

describe('MQTT 5 on the wire (scripted broker)', () => {
  it('CONNECT carries clean start 0, the session expiry, the Will and the credentials', async () => {
    const fake = await fakeBroker({ connackCode: 0 });
    const s = session(fake.url, { protocolVersion: 5, keepaliveSeconds: 45 });
    await s.connect();
    expect(fake.connects[0]).toEqual({
      protocolLevel: 5,
      cleanStart: false,
      keepalive: 45,
      sessionExpiryInterval: DEFAULT_SESSION_EXPIRY_SECONDS,
      clientId: USER,
      will: { topic: STATUS_TOPIC, payload: 'offline', qos: 1, retain: true },
      username: USER,
      password: PASSWORD,
    });
  });

  it('a chosen session expiry, and clean: true sends clean start without expiry', async () => {
    const fake = await fakeBroker({ connackCode: 0 });
    const kept = session(fake.url, { protocolVersion: 5, sessionExpirySeconds: 3600, clientId: 'custom-id' });
    await kept.connect();
    await kept.stop({ timeoutMs: 1_000 });
    const clean = session(fake.url, { protocolVersion: 5, clean: true, sessionExpirySeconds: 3600 });
    await clean.connect();
    expect(fake.connects.map((c) => [c.clientId, c.cleanStart, c.sessionExpiryInterval])).toEqual([
      ['custom-id', false, 3600],
      [USER, true, undefined],
    ]);
  });

  it('MQTT 3.1.1 CONNECT: clean session 0 and the Will, no properties', async () => {
    const fake = await fakeBroker({ connackCode: 0 });
    await session(fake.url).connect();
    expect(fake.connects[0]).toMatchObject({ protocolLevel: 4, cleanStart: false, clientId: USER, will: { qos: 1, retain: true } });
    expect(fake.connects[0]?.sessionExpiryInterval).toBeUndefined();
  });

  it.each([
    ['0x86', 0x86, 'MQTT_AUTH_REFUSED'],
    ['0x87', 0x87, 'MQTT_AUTH_REFUSED'],
    ['0x88', 0x88, 'MQTT_CONNECT_REFUSED'],
    ['0x8A', 0x8a, 'MQTT_CONNECT_REFUSED'],
  ] as const)('CONNACK reason code %s → %s, nothing left open', async (_label, reasonCode, expected) => {
    const fake = await fakeBroker({ connackCode: reasonCode });
    const s = session(fake.url, { protocolVersion: 5 });
    const error = await rejectedAgentError(s.connect());
    expect(error.code).toBe(expected);
    expect(error.details['reasonCode']).toBe(reasonCode);
    await fake.allSocketsClosed();
  });

  it('SUBACK 0x87 for one filter is granted: false; the connection stays up', async () => {
    const fake = await fakeBroker({ connackCode: 0, subackCodes: (filters) => filters.map((f) => (f.startsWith('denied') ? 0x87 : 1)) });
    const s = session(fake.url, { protocolVersion: 5 });
    await s.connect();
    expect(await s.subscribe(['denied/#', 'allowed/#'], 1)).toEqual([
      { filter: 'denied/#', granted: false, reasonCode: 0x87 },
      { filter: 'allowed/#', granted: true, qos: 1 },
    ]);
    await s.publish('allowed/x', 'still-up', { qos: 1, retain: false });
    expect(s.connected).toBe(true);
  });

  it('PUBACK 0x87 rejects that publish with MQTT_PUBLISH_REFUSED; the connection stays up', async () => {
    const fake = await fakeBroker({ connackCode: 0, pubackCode: (topic) => (topic === 'denied' ? 0x87 : 0) });
    const s = session(fake.url, { protocolVersion: 5 });
    await s.connect();
    const error = await rejectedAgentError(s.publish('denied', 'x', { qos: 1, retain: false }));
    expect(error.code).toBe('MQTT_PUBLISH_REFUSED');
    expect(error.details['reasonCode']).toBe(0x87);
    await s.publish('fine', 'y', { qos: 1, retain: false });
    expect(s.connected).toBe(true);
  });

  it('a DISCONNECT 0x87 from the broker (client revoked) → lost with MQTT_AUTH_REFUSED', async () => {
    const fake = await fakeBroker({ connackCode: 0 });
    const s = session(fake.url, { protocolVersion: 5 });
    const lost = new Promise<AgentError>((resolve) => s.on('lost', resolve));
    await s.connect();
    fake.disconnectAll(0x87);
    const error = await lost;
    expect(error.code).toBe('MQTT_AUTH_REFUSED');
    expect(error.details['reasonCode']).toBe(0x87);
    expect(s.state).toBe('idle');
  });

  it('a broker that stops answering pings → lost with MQTT_TIMEOUT', async () => {
    const fake = await fakeBroker({ connackCode: 0, answerPings: false });
    const s = session(fake.url, { protocolVersion: 5, keepaliveSeconds: 1 });
    const lost = new Promise<AgentError>((resolve) => s.on('lost', resolve));
    await s.connect();
    expect((await lost).code).toBe('MQTT_TIMEOUT');
    await fake.allSocketsClosed();
  });
});
