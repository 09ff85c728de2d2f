import { createServer, type AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { connect as mqttConnect, type IClientOptions, type MqttClient } from 'mqtt';
import { AgentError } from '../../agent/errors/agent-error.js';
import {
  classifyConnackCode,
  classifyMqttError,
  classifyServerDisconnect,
  closedBeforeConnackError,
  connectTimeoutError,
  isSubackFailure,
} from '../../agent/mqtt/connack.js';
import { useTeardown } from '../helpers/agent-harness.js';
import { startFakeBroker, type FakeBroker, type FakeBrokerScript } from '../helpers/fake-mqtt-broker.js';

/*
 * The classifier is fed the errors MQTT.js 5.16 really produces: a real MQTT.js client talks to a
 * scripted broker on 127.0.0.1 that answers with the chosen CONNACK/SUBACK/PUBACK codes as bytes.
 */

const t = useTeardown();

async function fakeBroker(script: FakeBrokerScript): Promise<FakeBroker> {
  const broker = await startFakeBroker(script);
  t.add(() => broker.close());
  return broker;
}

function client(url: string, options: IClientOptions): MqttClient {
  const c = mqttConnect(url, { reconnectPeriod: 0, connectTimeout: 10_000, clientId: 'device-1', log: () => undefined, ...options });
  t.add(() => new Promise<void>((resolve) => c.end(true, {}, () => resolve())));
  return c;
}

/** The first error MQTT.js emits for a connection attempt. */
function firstError(c: MqttClient): Promise<Error> {
  return new Promise((resolve, reject) => {
    c.once('error', resolve);
    c.once('connect', () => reject(new Error('connected, but a failure was expected')));
  });
}

function connected(c: MqttClient): Promise<void> {
  return new Promise((resolve, reject) => {
    c.once('connect', () => resolve());
    c.once('error', reject);
  });
}

describe('refused CONNACK from a real MQTT.js client', () => {
  it.each([
    [1, 'MQTT_CONNECT_REFUSED'],
    [2, 'MQTT_CONNECT_REFUSED'],
    [3, 'MQTT_CONNECT_REFUSED'],
    [4, 'MQTT_AUTH_REFUSED'],
    [5, 'MQTT_AUTH_REFUSED'],
  ] as const)('MQTT 3.1.1 return code %i → %s', async (returnCode, expected) => {
    const broker = await fakeBroker({ connackCode: returnCode });
    const error = classifyMqttError(await firstError(client(broker.url, { protocolVersion: 4 })));
    expect(error.code).toBe(expected);
    expect(error.details['returnCode']).toBe(returnCode);
    expect(broker.connects[0]?.protocolLevel).toBe(4);
  });

  it.each([
    ['0x80', 0x80, 'MQTT_CONNECT_REFUSED'],
    ['0x84', 0x84, 'MQTT_CONNECT_REFUSED'],
    ['0x85', 0x85, 'MQTT_CONNECT_REFUSED'],
    ['0x86', 0x86, 'MQTT_AUTH_REFUSED'],
    ['0x87', 0x87, 'MQTT_AUTH_REFUSED'],
    ['0x88', 0x88, 'MQTT_CONNECT_REFUSED'],
    ['0x89', 0x89, 'MQTT_CONNECT_REFUSED'],
    ['0x8A', 0x8a, 'MQTT_CONNECT_REFUSED'],
    ['0x9F', 0x9f, 'MQTT_CONNECT_REFUSED'],
  ] as const)('MQTT 5 reason code %s → %s', async (_label, reasonCode, expected) => {
    const broker = await fakeBroker({ connackCode: reasonCode });
    const error = classifyMqttError(await firstError(client(broker.url, { protocolVersion: 5 })));
    expect(error.code).toBe(expected);
    expect(error.details['reasonCode']).toBe(reasonCode);
    expect(broker.connects[0]?.protocolLevel).toBe(5);
  });

  it('names the reason so an operator can read the log line', async () => {
    const broker = await fakeBroker({ connackCode: 0x89 });
    const error = classifyMqttError(await firstError(client(broker.url, { protocolVersion: 5 })));
    expect(error.message).toContain('server busy');
    expect(error.details['reason']).toBe('server busy');
  });
});

describe('transport failures from a real MQTT.js client', () => {
  it('nothing listening → MQTT_NETWORK with the errno code', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve) => server.close(() => resolve()));

    const error = classifyMqttError(await firstError(client(`mqtt://127.0.0.1:${port}`, {})));
    expect(error.code).toBe('MQTT_NETWORK');
    expect(error.details['errorCode']).toBe('ECONNREFUSED');
  });

  it("MQTT.js's own CONNACK deadline → MQTT_TIMEOUT", async () => {
    const broker = await fakeBroker({ connackCode: undefined });
    const error = classifyMqttError(await firstError(client(broker.url, { connectTimeout: 300 })));
    expect(error.code).toBe('MQTT_TIMEOUT');
  });

  it('a broker that stops answering pings → MQTT_TIMEOUT', async () => {
    const broker = await fakeBroker({ connackCode: 0, answerPings: false });
    const c = client(broker.url, { keepalive: 1 });
    await connected(c);
    const error = classifyMqttError(await firstError(c));
    expect(error.code).toBe('MQTT_TIMEOUT');
    expect(error.message).toContain('keepalive');
  });
});

describe('acknowledgement failures from a real MQTT.js client (MQTT 5)', () => {
  it('PUBACK 0x87 → MQTT_PUBLISH_REFUSED', async () => {
    const broker = await fakeBroker({ connackCode: 0, pubackCode: () => 0x87 });
    const c = client(broker.url, { protocolVersion: 5 });
    await connected(c);
    const raw = await new Promise<Error | undefined>((resolve) => c.publish('m/d/c/ch', 'x', { qos: 1 }, (err) => resolve(err)));
    const error = classifyMqttError(raw);
    expect(error.code).toBe('MQTT_PUBLISH_REFUSED');
    expect(error.details['reasonCode']).toBe(0x87);
  });

  it('SUBACK 0x87 → MQTT_SUBSCRIBE_REFUSED, and the SUBACK still carries every code', async () => {
    const broker = await fakeBroker({ connackCode: 0, subackCodes: () => [0x01, 0x87] });
    const c = client(broker.url, { protocolVersion: 5 });
    await connected(c);
    const { err, granted } = await new Promise<{ err: Error | null; granted: unknown }>((resolve) =>
      c.subscribe(['a/#', 'b/#'], { qos: 1 }, (e, _subs, packet) => resolve({ err: e, granted: packet?.granted })),
    );
    const error = classifyMqttError(err);
    expect(error.code).toBe('MQTT_SUBSCRIBE_REFUSED');
    expect(error.details['reasonCode']).toBe(0x87);
    expect(granted).toEqual([0x01, 0x87]);
  });
});

describe('classifyMqttError with Node error codes', () => {
  const nodeError = (code: string, message = 'some text'): Error => Object.assign(new Error(message), { code });

  it.each(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'ETIMEDOUT', 'ENETRESET'])(
    '%s → MQTT_NETWORK',
    (code) => {
      const error = classifyMqttError(nodeError(code));
      expect(error.code).toBe('MQTT_NETWORK');
      expect(error.details['errorCode']).toBe(code);
    },
  );

  it.each([
    'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    'SELF_SIGNED_CERT_IN_CHAIN',
    'DEPTH_ZERO_SELF_SIGNED_CERT',
    'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
    'ERR_TLS_CERT_ALTNAME_INVALID',
    'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
    'ERR_SSL_WRONG_VERSION_NUMBER',
    'ERR_OSSL_X509_KEY_VALUES_MISMATCH',
    'EPROTO',
  ])('%s → MQTT_TLS', (code) => {
    expect(classifyMqttError(nodeError(code)).code).toBe('MQTT_TLS');
  });

  it.each(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID'])('%s → MQTT_TLS_CLOCK, pointing at the clock', (code) => {
    const error = classifyMqttError(nodeError(code));
    expect(error.code).toBe('MQTT_TLS_CLOCK');
    expect(error.message).toContain('clock');
  });

  it("MQTT.js's 'TLS not authorized' → MQTT_TLS", () => {
    expect(classifyMqttError(new Error('TLS not authorized')).code).toBe('MQTT_TLS');
  });

  it('never copies the underlying error text (it may hold anything) into the message', () => {
    for (const raw of [nodeError('ECONNRESET', 'hunter2'), nodeError('CERT_HAS_EXPIRED', 'hunter2'), new Error('hunter2')]) {
      const error = classifyMqttError(raw);
      expect(error.message).not.toContain('hunter2');
      expect(JSON.stringify(error.toLog())).not.toContain('hunter2');
      expect(error.cause).toBe(raw);
    }
  });

  it('passes AgentErrors through and wraps non-Error values', () => {
    const original = new AgentError('MQTT_TIMEOUT', 'x');
    expect(classifyMqttError(original)).toBe(original);
    expect(classifyMqttError('weird').code).toBe('MQTT_PROTOCOL');
  });

  it('a parser complaint without a code is a protocol error; a closed connection is network', () => {
    expect(classifyMqttError(new Error('Invalid header flag bits, must be 0x0 for connack packet')).code).toBe('MQTT_PROTOCOL');
    expect(classifyMqttError(new Error('Connection closed')).code).toBe('MQTT_NETWORK');
  });

  it('adds the caller’s details', () => {
    const error = classifyMqttError(nodeError('ECONNREFUSED'), { url: 'mqtt://broker:1883/', clientId: 'c1' });
    expect(error.details).toMatchObject({ url: 'mqtt://broker:1883/', clientId: 'c1', errorCode: 'ECONNREFUSED' });
  });
});

describe('other classifications', () => {
  it('classifyConnackCode separates credentials from availability', () => {
    expect(classifyConnackCode(4).code).toBe('MQTT_AUTH_REFUSED');
    expect(classifyConnackCode(0x87).code).toBe('MQTT_AUTH_REFUSED');
    expect(classifyConnackCode(0x88).code).toBe('MQTT_CONNECT_REFUSED');
    expect(classifyConnackCode(0xfe).details).toMatchObject({ reasonCode: 0xfe, reason: 'reason code 254' });
  });

  it('connectTimeoutError and closedBeforeConnackError', () => {
    const timeout = connectTimeoutError(1500, { clientId: 'c1' });
    expect(timeout.code).toBe('MQTT_TIMEOUT');
    expect(timeout.details).toMatchObject({ timeoutMs: 1500, clientId: 'c1' });
    expect(closedBeforeConnackError().code).toBe('MQTT_NETWORK');
    expect(closedBeforeConnackError({ clientCertificate: true }).message).toContain('client certificate');
  });

  it('classifyServerDisconnect (MQTT 5 DISCONNECT from the broker)', () => {
    expect(classifyServerDisconnect(0x87).code).toBe('MQTT_AUTH_REFUSED');
    expect(classifyServerDisconnect(0x8b).code).toBe('MQTT_NETWORK');
    expect(classifyServerDisconnect(0x8e).code).toBe('MQTT_NETWORK');
    expect(classifyServerDisconnect(0x82).code).toBe('MQTT_PROTOCOL');
  });

  it('isSubackFailure: 0x80 in 3.1.1, every code from 0x80 in MQTT 5', () => {
    expect([0, 1, 2].map(isSubackFailure)).toEqual([false, false, false]);
    expect([0x80, 0x87, 0x8f, 0xa2].map(isSubackFailure)).toEqual([true, true, true, true]);
  });
});
