import { request } from 'node:http';
import { connect as mqttConnect, type IClientOptions, type MqttClient } from 'mqtt';
import { onTestFinished } from 'vitest';

/** Helpers for the dev-stack suites: raw HTTP (exact paths and header bytes) and real MQTT.js clients. */

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** How many separate chunks the body arrived in. */
  chunks: number;
}

/**
 * Sends one request with the path exactly as given (no normalisation, no percent-encoding) and
 * header values written byte for byte (a latin1 string is sent as its bytes).
 */
export function rawRequest(
  baseUrl: string,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string | Buffer; signal?: AbortSignal } = {},
): Promise<RawResponse> {
  const url = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        method: options.method ?? 'GET',
        path,
        headers: { ...options.headers, Connection: 'close' },
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (chunk: Buffer) => parts.push(chunk));
        res.once('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts), chunks: parts.length }),
        );
        res.once('error', reject);
      },
    );
    req.once('error', reject);
    req.end(options.body);
  });
}

/** JSON request to the management API. */
export function apiRequest(
  baseUrl: string,
  method: string,
  path: string,
  token: string | undefined,
  body?: unknown,
): Promise<RawResponse> {
  const headers: Record<string, string> = {};
  if (token !== undefined) headers['Authorization'] = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return rawRequest(baseUrl, path, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
}

/** An MQTT.js client (MQTT 3.1.1, no reconnect) closed when the test ends. */
export async function connectMqtt(url: string, options: IClientOptions = {}): Promise<MqttClient> {
  const client = mqttConnect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, ...options });
  onTestFinished(() => new Promise<void>((resolve) => client.end(true, {}, () => resolve())));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
    client.once('close', () => reject(new Error('connection closed before CONNACK')));
  });
  return client;
}

/** Connects expecting a refusal; resolves with the CONNACK return code MQTT.js reports. */
export function connectRefusal(url: string, options: IClientOptions): Promise<number | string | undefined> {
  const client = mqttConnect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, ...options });
  onTestFinished(() => new Promise<void>((resolve) => client.end(true, {}, () => resolve())));
  return new Promise((resolve, reject) => {
    client.once('connect', () => reject(new Error('connection was accepted')));
    client.once('error', (error: Error & { code?: number | string }) => resolve(error.code));
  });
}

/**
 * Subscribes and resolves with the return code of the SUBACK as it came over the wire (granted QoS,
 * or 128 for a refusal; MQTT.js itself reports a refusal only as "Unspecified error").
 */
export function subscribe(client: MqttClient, topic: string, qos: 0 | 1 | 2 = 1): Promise<number> {
  return new Promise((resolve, reject) => {
    const onPacket = (packet: { cmd: string; granted?: (number | object)[] }): void => {
      if (packet.cmd !== 'suback') return;
      client.off('packetreceive', onPacket);
      const code = packet.granted?.[0];
      resolve(typeof code === 'number' ? code : -1);
    };
    client.on('packetreceive', onPacket);
    client.subscribe(topic, { qos }, (error) => {
      if (error && !/Unspecified error/.test(error.message)) {
        client.off('packetreceive', onPacket);
        reject(error);
      }
    });
  });
}

export function publish(client: MqttClient, topic: string, payload: string, options: { qos?: 0 | 1 | 2; retain?: boolean } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    client.publish(topic, payload, { qos: options.qos ?? 1, retain: options.retain ?? false }, (error) => (error ? reject(error) : resolve()));
  });
}

export interface ReceivedMessage {
  topic: string;
  payload: string;
  retain: boolean;
}

/** Resolves with the next message the client receives. */
export function nextMessage(client: MqttClient): Promise<ReceivedMessage> {
  return new Promise((resolve) => {
    client.once('message', (topic, payload, packet) => resolve({ topic, payload: payload.toString('utf8'), retain: packet.retain }));
  });
}

/** Resources (sockets, servers, timers) this process holds now, counted by kind. */
export function activeResourceCounts(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}

/** Waits (bounded) until the handles of the given kinds are back to the baseline; returns the final counts. */
export async function settleResources(baseline: Record<string, number>, kinds: readonly string[]): Promise<Record<string, number>> {
  let counts = activeResourceCounts();
  for (let i = 0; i < 200; i++) {
    if (kinds.every((k) => (counts[k] ?? 0) <= (baseline[k] ?? 0))) break;
    await new Promise((resolve) => setTimeout(resolve, 10));
    counts = activeResourceCounts();
  }
  return Object.fromEntries(kinds.map((k) => [k, counts[k] ?? 0]));
}
