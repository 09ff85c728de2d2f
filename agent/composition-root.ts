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
import type { Fs } from './storage/atomic-write.js';
import { MqttSession, isTlsBrokerUrl } from './mqtt/session.js';
import { channelFilter, channelTopic, parseChannelTopic, pickStatusChannel } from './mqtt/topics.js';
import { AgentRuntime, STATUS_OFFLINE, type SessionPlan, type SessionPort } from './lifecycle/agent-runtime.js';
import { LoggingMessageHandler } from './lifecycle/message-handler.js';
import { RemoteControl } from './control/remote-control.js';
import { readControlSecret } from './control/secret.js';
import { BackoffStateFile } from './lifecycle/backoff-state.js';
import { StatusFileWriter } from './lifecycle/status-writer.js';
import { OnApplyRunner } from './updates/on-apply.js';
import { PeriodicSchedule } from './updates/periodic-schedule.js';
import { WallClockSchedule } from './updates/wall-clock-schedule.js';
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
  /** Randomness of backoff and boot jitter; the fleet simulator passes () => 1 to compare against no jitter. */
  random?: () => number;
  /** File-system calls of the state store; the torture harness injects ENOSPC/EROFS here. */
  stateFs?: Fs;
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

/** How the agent reaches Bootstrap: secrets read once, the client built. Shared by `run` and the CLI's bootstrap and doctor commands. */
export interface BootstrapAccess {
  /** The external key (a secret: never logged). */
  externalKey: string;
  fetchConfig(externalId: string, externalKey: string, signal?: AbortSignal): Promise<DeviceConfig>;
  /** Closes the connection pool of bootstrap.caFile, if any. Never throws. */
  close(): Promise<void>;
}

export async function buildBootstrapAccess(config: AgentConfig, env: NodeJS.ProcessEnv): Promise<BootstrapAccess> {
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
  return {
    externalKey,
    fetchConfig: (externalId, key, signal) => bootstrapClient.fetchConfig(externalId, key, fallbacks, signal ? { signal } : {}),
    close: async () => {
      await bootstrapDispatcher?.close().catch(() => undefined);
    },
  };
}

export async function buildAgent(options: BuildOptions): Promise<BuiltAgent> {
  const { config, logger } = options;
  const env = options.env ?? process.env;
  const bootstrap = await buildBootstrapAccess(config, env);
  const externalKey = bootstrap.externalKey;

  const store = new GenerationStore({ dir: config.state.dir, keepGenerations: config.state.keepGenerations, logger, ...(options.stateFs ? { fs: options.stateFs } : {}) });
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

  const plainUrlWarned = new Set<number>();
  const createSession = (gen: Generation, plan: SessionPlan): SessionPort => {
    remoteControl.useGeneration(gen);
    const device = gen.config;
    const ca = device.certs.caCert ?? brokerCaFallback;
    const hasCerts = ca !== undefined || device.certs.clientCert !== undefined;
    const useTls = isTlsBrokerUrl(device.mqtt.url);
    if (hasCerts && !useTls && !plainUrlWarned.has(gen.id)) {
      // Once per generation, not on every reconnect.
      plainUrlWarned.add(gen.id);
      logger.warn({ generation: gen.id }, 'certificates are not used: the broker URL is not a TLS one (use mqtts:// to use them)');
    }
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
      ...(useTls
        ? {
            tls: {
              ...(ca ? { ca } : {}),
              ...(device.certs.clientCert ? { cert: device.certs.clientCert } : {}),
              ...(device.certs.clientKey ? { key: device.certs.clientKey } : {}),
              verify: config.mqtt.tlsVerify,
            },
          }
        : {}),
      ...(plan.statusTopic ? { will: { topic: plan.statusTopic, payload: STATUS_OFFLINE, qos: 1 as const, retain: true } } : {}),
      logger,
    });
    return {
      connect: () => session.connect(),
      subscribe: (filters, qos) => session.subscribe(filters, qos),
      unsubscribe: (filters) => session.unsubscribe(filters),
      publish: (topic, payload, opts) => session.publish(topic, payload, opts),
      onMessage: (listener) => session.on('message', listener),
      onLost: (listener) => session.on('lost', listener),
      stop: (opts) => session.stop(opts),
    };
  };

  const notifier = createSystemdNotifier({ env, logger });
  const stateFs = options.stateFs ? { fs: options.stateFs } : {};
  const statusFile = new StatusFileWriter({ stateDir: config.state.dir, logger, ...stateFs });
  const onApply = config.updates.onApply
    ? new OnApplyRunner({ command: config.updates.onApply, timeoutMs: config.updates.onApplyTimeoutMs, logger, baseEnv: env })
    : undefined;
  // Control-channel requests (req subtopic) go to remote control; every other message is logged as before.
  const controlSecret = await readControlSecret({ file: config.control.secretFile, credentialsDirectory: env['CREDENTIALS_DIRECTORY'] });
  const remoteControl: RemoteControl = new RemoteControl({
    config,
    ...(controlSecret ? { secret: controlSecret } : {}),
    fallback: new LoggingMessageHandler(logger),
    logger,
    target: {
      publish: (topic, payload, opts): Promise<void> => runtime.publish(topic, payload, opts),
      requestUpdate: (reason) => void runtime.requestUpdate(reason),
      status: () => runtime.status(),
      generation: () => runtime.generation,
    },
  });
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
    fetchConfig: (externalId, key, signal) => bootstrap.fetchConfig(externalId, key, signal),
    planSession,
    createSession,
    parseTopic: (topic) => parseChannelTopic(scheme, topic),
    notifier,
    messageHandler: remoteControl,
    attempts: new BackoffStateFile({ stateDir: config.state.dir, logger, ...stateFs }),
    onStatus: (status) => statusFile.update(status),
    ...(onApply ? { onApplied: (change) => onApply.run(change) } : {}),
    ...(options.random ? { random: options.random } : {}),
  });
  // Configuration checks on a schedule; SIGHUP and the control channel call runtime.requestUpdate themselves.
  const schedules = [
    new PeriodicSchedule({
      intervalMs: config.updates.checkIntervalMs,
      onDue: () => void runtime.requestUpdate('periodic', { scheduled: true }),
      ...(options.random ? { random: options.random } : {}),
    }),
    ...(config.updates.cron
      ? [new WallClockSchedule({ expression: config.updates.cron, logger, onDue: ({ catchUp }) => void runtime.requestUpdate(catchUp ? 'cron (catch-up)' : 'cron', { scheduled: true }) })]
      : []),
  ];

  return {
    runtime,
    start() {
      runtime.start();
      for (const schedule of schedules) schedule.start();
      // The watchdog timer fires from the event loop, so a wedged event loop stops the pings by
      // itself; runtime.isHealthy() also withholds them while a step of the main loop is stuck.
      notifier.startWatchdog(() => runtime.isHealthy());
    },
    async stop() {
      // Reverse order of construction: schedules, the runtime (session, loop), the onApply command,
      // the status file (its final snapshot says "stopped"), the notifier, then HTTP.
      for (const schedule of schedules) schedule.stop();
      await runtime.stop().catch((err: unknown) => { const e = toAgentError(err); logger.warn(e.toLog(), `error while stopping the runtime: ${e.message}`); });
      await onApply?.stop().catch(() => undefined);
      await statusFile.stop().catch(() => undefined);
      try {
        notifier.stop();
      } catch {
        /* never throw halfway through a stop */
      }
      await bootstrap.close();
    },
  };
}

export { AgentError };
