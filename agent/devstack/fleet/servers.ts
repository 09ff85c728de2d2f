import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startBootstrapServer, type BootstrapServer } from '../bootstrap-server.js';
import { startBroker, type DevBroker } from '../broker.js';
import type { FaultRule } from '../faults.js';
import { createRegistry, type Registry } from '../registry.js';

/**
 * The dev stack's two servers for a fleet, with what a fleet simulation needs on top: they can be
 * taken off the network and brought back on the same ports (an uplink outage), and every device
 * request they see is time-stamped into logs that survive those restarts.
 */

export interface RequestTimes {
  /** Device requests to Bootstrap (plain or secure), ms since the time origin. */
  bootstrap: number[];
  /** MQTT CONNECTs the broker answered (accepted or refused). */
  mqtt: number[];
}

/**
 * Starts a server on the port it had before; retries for a few seconds, since another process may
 * briefly hold that port while it is free (an ephemeral client port, say).
 */
export async function onSamePort<T>(start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (error) {
      const cause = (error as { cause?: { code?: unknown } }).cause;
      if (cause?.code !== 'EADDRINUSE' || attempt >= 50) throw error;
      await sleep(100);
    }
  }
}

export class FleetServers {
  readonly registry: Registry = createRegistry();
  readonly domainId = randomUUID();
  readonly times: RequestTimes = { bootstrap: [], mqtt: [] };
  /** When each Magistrala client ID last had a CONNECT accepted. */
  readonly lastConnectedAt = new Map<string, number>();
  private bootstrap: BootstrapServer | undefined;
  private broker: DevBroker | undefined;
  private bootstrapPort = 0;
  private brokerPort = 0;
  private fault: FaultRule | undefined;
  private readonly encryptKey: string;

  constructor(encryptKey: string) {
    this.encryptKey = encryptKey;
  }

  get bootstrapUrl(): string {
    return `http://127.0.0.1:${this.bootstrapPort}`;
  }

  get mqttUrl(): string {
    return `mqtt://127.0.0.1:${this.brokerPort}`;
  }

  get up(): boolean {
    return this.broker !== undefined && this.bootstrap !== undefined;
  }

  /** Starts both servers (on their previous ports after a stop). */
  async start(): Promise<void> {
    const broker = await onSamePort(() => startBroker({ host: '127.0.0.1', port: this.brokerPort, registry: this.registry }));
    broker.events.on('clientConnected', (session: { username: string }) => {
      const now = performance.now();
      this.times.mqtt.push(now);
      this.lastConnectedAt.set(session.username, now);
    });
    broker.events.on('connectRefused', () => this.times.mqtt.push(performance.now()));
    this.broker = broker;
    this.brokerPort = broker.port;
    try {
      const bootstrap = await onSamePort(() => startBootstrapServer({
        host: '127.0.0.1',
        port: this.bootstrapPort,
        registry: this.registry,
        encryptKey: this.encryptKey,
        responseFamily: 'v0.20',
        userToken: randomUUID(),
        brokerUrl: this.mqttUrl,
        kick: (clientId) => this.broker?.kick(clientId) ?? 0,
        maxLoggedRequests: 100,
      }));
      bootstrap.events.on('request', (entry: { endpoint: string }) => {
        if (entry.endpoint === 'plain' || entry.endpoint === 'secure') this.times.bootstrap.push(performance.now());
      });
      bootstrap.setFault(this.fault);
      this.bootstrap = bootstrap;
      this.bootstrapPort = bootstrap.port;
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  /** Takes both servers off the network (sockets closed). Never throws. */
  async stop(): Promise<void> {
    const { bootstrap, broker } = this;
    this.bootstrap = undefined;
    this.broker = undefined;
    await bootstrap?.close().catch(() => undefined);
    await broker?.close().catch(() => undefined);
  }

  /** Bootstrap's answer to every device request, until cleared (also across restarts). */
  setBootstrapFault(rule: FaultRule | undefined): void {
    this.fault = rule;
    this.bootstrap?.setFault(rule);
  }

  /** Number of MQTT sessions per Magistrala client ID now connected. */
  connectedClients(): Set<string> {
    return new Set((this.broker?.sessions() ?? []).map((s) => s.username));
  }

  kick(clientId: string): number {
    return this.broker?.kick(clientId) ?? 0;
  }
}
