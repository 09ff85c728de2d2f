import { EventEmitter } from 'node:events';
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import { AgentError } from '../errors/agent-error.js';
import type { Logger } from '../logging/logger.js';
import type { Registry } from './registry.js';
import { authorizeTopic } from './topic-acl.js';

/**
 * An MQTT broker (aedes, MQTT 3.1/3.1.1 only) that authenticates and authorises like Magistrala:
 * username = client ID, password = client secret; publish/subscribe only on channels the client
 * is connected to (see topic-acl.ts).
 *
 * Decisions, documented because upstream leaves room:
 * - Every credential failure (unknown client, wrong secret, missing username or password) gets
 *   CONNACK 4 "bad username or password": the broker does not reveal which client IDs exist.
 *   Return code 5 is not used.
 * - A refused SUBSCRIBE gets a 0x80 failure in its SUBACK; the connection stays up.
 * - A refused PUBLISH is dropped silently (QoS 1/2 are still acknowledged); the connection stays up.
 * - Credentials and connections are checked when a client connects or subscribes; established
 *   sessions are not re-checked unless `kickOnRevoke` is set or `kick()` is called.
 */

export interface BrokerTlsOptions {
  key: string | Buffer;
  cert: string | Buffer;
  ca?: string | Buffer;
  /** Ask for a client certificate and refuse clients without a valid one (signed by `ca`). */
  requestCert?: boolean;
}

export interface BrokerOptions {
  host?: string;
  port?: number;
  registry: Registry;
  tls?: BrokerTlsOptions;
  /** Close a client's sessions when its secret is rotated, it is removed, or it loses a channel. */
  kickOnRevoke?: boolean;
  logger?: Logger;
}

export interface BrokerSessionInfo {
  /** MQTT client identifier from CONNECT. */
  mqttClientId: string;
  /** Magistrala client ID (the CONNECT username). */
  username: string;
}

/** Payloads of `events` (EventEmitter). Passwords never appear. */
export interface BrokerEvents {
  clientConnected: BrokerSessionInfo;
  clientDisconnected: BrokerSessionInfo;
  connectRefused: { mqttClientId: string; username: string | undefined; returnCode: number };
  subscribed: BrokerSessionInfo & { topic: string; qos: number };
  subscribeRefused: BrokerSessionInfo & { topic: string; reason: string };
  /** Every message routed to subscribers, from clients or from `publish()` (then mqttClientId is undefined). */
  published: { mqttClientId: string | undefined; username: string | undefined; topic: string; payload: Buffer; qos: number; retain: boolean };
  publishRefused: BrokerSessionInfo & { topic: string; reason: string };
}

export interface PublishOptions {
  retain?: boolean;
  qos?: 0 | 1 | 2;
}

export interface DevBroker {
  /** mqtt://host:port, or mqtts:// with TLS. */
  url: string;
  port: number;
  /** Server-side publish (bypasses authorisation), e.g. a command to a device. */
  publish(topic: string, payload: string | Buffer, options?: PublishOptions): Promise<void>;
  /** MQTT client identifiers of the sessions now connected. */
  clients(): string[];
  sessions(): BrokerSessionInfo[];
  /** Closes every session authenticated as this Magistrala client ID; returns how many. */
  kick(clientId: string): number;
  events: EventEmitter;
  /** Closes all sockets, the listener and aedes. Safe to call more than once. */
  close(): Promise<void>;
}

/** Where refused publishes are sent: no subscription can ever match it (only channel topics are allowed). */
const DROPPED_TOPIC = '$devstack/dropped';

export async function startBroker(options: BrokerOptions): Promise<DevBroker> {
  const host = options.host ?? '127.0.0.1';
  const registry = options.registry;
  const events = new EventEmitter();
  const usernames = new WeakMap<Client, string>();
  const connected = new Map<Client, BrokerSessionInfo>();
  const sockets = new Set<Socket>();
  const log = options.logger;

  const info = (client: Client): BrokerSessionInfo => ({ mqttClientId: client.id, username: usernames.get(client) ?? '' });

  const aedes = await Aedes.createBroker({
    // Magistrala clients often use their UUID as MQTT client ID: longer than MQTT 3.1's 23.
    maxClientsIdLength: 256,
    // Beyond this many messages in flight mqemitter queues them and drains the queue recursively:
    // a fleet losing power at once (1,000 Wills) overflowed the stack at the default of 100.
    concurrency: 100_000,
    authenticate(client, username, password, done) {
      const secret = password === undefined ? undefined : Buffer.from(password).toString('utf8');
      if (username === undefined || username === '' || secret === undefined || !registry.authenticate(username, secret)) {
        const error = new Error('bad username or password') as AuthenticateError;
        error.returnCode = 4;
        log?.info({ mqttClientId: client.id, username }, 'dev broker: connect refused (bad username or password)');
        events.emit('connectRefused', { mqttClientId: client.id, username, returnCode: 4 } satisfies BrokerEvents['connectRefused']);
        done(error, null);
        return;
      }
      usernames.set(client, username);
      done(null, true);
    },
    authorizePublish(client, packet, done) {
      if (client === null) {
        // Will of a client from an earlier broker run: nobody to attribute it to.
        packet.topic = DROPPED_TOPIC;
        packet.retain = false;
        done(null);
        return;
      }
      const username = usernames.get(client) ?? '';
      const decision = authorizeTopic(registry, username, packet.topic);
      if (!decision.allowed) {
        log?.info({ username, topic: packet.topic, reason: decision.reason }, 'dev broker: publish dropped');
        events.emit('publishRefused', { ...info(client), topic: packet.topic, reason: decision.reason } satisfies BrokerEvents['publishRefused']);
        packet.topic = DROPPED_TOPIC;
        packet.retain = false;
      }
      done(null);
    },
    authorizeSubscribe(client, subscription, done) {
      const username = usernames.get(client) ?? '';
      const decision = authorizeTopic(registry, username, subscription.topic);
      if (!decision.allowed) {
        log?.info({ username, topic: subscription.topic, reason: decision.reason }, 'dev broker: subscription refused');
        events.emit('subscribeRefused', {
          ...info(client),
          topic: subscription.topic,
          reason: decision.reason,
        } satisfies BrokerEvents['subscribeRefused']);
        done(null, null);
        return;
      }
      done(null, subscription);
    },
  });

  aedes.on('client', (client) => {
    const session = info(client);
    connected.set(client, session);
    log?.info(session, 'dev broker: client connected');
    events.emit('clientConnected', session satisfies BrokerEvents['clientConnected']);
  });
  aedes.on('clientDisconnect', (client) => {
    const session = connected.get(client) ?? info(client);
    connected.delete(client);
    log?.info(session, 'dev broker: client disconnected');
    events.emit('clientDisconnected', session satisfies BrokerEvents['clientDisconnected']);
  });
  aedes.on('subscribe', (subscriptions, client) => {
    for (const sub of subscriptions) {
      // Negated (refused) subscriptions are listed with qos 128.
      if ((sub.qos as number) === 128) continue;
      events.emit('subscribed', { ...info(client), topic: sub.topic, qos: sub.qos } satisfies BrokerEvents['subscribed']);
    }
  });
  aedes.on('publish', (packet, client) => {
    if (packet.topic.startsWith('$')) return;
    events.emit('published', {
      mqttClientId: client?.id,
      username: client === null ? undefined : usernames.get(client),
      topic: packet.topic,
      payload: Buffer.from(packet.payload),
      qos: packet.qos,
      retain: packet.retain,
    } satisfies BrokerEvents['published']);
  });
  // Network errors of single clients are expected in fault tests; they must not crash the stack.
  aedes.on('clientError', (client, error) => log?.debug({ mqttClientId: client.id, err: error.message }, 'dev broker: client error'));
  aedes.on('connectionError', (client, error) => log?.debug({ mqttClientId: client.id, err: error.message }, 'dev broker: connection error'));

  const handleConnection = (socket: Socket): void => {
    aedes.handle(socket);
  };
  const server: Server = options.tls
    ? createTlsServer(
        {
          key: options.tls.key,
          cert: options.tls.cert,
          ...(options.tls.ca === undefined ? {} : { ca: options.tls.ca }),
          requestCert: options.tls.requestCert === true,
          rejectUnauthorized: options.tls.requestCert === true,
        },
        handleConnection,
      )
    : createTcpServer(handleConnection);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  // TLS handshake failures (bad client certificate, plain-TCP clients) are the client's problem.
  server.on('tlsClientError', (error: Error) => log?.debug({ err: error.message }, 'dev broker: TLS handshake failed'));

  function kick(clientId: string): number {
    let closed = 0;
    for (const [client, session] of connected) {
      if (session.username === clientId) {
        client.close();
        closed++;
      }
    }
    if (closed > 0) log?.info({ username: clientId, sessions: closed }, 'dev broker: sessions kicked');
    return closed;
  }

  const stopWatching = options.kickOnRevoke
    ? registry.onChange((change) => {
        if (change.kind === 'client-secret-rotated' || change.kind === 'client-removed' || change.kind === 'disconnected') {
          kick(change.clientId);
        }
      })
    : () => undefined;

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    stopWatching();
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    throw new AgentError('INTERNAL', `dev broker could not listen on ${host}:${options.port ?? 0}`, { cause: error });
  }
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;

  return {
    url: `${options.tls ? 'mqtts' : 'mqtt'}://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    events,
    publish(topic, payload, publishOptions = {}) {
      return new Promise<void>((resolve, reject) => {
        aedes.publish(
          {
            cmd: 'publish',
            topic,
            payload: typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload,
            qos: publishOptions.qos ?? 0,
            retain: publishOptions.retain ?? false,
            dup: false,
          },
          (error) => (error ? reject(error) : resolve()),
        );
      });
    },
    clients() {
      return [...connected.values()].map((s) => s.mqttClientId);
    },
    sessions() {
      return [...connected.values()].map((s) => ({ ...s }));
    },
    kick,
    close() {
      closing ??= (async () => {
        stopWatching();
        const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
        await new Promise<void>((resolve) => aedes.close(() => resolve()));
        for (const socket of sockets) socket.destroy();
        await listenerClosed;
      })();
      return closing;
    },
  };
}
