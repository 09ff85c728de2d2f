import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TlsOptions } from 'node:tls';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import { connect as mqttConnect, type MqttClient } from 'mqtt';

/**
 * A real aedes 1.2 broker (MQTT 3.1.1) on 127.0.0.1, port 0, over TCP or TLS, with username/password
 * authentication and a per-filter subscribe authorisation callback, for the session's integration tests.
 */
export interface TestBrokerOptions {
  /** username → password. When absent, every client is accepted. */
  users?: Record<string, string>;
  /** false refuses the filter: aedes answers SUBACK 0x80 for it. Default: allow everything. */
  canSubscribe?: (username: string | undefined, filter: string) => boolean;
  /** Serve MQTT over TLS with these options (cert, key, and ca/requestCert for mutual TLS). */
  tls?: TlsOptions;
}

export interface BrokerPublish {
  topic: string;
  payload: string;
  retain: boolean;
  qos: number;
  /** undefined for messages the broker published itself (e.g. $SYS); Wills carry the dead client's ID. */
  clientId: string | undefined;
}

export interface TestBroker {
  aedes: Aedes;
  port: number;
  /** mqtt://127.0.0.1:<port>, or mqtts://localhost:<port> with TLS. */
  url: string;
  /** Every non-$SYS publish that went through the broker, Wills included, in order. */
  published: BrokerPublish[];
  /** The broker-side client for a client ID, while connected. */
  client(id: string): Client | undefined;
  /** Resolves when the broker has seen the client with this ID disconnect (after its Will, if any). */
  disconnected(id: string): Promise<void>;
  /** Kills the client's TCP socket from the broker side: to the broker this is an unclean loss. */
  dropClient(id: string): void;
  close(): Promise<void>;
}

export async function startAedesBroker(options: TestBrokerOptions = {}): Promise<TestBroker> {
  const usernames = new WeakMap<Client, string | undefined>();
  const aedes = await Aedes.createBroker({
    authenticate: (client, username, password, done) => {
      usernames.set(client, username);
      const users = options.users;
      if (!users) return done(null, true);
      if (username !== undefined && password !== undefined && users[username] === password.toString('utf8')) {
        return done(null, true);
      }
      const error = new Error('bad user name or password') as AuthenticateError;
      error.returnCode = 4;
      return done(error, null);
    },
    authorizeSubscribe: (client, subscription, done) => {
      const allowed = options.canSubscribe?.(usernames.get(client), subscription.topic) ?? true;
      // A null subscription (not an error) makes aedes answer 0x80 for this filter and keep the connection.
      done(null, allowed ? subscription : null);
    },
  });

  const published: BrokerPublish[] = [];
  aedes.on('publish', (packet, client) => {
    if (packet.topic.startsWith('$SYS')) return;
    published.push({
      topic: packet.topic,
      payload: Buffer.from(packet.payload).toString('utf8'),
      retain: packet.retain,
      qos: packet.qos,
      clientId: client?.id,
    });
  });
  const disconnectedIds = new Set<string>();
  const disconnectWaiters = new Map<string, (() => void)[]>();
  aedes.on('clientDisconnect', (client) => {
    disconnectedIds.add(client.id);
    for (const wake of disconnectWaiters.get(client.id) ?? []) wake();
    disconnectWaiters.delete(client.id);
  });
  aedes.on('client', (client) => disconnectedIds.delete(client.id));

  const sockets = new Set<Socket>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  };
  const server: Server = options.tls
    ? createTlsServer(options.tls, (socket) => {
        track(socket);
        aedes.handle(socket);
      })
    : createTcpServer((socket) => {
        track(socket);
        aedes.handle(socket);
      });
  // TLS handshake failures are expected in some tests; without a listener they would be thrown.
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;

  const clients = (): Record<string, Client> => (aedes as unknown as { clients: Record<string, Client> }).clients;

  return {
    aedes,
    port,
    url: options.tls ? `mqtts://localhost:${port}` : `mqtt://127.0.0.1:${port}`,
    published,
    client: (id) => clients()[id],
    disconnected: (id) =>
      new Promise<void>((resolve) => {
        if (disconnectedIds.has(id)) return resolve();
        disconnectWaiters.set(id, [...(disconnectWaiters.get(id) ?? []), resolve]);
      }),
    dropClient: (id) => {
      const client = clients()[id];
      if (!client) throw new Error(`no client ${id} on the broker`);
      (client.conn as Socket).destroy();
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
    },
  };
}

/** A plain MQTT.js client for the other side of a test (publisher, observer). Ends itself on close(). */
export async function connectObserver(
  url: string,
  options: { username?: string; password?: string; clientId?: string; ca?: string; cert?: string; key?: string } = {},
): Promise<MqttClient & { closeNow(): Promise<void> }> {
  const client = mqttConnect(url, {
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    clean: true,
    clientId: options.clientId ?? `observer-${Math.random().toString(16).slice(2)}`,
    ...(options.username !== undefined ? { username: options.username } : {}),
    ...(options.password !== undefined ? { password: options.password } : {}),
    ...(options.ca !== undefined ? { ca: options.ca } : {}),
    ...(options.cert !== undefined ? { cert: options.cert } : {}),
    ...(options.key !== undefined ? { key: options.key } : {}),
  });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
    client.once('close', () => reject(new Error('observer could not connect')));
  });
  return Object.assign(client, {
    closeNow: () => new Promise<void>((resolve) => client.end(true, {}, () => resolve())),
  });
}

/** The retained message a fresh subscriber gets for a topic (waits at most waitMs for it to arrive). */
export async function readRetained(
  url: string,
  topic: string,
  options: { username?: string; password?: string; waitMs?: number; ca?: string; cert?: string; key?: string } = {},
): Promise<string | undefined> {
  const observer = await connectObserver(url, options);
  try {
    return await new Promise<string | undefined>((resolve, reject) => {
      const timer = setTimeout(() => resolve(undefined), options.waitMs ?? 5_000);
      observer.on('message', (t, payload, packet) => {
        if (t === topic && packet.retain) {
          clearTimeout(timer);
          resolve(payload.toString('utf8'));
        }
      });
      observer.subscribe(topic, { qos: 1 }, (err) => {
        if (err) {
          clearTimeout(timer);
          reject(err);
        }
      });
    });
  } finally {
    await observer.closeNow();
  }
}
