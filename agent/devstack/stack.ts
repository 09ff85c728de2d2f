import { randomUUID } from 'node:crypto';
import type { Logger } from '../logging/logger.js';
import { startBootstrapServer, type BootstrapServer } from './bootstrap-server.js';
import { startBroker, type BrokerTlsOptions, type DevBroker } from './broker.js';
import type { BootstrapResponseFamily } from './device-endpoint.js';
import { createRegistry, type Registry } from './registry.js';

/**
 * The whole Magistrala-like world on one machine: registry, MQTT broker and Bootstrap emulator,
 * wired together (v0.30 content points at this broker; /dev/clients/{id}/kick reaches it).
 */

export interface DevStackOptions {
  host?: string;
  bootstrapPort?: number;
  mqttPort?: number;
  encryptKey: string;
  responseFamily?: BootstrapResponseFamily;
  /** Registry JSON file: loaded at start, rewritten atomically after each change. */
  persistFile?: string;
  /** Management API token; random when absent. */
  userToken?: string;
  /** The domain the stack's helpers and printouts use; random when absent. */
  domainId?: string;
  tls?: BrokerTlsOptions;
  kickOnRevoke?: boolean;
  logger?: Logger;
}

export interface DevStack {
  bootstrap: BootstrapServer;
  broker: DevBroker;
  registry: Registry;
  bootstrapUrl: string;
  mqttUrl: string;
  userToken: string;
  domainId: string;
  /** Bootstrap server first, then the broker (reverse start order). Never throws. */
  close(): Promise<void>;
}

export async function startDevStack(options: DevStackOptions): Promise<DevStack> {
  const host = options.host ?? '127.0.0.1';
  const userToken = options.userToken ?? randomUUID();
  const domainId = options.domainId ?? randomUUID();
  const registry = createRegistry(options.persistFile === undefined ? {} : { persistFile: options.persistFile });

  const broker = await startBroker({
    host,
    port: options.mqttPort ?? 0,
    registry,
    ...(options.tls === undefined ? {} : { tls: options.tls }),
    ...(options.kickOnRevoke === undefined ? {} : { kickOnRevoke: options.kickOnRevoke }),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
  });

  let bootstrap: BootstrapServer;
  try {
    bootstrap = await startBootstrapServer({
      host,
      port: options.bootstrapPort ?? 0,
      registry,
      encryptKey: options.encryptKey,
      responseFamily: options.responseFamily ?? 'v0.20',
      userToken,
      brokerUrl: broker.url,
      kick: (clientId) => broker.kick(clientId),
      ...(options.logger === undefined ? {} : { logger: options.logger }),
    });
  } catch (error) {
    await broker.close().catch(() => undefined);
    throw error;
  }

  let closing: Promise<void> | undefined;
  return {
    bootstrap,
    broker,
    registry,
    bootstrapUrl: bootstrap.url,
    mqttUrl: broker.url,
    userToken,
    domainId,
    close() {
      closing ??= (async () => {
        await bootstrap.close().catch((error: unknown) => options.logger?.warn({ err: String(error) }, 'dev stack: bootstrap close failed'));
        await broker.close().catch((error: unknown) => options.logger?.warn({ err: String(error) }, 'dev stack: broker close failed'));
      })();
      return closing;
    },
  };
}
