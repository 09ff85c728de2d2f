import { readFile } from 'node:fs/promises';
import { rootCertificates } from 'node:tls';
import type { Logger } from 'pino';
import { Agent as UndiciAgent } from 'undici';
import type { AgentConfig } from './config/schema.js';
import { ConfigError, type ConfigProblem } from './config/load.js';
import type { DeviceConfig } from './bootstrap/model.js';
import { BootstrapClient } from './bootstrap/client.js';
import { readEncryptKey, readExternalKey } from './credentials/credentials.js';
import { resolveIdentity } from './identity/resolve-identity.js';
import { listInterfaces } from './identity/list-interfaces.js';
import { GenerationStore, type Generation } from './storage/generation-store.js';
import { sameConfig } from './storage/config-diff.js';
import { MqttSession } from './mqtt/session.js';
import { channelFilter, channelTopic, parseChannelTopic, pickStatusChannel } from './mqtt/topics.js';
import { AgentRuntime, STATUS_OFFLINE, type SessionPlan, type SessionPort } from './lifecycle/agent-runtime.js';
import { LoggingMessageHandler } from './lifecycle/message-handler.js';
import { createSystemdNotifier } from './systemd/notify.js';
import { AgentError, toAgentError } from './errors/agent-error.js';

/**
 * The one place that builds the agent: reads secrets, creates every part and passes each its
 * dependencies. Nothing else in the agent constructs collaborators or reads the environment.
 */
export interface BuiltAgent {
  runtime: AgentRuntime<Generation>;
  /** Starts the main loop and the systemd watchdog. */
  start(): void;
  /** Stops everything in reverse order of start. Never throws. */
  stop(): Promise<void>;
}

export interface BuildOptions {
  config: AgentConfig;
  logger: Logger;
  env?: NodeJS.ProcessEnv;
}

/** Checks that go beyond the schema because they only matter for `run`. */
function requireForRun(config: AgentConfig, encryptKey: Buffer | undefined): void {
  const problems: ConfigProblem[] = [];
  if (!config.bootstrap.url) {
    problems.push({ path: 'bootstrap.url', message: 'required: the Bootstrap service URL (MG_AGENT_BOOTSTRAP_URL), e.g. http://bootstrap.example.com:9013' });
  }
  if (config.bootstrap.mode === 'secure' && !encryptKey) {
    problems.push({
      path: 'bootstrap.encryptKeyFile',
      message:
        'secure mode needs the encryption key: set bootstrap.encryptKeyFile, pass the systemd credential encrypt_key, or MG_AGENT_BOOTSTRAP_ENCRYPT_KEY',
    });
  }
  if (problems.length > 0) throw new ConfigError(problems, 'run');
}

export async function buildAgent(options: BuildOptions): Promise<BuiltAgent> {
  const { config, logger } = options;
  const env = options.env ?? process.env;
  const credentialsDirectory = env['CREDENTIALS_DIRECTORY'];

  // Secrets are read once at start-up, so a bad key file stops the agent with exit 78 right away.
  const encryptKey = await readEncryptKey({
    ...(config.bootstrap.encryptKeyFile ? { file: config.bootstrap.encryptKeyFile } : {}),
    env,
    credentialsDirectory,
  });
  requireForRun(config, encryptKey);
  const externalKey = await readExternalKey({ file: config.identity.externalKeyFile, credentialsDirectory });

  const bootstrapDispatcher = config.bootstrap.caFile
    ? // In addition to the system store, as documented: Node's `ca` alone would replace it.
      new UndiciAgent({ connect: { ca: [...rootCertificates, await readFile(config.bootstrap.caFile, 'utf8')] } })
    : undefined;
  const bootstrapClient = new BootstrapClient({
    baseUrl: config.bootstrap.url as string,
    mode: config.bootstrap.mode,
    family: config.bootstrap.family,
    ...(config.bootstrap.mode === 'secure' && encryptKey ? { encryptKey } : {}),
    timeoutMs: config.bootstrap.timeoutMs,
    maxResponseBytes: config.bootstrap.maxResponseBytes,
    ...(bootstrapDispatcher ? { dispatcher: bootstrapDispatcher } : {}),
  });
  const fallbacks = {
    ...(config.mqtt.url ? { mqttUrl: config.mqtt.url } : {}),
    ...(config.mqtt.domainId ? { domainId: config.mqtt.domainId } : {}),
    requireDomain: config.mqtt.topicScheme === 'domain',
  };

  const store = new GenerationStore({ dir: config.state.dir, keepGenerations: config.state.keepGenerations, logger });
  const brokerCaFallback = config.mqtt.caFile ? await readFile(config.mqtt.caFile, 'utf8') : undefined;
  const scheme = config.mqtt.topicScheme;

  const planSession = (device: DeviceConfig): SessionPlan => {
    const domainId = device.domainId ?? config.mqtt.domainId;
    const subscriptions = device.channels.map((channel) => ({
      channelId: channel.id,
      filter: channelFilter(scheme, domainId, channel.id),
    }));
    const statusChannel = pickStatusChannel(device.channels, config.mqtt.statusChannel);
    if (!statusChannel && config.mqtt.statusChannel) {
      logger.warn({ statusChannel: config.mqtt.statusChannel }, 'mqtt.statusChannel names no channel of this device; no online/offline status is published');
    }
    return {
      subscriptions,
      ...(statusChannel ? { statusTopic: channelTopic(scheme, domainId, statusChannel.id, config.mqtt.statusSubtopic) } : {}),
    };
  };

  const createSession = (gen: Generation, plan: SessionPlan): SessionPort => {
    const device = gen.config;
    const ca = device.certs.caCert ?? brokerCaFallback;
    const session = new MqttSession({
      url: device.mqtt.url,
      username: device.mqtt.username,
      password: device.mqtt.password,
      clientId: device.mqtt.username,
      protocolVersion: config.mqtt.protocolVersion,
      keepaliveSeconds: config.mqtt.keepaliveSeconds,
      connectTimeoutMs: config.mqtt.connectTimeoutMs,
      clean: false,
      sessionExpirySeconds: 7 * 24 * 3600,
      tls: {
        ...(ca ? { ca } : {}),
        ...(device.certs.clientCert ? { cert: device.certs.clientCert } : {}),
        ...(device.certs.clientKey ? { key: device.certs.clientKey } : {}),
        verify: config.mqtt.tlsVerify,
      },
      ...(plan.statusTopic ? { will: { topic: plan.statusTopic, payload: STATUS_OFFLINE, qos: 1 as const, retain: true } } : {}),
      logger,
    });
    return {
      connect: () => session.connect(),
      subscribe: (filters, qos) => session.subscribe(filters, qos),
      publish: (topic, payload, opts) => session.publish(topic, payload, opts),
      onMessage: (listener) => session.on('message', listener),
      onLost: (listener) => session.on('lost', listener),
      stop: (opts) => session.stop(opts),
    };
  };

  const notifier = createSystemdNotifier({ env, logger });
  const runtime = new AgentRuntime<Generation>({
    config,
    logger,
    store,
    resolveIdentity: () =>
      resolveIdentity({
        config: config.identity,
        listInterfaces: () => listInterfaces(),
        persisted: { load: () => store.loadIdentity() },
        logger,
      }),
    readExternalKey: async () => externalKey,
    fetchConfig: (externalId, key, signal) => bootstrapClient.fetchConfig(externalId, key, fallbacks, { signal }),
    planSession,
    sameConfig,
    createSession,
    parseTopic: (topic) => parseChannelTopic(scheme, topic),
    notifier,
    messageHandler: new LoggingMessageHandler(logger),
  });

  return {
    runtime,
    start() {
      runtime.start();
      // The watchdog timer fires from the event loop, so a wedged loop stops the pings by itself.
      notifier.startWatchdog(() => runtime.state !== 'stopped');
    },
    async stop() {
      // Reverse order of construction: the runtime (session, loop), then the notifier, then HTTP.
      await runtime.stop().catch((err: unknown) => { const e = toAgentError(err); logger.warn(e.toLog(), `error while stopping the runtime: ${e.message}`); });
      try {
        notifier.stop();
      } catch {
        /* never throw halfway through a stop */
      }
      await bootstrapDispatcher?.close().catch(() => undefined);
    },
  };
}

export { AgentError };
