import { randomBytes } from 'node:crypto';
import type { AgentConfig } from '../config/schema.js';
import type { DeviceConfig } from '../bootstrap/model.js';
import { toAgentError } from '../errors/agent-error.js';
import type { Logger } from '../logging/logger.js';
import { MqttSession } from '../mqtt/session.js';
import { channelFilter } from '../mqtt/topics.js';

/*
 * A short MQTT session with the device's own credentials, to prove login and per-channel subscribe
 * permission. It must not disturb the live agent: its own client ID (a broker would otherwise kick
 * the agent's session off), a clean session (nothing left behind on the broker), every granted
 * subscription undone, a clean DISCONNECT, and never a publish.
 */

export interface ChannelProbe {
  channelId: string;
  name?: string;
  filter: string;
  granted: boolean;
  reasonCode?: number;
}

export type BrokerProbeResult =
  | { login: 'ok'; clientId: string; channels: ChannelProbe[]; subscribeError?: { code: string; message: string } }
  | { login: 'failed'; clientId: string; error: { code: string; message: string } };

export interface BrokerProbeOptions {
  device: DeviceConfig;
  config: AgentConfig;
  /** PEM of mqtt.caFile, used when the bootstrap config carries no ca_cert (as `run` does). */
  brokerCaFallback?: string;
  logger: Logger;
}

/** The probe's client ID: the agent's own plus a random suffix, so the two never collide. */
export function probeClientId(username: string): string {
  return `${username}-doctor-${randomBytes(3).toString('hex')}`;
}

export async function probeBroker(options: BrokerProbeOptions): Promise<BrokerProbeResult> {
  const { device, config } = options;
  const clientId = probeClientId(device.mqtt.username);
  const ca = device.certs.caCert ?? options.brokerCaFallback;
  const session = new MqttSession({
    url: device.mqtt.url,
    username: device.mqtt.username,
    password: device.mqtt.password,
    clientId,
    protocolVersion: config.mqtt.protocolVersion,
    keepaliveSeconds: 30,
    connectTimeoutMs: Math.min(config.mqtt.connectTimeoutMs, 10_000),
    clean: true,
    tls: {
      ...(ca ? { ca } : {}),
      ...(device.certs.clientCert ? { cert: device.certs.clientCert } : {}),
      ...(device.certs.clientKey ? { key: device.certs.clientKey } : {}),
      verify: config.mqtt.tlsVerify,
    },
    logger: options.logger,
  });
  try {
    try {
      await session.connect();
    } catch (err) {
      const error = toAgentError(err);
      return { login: 'failed', clientId, error: { code: error.code, message: error.message } };
    }
    const domainId = device.domainId ?? config.mqtt.domainId;
    const channels: ChannelProbe[] = [];
    try {
      for (const channel of device.channels) {
        const filter = channelFilter(config.mqtt.topicScheme, domainId, channel.id);
        // One SUBSCRIBE per channel: a broker that closes the connection on a refusal then costs one answer, not all.
        const [result] = await session.subscribe([filter], config.mqtt.qos);
        channels.push({
          channelId: channel.id,
          ...(channel.name ? { name: channel.name } : {}),
          filter,
          granted: result?.granted === true,
          ...(result?.reasonCode !== undefined ? { reasonCode: result.reasonCode } : {}),
        });
      }
      const granted = channels.filter((c) => c.granted).map((c) => c.filter);
      await session.unsubscribe(granted).catch(() => undefined);
    } catch (err) {
      const error = toAgentError(err);
      return { login: 'ok', clientId, channels, subscribeError: { code: error.code, message: error.message } };
    }
    return { login: 'ok', clientId, channels };
  } finally {
    await session.stop({ timeoutMs: 2_000 });
  }
}
