import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AgentConfig } from '../config/schema.js';
import type { DeviceConfig } from '../bootstrap/model.js';
import { toAgentError } from '../errors/agent-error.js';
import { readEncryptKey, readExternalKey, EXTERNAL_KEY_CREDENTIAL } from '../credentials/credentials.js';
import { formatMode, pathExists } from '../credentials/secret-file.js';
import { CONTROL_SECRET_CREDENTIAL, readControlSecret } from '../control/secret.js';
import { keyMatchesCertificate } from '../storage/pem.js';
import { sameConfig } from '../storage/config-diff.js';
import { buildBootstrapAccess } from '../composition-root.js';
import {
  checkCertificateValidity,
  checkClockPlausible,
  checkClockSync,
  checkDisk,
  checkDns,
  checkStateTree,
  checkTcp,
  failedWith,
  failure,
  pass,
  warning,
  type CheckResult,
} from './checks.js';
import { clockSync, diskSpace, endpointOf, resolveHost, tcpConnect, walkTree } from './probes.js';
import { readCurrentGeneration, collectingLogger } from './state-reader.js';
import { resolveDeviceIdentity } from './device-identity.js';
import { describeChanges } from './describe-changes.js';
import { safeUrl, summariseCertificate } from './redact.js';
import { probeBroker } from './broker-probe.js';
import { hintFor } from './hints.js';

/*
 * `mg-device-agent doctor`: runs the checks in the order a support engineer would, emitting each
 * verdict as soon as it is known. Writes nothing anywhere: the bootstrap check fetches but does not
 * store, the broker check uses its own client ID and a clean session, the state directory is read
 * through a store that refuses writes.
 */

export interface DoctorOptions {
  config: AgentConfig;
  env: NodeJS.ProcessEnv;
  emit: (result: CheckResult) => void;
  now?: () => Date;
  /** When this agent was built: a clock before it is certainly wrong. */
  buildDate?: Date;
}

/** The modification time of this compiled file: set when the release was built. */
export async function agentBuildDate(): Promise<Date> {
  return (await stat(fileURLToPath(import.meta.url))).mtime;
}

type Emit = (result: CheckResult) => void;

export async function runDoctor(options: DoctorOptions): Promise<CheckResult[]> {
  const { config } = options;
  const now = options.now ?? (() => new Date());
  const results: CheckResult[] = [];
  const emit: Emit = (result) => {
    results.push(result);
    options.emit(result);
  };
  // The checks read secrets like `run` does, but must not strip the caller's environment.
  const env = { ...options.env };

  await configurationChecks(config, env, emit);
  emit(checkClockSync(await clockSync()));
  emit(checkClockPlausible(now(), options.buildDate ?? (await agentBuildDate())));
  const fetched = await bootstrapChecks(config, env, emit);
  const stored = await storedConfigurationCheck(config, fetched, emit);
  // Certificates and the broker as the agent uses them: from the stored generation, else from the fetch.
  const device = stored ?? fetched;
  if (device) {
    certificateChecks(device, now(), emit);
    await brokerChecks(config, device, emit);
  } else {
    emit(warning('broker', 'skipped: no stored or fetched configuration names a broker', 'fix the bootstrap checks first'));
  }
  await stateDirectoryChecks(config, emit);
  return results;
}

async function secretFileCheck(name: string, read: () => Promise<unknown>, path: string | undefined): Promise<CheckResult> {
  try {
    await read();
  } catch (err) {
    return failedWith(name, toAgentError(err));
  }
  if (!path) return pass(name, 'present');
  const info = await stat(path).catch(() => undefined);
  return pass(name, `${path} (mode ${info ? formatMode(info.mode) : '?'})`);
}

/** Which file a secret is read from: the systemd credential when present, else the configured file (as the readers decide). */
async function secretPath(credentialsDirectory: string | undefined, credential: string, file: string | undefined): Promise<string | undefined> {
  const path = credentialsDirectory ? join(credentialsDirectory, credential) : undefined;
  return path && (await pathExists(path)) ? path : file;
}

/** The configuration and every secret file it names: present, owner-only, usable. */
async function configurationChecks(config: AgentConfig, env: NodeJS.ProcessEnv, emit: Emit): Promise<void> {
  if (!config.bootstrap.url) {
    emit(failure('configuration', 'bootstrap.url is not set', 'set bootstrap.url (or MG_AGENT_BOOTSTRAP_URL) to the Bootstrap service, e.g. http://bootstrap.example.com:9013'));
  } else {
    emit(pass('configuration', `valid; Bootstrap ${safeUrl(config.bootstrap.url)} (${config.bootstrap.mode}, ${config.bootstrap.family})`));
  }
  const credentialsDirectory = env['CREDENTIALS_DIRECTORY'];
  const externalKeyPath = await secretPath(credentialsDirectory, EXTERNAL_KEY_CREDENTIAL, config.identity.externalKeyFile);
  emit(await secretFileCheck('external key file', () => readExternalKey({ file: config.identity.externalKeyFile, credentialsDirectory }), externalKeyPath));
  if (config.bootstrap.mode === 'secure' || config.bootstrap.encryptKeyFile) {
    const file = config.bootstrap.encryptKeyFile ? { file: config.bootstrap.encryptKeyFile } : {};
    const key = await readEncryptKey({ ...file, env: { ...env }, credentialsDirectory }).then(
      (k) => ({ ok: true as const, bytes: k?.length }),
      (err: unknown) => ({ ok: false as const, error: toAgentError(err) }),
    );
    if (!key.ok) emit(failedWith('encryption key', key.error));
    else if (key.bytes === undefined) emit(failure('encryption key', 'secure mode, but no encryption key is configured', hintFor('ENCRYPT_KEY_INVALID')));
    else emit(pass('encryption key', `${key.bytes} bytes (AES-${key.bytes * 8})`));
  }
  const controlSecretPath = await secretPath(credentialsDirectory, CONTROL_SECRET_CREDENTIAL, config.control.secretFile);
  if (controlSecretPath) {
    emit(await secretFileCheck('control secret file', () => readControlSecret({ file: config.control.secretFile, credentialsDirectory }), controlSecretPath));
  }
}

/** Identity, reachability of Bootstrap, then a real fetch that is not saved. Returns what was fetched. */
async function bootstrapChecks(config: AgentConfig, env: NodeJS.ProcessEnv, emit: Emit): Promise<DeviceConfig | undefined> {
  let externalId: string | undefined;
  try {
    const identity = await resolveDeviceIdentity(config, collectingLogger([]));
    externalId = identity.externalId;
    emit(pass('identity', `external ID ${identity.externalId} (${identity.source}${identity.interfaceName ? `, ${identity.interfaceName}` : ''})`));
  } catch (err) {
    emit(failedWith('identity', toAgentError(err)));
  }
  const endpoint = config.bootstrap.url ? endpointOf(config.bootstrap.url) : undefined;
  if (!endpoint) return undefined;
  const dns = await resolveHost(endpoint.host);
  emit(checkDns('bootstrap DNS', endpoint.host, dns));
  if (dns.ok) emit(checkTcp('bootstrap TCP', endpoint.host, endpoint.port, await tcpConnect(endpoint.host, endpoint.port)));
  if (externalId === undefined) return undefined;
  try {
    const access = await buildBootstrapAccess(config, { ...env });
    let fetched: DeviceConfig;
    try {
      fetched = await access.fetchConfig(externalId, access.externalKey);
    } finally {
      await access.close();
    }
    emit(pass('bootstrap authentication', `accepted ${externalId}: ${fetched.family} configuration, ${fetched.channels.length} channel(s), client ${fetched.mqtt.username}`));
    return fetched;
  } catch (err) {
    emit(failedWith('bootstrap authentication', toAgentError(err)));
    return undefined;
  }
}

/** The current generation: intact, and the same as what the server just gave. Returns its configuration. */
async function storedConfigurationCheck(config: AgentConfig, fetched: DeviceConfig | undefined, emit: Emit): Promise<DeviceConfig | undefined> {
  const name = 'stored configuration';
  try {
    const { generation, warnings } = await readCurrentGeneration(config.state.dir, config.state.keepGenerations);
    if (warnings.length > 0) {
      emit(failure(name, warnings.join('; '), 'the agent sets damaged generations aside and falls back on its next start; if none is left it bootstraps again'));
    } else if (!generation) {
      emit(warning(name, `none in ${config.state.dir} yet`, 'the agent has not bootstrapped successfully yet; see the bootstrap checks above'));
    } else if (fetched && !sameConfig(generation.config, fetched)) {
      const changes = describeChanges(generation.config, fetched);
      emit(warning(name, `generation ${generation.id} differs from the server: ${changes.lines.join('; ')}`, 'the running agent picks this up on its next check (systemctl reload mg-device-agent checks now)'));
    } else {
      emit(pass(name, `generation ${generation.id}, fetched ${generation.fetchedAt.toISOString()}${fetched ? ', same as the server' : ''}`));
    }
    return generation?.config;
  } catch (err) {
    emit(failedWith(name, toAgentError(err)));
    return undefined;
  }
}

function certificateChecks(device: DeviceConfig, now: Date, emit: Emit): void {
  for (const [slot, label, field] of [
    ['clientCert', 'client certificate', 'client_cert'],
    ['caCert', 'CA certificate', 'ca_cert'],
  ] as const) {
    const summary = summariseCertificate(device.certs[slot], field);
    if (summary === undefined) continue;
    if ('invalid' in summary) emit(failure(label, 'does not parse', hintFor('CERT_INVALID')));
    else emit(checkCertificateValidity(label, summary, now));
  }
  if (device.certs.clientCert && device.certs.clientKey) {
    let matches = false;
    try {
      matches = keyMatchesCertificate(device.certs.clientCert, device.certs.clientKey);
    } catch {
      matches = false;
    }
    emit(matches ? pass('client key', 'belongs to the client certificate') : failure('client key', 'does not belong to the client certificate', hintFor('CERT_KEY_MISMATCH')));
  }
}

/** DNS and TCP to the broker, then a short session of our own: login and subscribe permission per channel. */
async function brokerChecks(config: AgentConfig, device: DeviceConfig, emit: Emit): Promise<void> {
  const endpoint = endpointOf(device.mqtt.url);
  if (!endpoint) {
    emit(failure('broker', 'the broker URL does not parse', hintFor('BOOTSTRAP_CONFIG_INCOMPLETE')));
    return;
  }
  const dns = await resolveHost(endpoint.host);
  emit(checkDns('broker DNS', endpoint.host, dns));
  if (!dns.ok) return;
  const tcp = await tcpConnect(endpoint.host, endpoint.port);
  emit(checkTcp('broker TCP', endpoint.host, endpoint.port, tcp));
  if (!tcp.ok) return;

  const brokerCaFallback = config.mqtt.caFile ? await readFile(config.mqtt.caFile, 'utf8').catch(() => undefined) : undefined;
  const probe = await probeBroker({ device, config, ...(brokerCaFallback ? { brokerCaFallback } : {}), logger: collectingLogger([]) });
  if (probe.login === 'failed') {
    emit(failedWith('broker login', probe.error));
    return;
  }
  emit(pass('broker login', `accepted client ${device.mqtt.username} (probe client ID ${probe.clientId})`));
  for (const channel of probe.channels) {
    const name = `channel ${channel.channelId}${channel.name ? ` (${channel.name})` : ''}`;
    if (channel.granted) emit(pass(name, `subscribe allowed on ${channel.filter}`));
    else {
      const code = channel.reasonCode !== undefined ? ` (SUBACK 0x${channel.reasonCode.toString(16)})` : '';
      emit(failure(name, `subscribe refused on ${channel.filter}${code}`, hintFor('MQTT_SUBSCRIBE_REFUSED')));
    }
  }
  if (probe.subscribeError) emit(failedWith('broker channels', probe.subscribeError));
  if (device.channels.length === 0) emit(warning('broker channels', 'the configuration has no channels', 'add channels to the bootstrap config'));
}

/** Owner and modes of everything in the state directory, and the space left where it lives. */
async function stateDirectoryChecks(config: AgentConfig, emit: Emit): Promise<void> {
  const dir = config.state.dir;
  try {
    emit(checkStateTree(dir, await walkTree(dir)));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') emit(warning('state directory', `${dir} does not exist yet`, 'the agent creates it on first start'));
    else emit(failure('state directory', `cannot read ${dir} (${code ?? 'error'})`, 'run doctor as root or as the agent user'));
  }
  // Before the first start the directory is not there yet: what counts is where it will be created.
  const measured = await diskSpace(dir).then(
    (space) => ({ path: dir, space }),
    () => diskSpace(dirname(dir)).then((space) => ({ path: dirname(dir), space }), () => undefined),
  );
  emit(measured ? checkDisk(measured.path, measured.space) : warning('free disk space', `cannot measure ${dir}`));
}
