import { isIP } from 'node:net';
import { connect as mqttConnect, type IClientOptions, type MqttClient } from 'mqtt';
import type { Logger } from '../logging/logger.js';
import { AgentError } from '../errors/agent-error.js';
import {
  classifyConnackCode,
  classifyMqttError,
  classifyServerDisconnect,
  closedBeforeConnackError,
  connectionClosedError,
  connectTimeoutError,
  isSubackFailure,
  type Details,
} from './connack.js';

/**
 * One MQTT connection owned by the agent. MQTT.js's own reconnect is off: the agent's retry policy
 * decides when and whether to connect again (a fresh connect() or a fresh session), so a refused
 * client never hammers the broker on a fixed timer.
 */

export interface MqttTlsOptions {
  /** PEM text. */
  ca?: string;
  cert?: string;
  key?: string;
  /** Verify the broker's certificate (rejectUnauthorized). */
  verify: boolean;
}

export interface MqttWill {
  topic: string;
  payload: string | Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
}

export interface MqttSessionOptions {
  url: string;
  username: string;
  /** The client secret. Never logged. */
  password: string;
  /** Defaults to the username: Magistrala has one session per client. */
  clientId?: string;
  protocolVersion: 4 | 5;
  keepaliveSeconds: number;
  /** Deadline for TCP, TLS and CONNACK together. */
  connectTimeoutMs: number;
  /** false (the agent's choice) keeps the broker-side session, so commands sent while offline wait for us. */
  clean: boolean;
  /** MQTT 5 only, when clean is false. */
  sessionExpirySeconds?: number;
  /** Used only when the URL scheme is a TLS one (mqtts, ssl, tls, wss). */
  tls?: MqttTlsOptions;
  will?: MqttWill;
  logger: Logger;
}

export interface MqttMessage {
  topic: string;
  payload: Buffer;
  retain: boolean;
  qos: 0 | 1 | 2;
}

export interface SubscriptionResult {
  filter: string;
  granted: boolean;
  /** The granted QoS. */
  qos?: number;
  /** The SUBACK failure code (0x80 for 3.1.1; 0x80 and up for MQTT 5). */
  reasonCode?: number;
}

export interface PublishOptions {
  qos: 0 | 1 | 2;
  retain: boolean;
}

export interface StopOptions {
  /** Published retained at QoS 1 before the clean DISCONNECT, e.g. the "offline" status. */
  status?: { topic: string; payload: string | Buffer };
  /** Bound for the whole goodbye; after it the socket is closed forcibly. */
  timeoutMs: number;
}

export interface MqttSessionEvents {
  message: MqttMessage;
  /** The connection dropped after a successful connect. Once per connection; not after stop(). */
  lost: AgentError;
}

export type MqttSessionState = 'idle' | 'connecting' | 'connected' | 'stopping' | 'stopped';

/** A week: outlasts a long weekend offline without the broker keeping dead sessions forever. */
export const DEFAULT_SESSION_EXPIRY_SECONDS = 7 * 24 * 3600;

const TLS_SCHEMES = new Set(['mqtts:', 'ssl:', 'tls:', 'wss:']);

/** True for broker URLs whose scheme means TLS (mqtts, ssl, tls, wss). */
export function isTlsBrokerUrl(url: string): boolean {
  try {
    return TLS_SCHEMES.has(new URL(url).protocol);
  } catch {
    return false;
  }
}

/** The broker URL without user info, safe for logs and for handing to MQTT.js (whose URL user info would override ours). */
export function redactBrokerUrl(url: URL): string {
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  return copy.href;
}

/** Everything belonging to one network connection; a new connect() gets a new one. */
interface Connection {
  client: MqttClient;
  /** Rejecters of operations waiting for an answer on this connection. */
  pending: Set<(error: AgentError) => void>;
  connackCode?: number;
  serverDisconnectCode?: number;
  lastError?: unknown;
  closed: boolean;
}

type ListenerSets = { [E in keyof MqttSessionEvents]: Set<(value: MqttSessionEvents[E]) => void> };

export class MqttSession {
  private readonly options: MqttSessionOptions;
  private readonly log: Logger;
  private readonly url: URL;
  private readonly safeUrl: string;
  private readonly useTls: boolean;
  private readonly clientId: string;
  private readonly listeners: ListenerSets = { message: new Set(), lost: new Set() };
  private stateValue: MqttSessionState = 'idle';
  private connection: Connection | undefined;
  private abortConnect: ((error: AgentError) => void) | undefined;
  private stopPromise: Promise<void> | undefined;

  constructor(options: MqttSessionOptions) {
    this.options = options;
    this.log = options.logger.child({ component: 'mqtt' });
    try {
      this.url = new URL(options.url);
    } catch (cause) {
      // The URL may carry credentials, so it is not repeated here.
      throw new AgentError('CONFIG_INVALID', 'the MQTT broker URL is not a valid URL', { cause, details: { field: 'mqtt.url' } });
    }
    this.safeUrl = redactBrokerUrl(this.url);
    this.useTls = TLS_SCHEMES.has(this.url.protocol);
    this.clientId = options.clientId ?? options.username;
  }

  get state(): MqttSessionState {
    return this.stateValue;
  }

  get connected(): boolean {
    return this.stateValue === 'connected';
  }

  /** Adds a listener; returns the function that removes it. */
  on<E extends keyof MqttSessionEvents>(event: E, listener: (value: MqttSessionEvents[E]) => void): () => void {
    const set = this.listeners[event];
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Resolves on a successful CONNACK. Rejects with a classified AgentError and leaves no socket behind.
   * Callable again after a failure or a lost connection; not after stop().
   */
  connect(): Promise<void> {
    if (this.stateValue === 'stopping' || this.stateValue === 'stopped') {
      return Promise.reject(new AgentError('INTERNAL', 'connect() after stop(): create a new MQTT session'));
    }
    if (this.stateValue !== 'idle') {
      return Promise.reject(new AgentError('INTERNAL', `connect() while ${this.stateValue}`));
    }
    this.stateValue = 'connecting';
    const { connectTimeoutMs } = this.options;
    const details = this.logContext();

    return new Promise<void>((resolve, reject) => {
      let settled = false;
      let connection: Connection | undefined;

      const fail = (error: AgentError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        this.abortConnect = undefined;
        if (connection) this.discard(connection, error);
        this.connection = undefined;
        if (this.stateValue === 'connecting') this.stateValue = 'idle';
        // debug only: the caller gets the error (url and clientId included) and logs it with its decision.
        this.log.debug({ ...error.toLog() }, `MQTT connect failed: ${error.message}`);
        reject(error);
      };
      this.abortConnect = fail;
      // Our own deadline covers DNS, TCP, TLS and CONNACK; MQTT.js's is only a backstop.
      const deadline = setTimeout(() => fail(connectTimeoutError(connectTimeoutMs, details)), connectTimeoutMs);

      let client: MqttClient;
      try {
        client = mqttConnect(this.safeUrl, this.clientOptions());
      } catch (err) {
        // MQTT.js builds the socket synchronously: an unusable key or certificate throws here.
        fail(classifyMqttError(err, details));
        return;
      }
      const conn: Connection = { client, pending: new Set(), closed: false };
      connection = conn;
      this.connection = conn;

      client.on('packetreceive', (packet) => {
        if (packet.cmd === 'connack') {
          conn.connackCode = this.options.protocolVersion === 5 ? packet.reasonCode : packet.returnCode;
        } else if (packet.cmd === 'disconnect' && packet.reasonCode !== undefined) {
          conn.serverDisconnectCode = packet.reasonCode;
        }
      });
      client.on('error', (err) => {
        conn.lastError = err;
        if (settled) {
          // MQTT.js keeps the socket after a malformed packet (e.g. SUBACK code 0x87 on 3.1.1) and the
          // SUBSCRIBE waiting for it would hang forever (found by the torture harness): end the
          // connection, so 'close' reports the loss and fails what is pending.
          if (!conn.closed) conn.client.stream?.destroy();
          return;
        }
        // The CONNACK packet is the exact source of a refusal; the error text is only a fallback.
        const refused = conn.connackCode !== undefined && conn.connackCode > 0;
        fail(refused ? classifyConnackCode(conn.connackCode as number, details) : classifyMqttError(err, details));
      });
      client.on('connect', (connack) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        this.abortConnect = undefined;
        this.stateValue = 'connected';
        this.log.info(
          { ...details, sessionPresent: connack.sessionPresent },
          `connected to the MQTT broker ${this.safeUrl} as ${this.clientId}`,
        );
        resolve();
      });
      client.on('close', () => {
        conn.closed = true;
        if (!settled) {
          fail(
            conn.lastError !== undefined
              ? classifyMqttError(conn.lastError, details)
              : closedBeforeConnackError({ ...details, clientCertificate: this.useTls && this.options.tls?.cert !== undefined }),
          );
          return;
        }
        const error = this.closeReason(conn, details);
        for (const rejectPending of conn.pending) rejectPending(error);
        conn.pending.clear();
        if (this.connection === conn && this.stateValue === 'connected') this.handleLost(conn, error);
      });
      client.on('message', (topic, payload, packet) => {
        this.log.debug({ topic, bytes: payload.length, qos: packet.qos, retain: packet.retain }, 'MQTT message received');
        this.emit('message', { topic, payload, retain: packet.retain, qos: packet.qos });
      });
    });
  }

  /**
   * One result per filter, in order. A refused filter is `granted: false`, not a rejection: the
   * other subscriptions stand and the connection stays up. Rejects only when there is no answer.
   */
  async subscribe(filters: string[], qos: 0 | 1 | 2): Promise<SubscriptionResult[]> {
    if (filters.length === 0) return [];
    const conn = this.requireConnection('subscribe');
    // Brokers merge duplicate filters in one SUBSCRIBE, which would break the one-code-per-filter match.
    const unique = [...new Set(filters)];
    const codes = await new Promise<number[]>((resolve, reject) => {
      const onClose = (error: AgentError): void => reject(error);
      conn.pending.add(onClose);
      conn.client.subscribe(unique, { qos }, (err, _granted, packet) => {
        conn.pending.delete(onClose);
        // MQTT.js reports any failure code as an error but still hands over the SUBACK.
        const granted = packet?.granted;
        if (Array.isArray(granted) && granted.length === unique.length && granted.every((g) => typeof g === 'number')) {
          resolve(granted as number[]);
        } else {
          reject(classifyMqttError(err ?? new Error('SUBACK without one code per filter'), this.logContext()));
        }
      });
    });
    const byFilter = new Map<string, SubscriptionResult>();
    unique.forEach((filter, i) => {
      const code = codes[i] as number;
      byFilter.set(filter, isSubackFailure(code) ? { filter, granted: false, reasonCode: code } : { filter, granted: true, qos: code });
    });
    const results = filters.map((filter) => byFilter.get(filter) as SubscriptionResult);
    const granted = unique.filter((f) => byFilter.get(f)?.granted);
    const refused = unique.flatMap((f) => {
      const r = byFilter.get(f);
      return r && !r.granted ? [{ filter: f, reasonCode: r.reasonCode }] : [];
    });
    if (granted.length > 0) this.log.info({ filters: granted }, `subscriptions granted: ${granted.join(', ')}`);
    if (refused.length > 0) {
      this.log.warn(
        { code: 'MQTT_SUBSCRIBE_REFUSED', refused },
        `subscriptions refused by the broker: ${refused.map((r) => r.filter).join(', ')}`,
      );
    }
    return results;
  }

  async unsubscribe(filters: string[]): Promise<void> {
    if (filters.length === 0) return;
    const conn = this.requireConnection('unsubscribe');
    await new Promise<void>((resolve, reject) => {
      const onClose = (error: AgentError): void => reject(error);
      conn.pending.add(onClose);
      conn.client.unsubscribe(filters, (err) => {
        conn.pending.delete(onClose);
        if (err) reject(classifyMqttError(err, this.logContext()));
        else resolve();
      });
    });
    this.log.info({ filters }, `unsubscribed: ${filters.join(', ')}`);
  }

  /** Resolves when the broker has it (PUBACK for QoS 1) or, for QoS 0, when it is written. */
  publish(topic: string, payload: string | Buffer, options: PublishOptions): Promise<void> {
    try {
      return this.publishOn(this.requireConnection('publish'), topic, payload, options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * If connected: publish the given retained status at QoS 1, wait for its PUBACK, then DISCONNECT
   * cleanly so the broker discards the Will. All of it within timeoutMs, then the socket is closed
   * regardless. Never throws, idempotent, safe in any state.
   */
  stop(options: StopOptions): Promise<void> {
    this.stopPromise ??= this.runStop(options).catch((err: unknown) => {
      const error = classifyMqttError(err);
      this.log.warn(error.toLog(), `error while stopping the MQTT session: ${error.message}`);
    });
    return this.stopPromise;
  }

  private async runStop({ status, timeoutMs }: StopOptions): Promise<void> {
    const previous = this.stateValue;
    this.stateValue = 'stopping';
    const conn = this.connection;
    this.connection = undefined;
    if (previous === 'connecting') {
      this.abortConnect?.(new AgentError('MQTT_NETWORK', 'connect abandoned: the MQTT session is stopping'));
    }
    if (previous !== 'connected' || !conn) {
      this.stateValue = 'stopped';
      return;
    }

    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const goodbye = async (): Promise<'done'> => {
      if (status) {
        try {
          await this.publishOn(conn, status.topic, status.payload, { qos: 1, retain: true });
        } catch (err) {
          const error = classifyMqttError(err);
          this.log.warn({ topic: status.topic, ...error.toLog() }, `could not publish the status before disconnecting: ${error.message}`);
        }
      }
      await new Promise<void>((resolve) => {
        conn.client.end(false, {}, () => resolve());
      });
      return 'done';
    };
    const outcome = await Promise.race([goodbye(), timedOut]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      this.log.warn({ timeoutMs }, 'MQTT disconnect did not finish in time; closing the socket');
    }
    this.discard(conn, new AgentError('MQTT_NETWORK', 'the MQTT session was stopped'));
    this.stateValue = 'stopped';
    this.log.info({ url: this.safeUrl, clientId: this.clientId }, 'MQTT session stopped');
  }

  private publishOn(conn: Connection, topic: string, payload: string | Buffer, options: PublishOptions): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (conn.closed) {
        reject(connectionClosedError(this.logContext()));
        return;
      }
      const onClose = (error: AgentError): void => reject(error);
      conn.pending.add(onClose);
      conn.client.publish(topic, payload, { qos: options.qos, retain: options.retain }, (err) => {
        conn.pending.delete(onClose);
        if (err) reject(classifyMqttError(err, { ...this.logContext(), topic }));
        else resolve();
      });
    });
  }

  private requireConnection(operation: string): Connection {
    const conn = this.connection;
    if (this.stateValue !== 'connected' || !conn || conn.closed) {
      throw new AgentError('MQTT_NETWORK', `cannot ${operation}: not connected to the MQTT broker`, {
        details: { state: this.stateValue },
      });
    }
    return conn;
  }

  private closeReason(conn: Connection, details: Details): AgentError {
    if (conn.serverDisconnectCode !== undefined && conn.serverDisconnectCode > 0) {
      return classifyServerDisconnect(conn.serverDisconnectCode, details);
    }
    if (conn.lastError !== undefined) return classifyMqttError(conn.lastError, details);
    return connectionClosedError(details);
  }

  private handleLost(conn: Connection, error: AgentError): void {
    this.connection = undefined;
    this.stateValue = 'idle';
    this.discard(conn, error);
    // debug: the owner of the session decides what a lost connection means and logs it once.
    this.log.debug({ ...this.logContext(), ...error.toLog() }, `MQTT connection lost: ${error.message}`);
    this.emit('lost', error);
  }

  /** Closes the socket forcibly, fails whatever still waits on it and stops MQTT.js's timers. */
  private discard(conn: Connection, error: AgentError): void {
    for (const rejectPending of conn.pending) rejectPending(error);
    conn.pending.clear();
    conn.client.end(true);
    // end() is a no-op once a graceful end has begun, so make sure the socket really goes.
    conn.client.stream?.destroy();
  }

  private emit<E extends keyof MqttSessionEvents>(event: E, value: MqttSessionEvents[E]): void {
    for (const listener of [...this.listeners[event]]) {
      try {
        listener(value);
      } catch (err) {
        // A throwing listener must not break MQTT.js's event handling; the code is enough to find it.
        this.log.error({ event, code: classifyMqttError(err).code }, 'MQTT session listener threw');
      }
    }
  }

  private logContext(): Details {
    return { url: this.safeUrl, clientId: this.clientId };
  }

  private clientOptions(): IClientOptions {
    const o = this.options;
    const options: IClientOptions = {
      username: o.username,
      password: o.password,
      clientId: this.clientId,
      protocolVersion: o.protocolVersion,
      keepalive: o.keepaliveSeconds,
      clean: o.clean,
      connectTimeout: o.connectTimeoutMs + 1_000,
      reconnectPeriod: 0,
      // Subscriptions are the agent's business (the broker keeps them in a persistent session).
      resubscribe: false,
      // Nothing is queued silently while offline: publish() fails instead and the caller decides.
      queueQoSZero: false,
      // Otherwise mqtt-packet pre-allocates a Buffer for each of the 65,536 packet IDs: 6 MB of heap
      // (a third of an idle agent's) to save a 2-byte allocation per packet.
      writeCache: false,
      // MQTT.js's debug output prints whole packets, the CONNECT password included.
      log: () => undefined,
    };
    if (o.protocolVersion === 5 && !o.clean) {
      options.properties = { sessionExpiryInterval: o.sessionExpirySeconds ?? DEFAULT_SESSION_EXPIRY_SECONDS };
    }
    if (o.will) {
      options.will = {
        topic: o.will.topic,
        payload: Buffer.from(o.will.payload),
        qos: o.will.qos,
        retain: o.will.retain,
      };
    }
    const tls = o.tls;
    if (this.useTls) {
      options.rejectUnauthorized = tls?.verify ?? true;
      if (tls?.ca !== undefined) options.ca = tls.ca;
      if (tls?.cert !== undefined) options.cert = tls.cert;
      if (tls?.key !== undefined) options.key = tls.key;
      const host = this.url.hostname.replace(/^\[|\]$/g, '');
      // SNI takes a host name only; MQTT.js would otherwise send none for a name it did not parse itself.
      if (isIP(host) === 0) options.servername = host;
      if (tls?.verify === false) {
        this.log.warn({ url: this.safeUrl }, 'MQTT broker certificate verification is OFF (mqtt.tlsVerify false)');
      }
    } else if (tls && (tls.ca !== undefined || tls.cert !== undefined || tls.key !== undefined)) {
      // MQTT.js would silently switch mqtt:// to TLS on the plain port when given a client cert and key.
      this.log.warn(
        { url: this.safeUrl },
        'TLS certificates are not used: the MQTT broker URL is not a TLS one (use mqtts:// to use them)',
      );
    }
    return options;
  }
}
