import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DevStack } from './stack.js';
import { ManagementClient } from '../operator/management-client.js';

/**
 * The operator's and the device's halves of a test scenario on the dev stack: register a device
 * (channels, content, certificates) through the real management API, and lay out the device's files
 * (key files 0600, agent.json). Shared by the demo and the integration tests.
 */

export interface RegisteredDevice {
  externalId: string;
  externalKey: string;
  clientId: string;
  channelIds: string[];
  operator: ManagementClient;
}

export interface RegisterOptions {
  externalId: string;
  externalKey?: string;
  channelNames?: string[];
  /** Content string; default points the agent at the stack's broker and domain (upstream agent format). */
  content?: string;
  certs?: { clientCert: string; clientKey: string; caCert: string };
  /** Connect the client to its channels right away (PUT state 1). */
  enable?: boolean;
}

export function defaultContent(stack: DevStack): string {
  return JSON.stringify({ agent: { mqtt: { url: stack.mqttUrl } }, domain_id: stack.domainId });
}

export async function registerDevice(stack: DevStack, options: RegisterOptions): Promise<RegisteredDevice> {
  const channelIds: string[] = [];
  for (const name of options.channelNames ?? ['commands', 'telemetry']) {
    const res = await fetch(`${stack.bootstrapUrl}/dev/channels`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.userToken}` },
      body: JSON.stringify({ domain_id: stack.domainId, name }),
    });
    if (res.status !== 201) throw new Error(`dev stack refused channel ${name}: ${res.status}`);
    channelIds.push(((await res.json()) as { id: string }).id);
  }
  const externalKey = options.externalKey ?? randomBytes(32).toString('hex');
  const operator = new ManagementClient({ baseUrl: stack.bootstrapUrl, userToken: stack.userToken, domainId: stack.domainId });
  const { clientId } = await operator.createConfig({
    externalId: options.externalId,
    externalKey,
    name: `device ${options.externalId}`,
    channels: channelIds,
    content: options.content ?? defaultContent(stack),
    ...(options.certs ?? {}),
  });
  if (options.enable) await operator.setState(clientId, 1);
  return { externalId: options.externalId, externalKey, clientId, channelIds, operator };
}

export interface DeviceFiles {
  configFile: string;
  stateDir: string;
  keyFile: string;
  encryptKeyFile?: string;
}

/** Writes the device side: external key (0600), optional encryption key (0600), agent.json. */
export function writeDeviceFiles(
  dir: string,
  options: {
    bootstrapUrl: string;
    externalKey: string;
    encryptKey?: string;
    /** Fixed external ID; without it the agent derives one from this machine's MAC. */
    externalId?: string;
    config?: Record<string, Record<string, unknown>>;
  },
): DeviceFiles {
  const stateDir = join(dir, 'state');
  const keyFile = join(dir, 'external_key');
  writeFileSync(keyFile, options.externalKey + '\n', { mode: 0o600 });
  let encryptKeyFile: string | undefined;
  if (options.encryptKey !== undefined) {
    encryptKeyFile = join(dir, 'encrypt_key');
    writeFileSync(encryptKeyFile, options.encryptKey, { mode: 0o600 });
  }
  const extra = options.config ?? {};
  const config = {
    ...extra,
    bootstrap: { url: options.bootstrapUrl, mode: encryptKeyFile ? 'secure' : 'plain', ...(encryptKeyFile ? { encryptKeyFile } : {}), ...extra['bootstrap'] },
    identity: { externalKeyFile: keyFile, ...(options.externalId ? { externalId: options.externalId } : {}), ...extra['identity'] },
    state: { dir: stateDir, ...extra['state'] },
    // No boot jitter in tests and demos: the first attempt goes out at once.
    retry: { initialDelayMs: 200, bootJitterMs: 0, ...extra['retry'] },
  };
  const configFile = join(dir, 'agent.json');
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  return { configFile, stateDir, keyFile, ...(encryptKeyFile ? { encryptKeyFile } : {}) };
}

/** An environment for the agent child process without anything of ours that would change its behaviour. */
export function cleanAgentEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith('MG_AGENT_') || k === 'NOTIFY_SOCKET' || k === 'CREDENTIALS_DIRECTORY' || k === 'WATCHDOG_USEC') delete env[k];
  }
  return { ...env, ...extra };
}
