import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentConfigSchema } from '../../config/schema.js';
import { AgentProcess, agentEntryPoint } from '../agent-process.js';
import { makeTestCerts, type TestCerts } from '../dev-pki.js';
import { cleanAgentEnv, registerDevice, writeDeviceFiles, type DeviceFiles, type RegisteredDevice } from '../scenario.js';
import { startDevStack, type DevStack, type DevStackOptions } from '../stack.js';

/**
 * The world the benchmark and the torture harness run devices in: the dev stack on loopback
 * (Bootstrap + broker, mutual TLS when openssl can make certificates), a scratch directory, and
 * helpers that register a device and lay out its files exactly as an installed device has them.
 */

export const BENCH_ENCRYPT_KEY = 'v7aT0HGxJxt2gULzr3RHwf4WIf6DusPp'; // 32 bytes: AES-256

export function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A MAC-looking external ID (Raspberry Pi OUI dc:a6:32), unique per call. */
export function macExternalId(index?: number): string {
  const tail = index === undefined ? randomBytes(3) : Buffer.from([(index >> 16) & 0xff, (index >> 8) & 0xff, index & 0xff]);
  return ['dc', 'a6', '32', ...Array.from(tail, (b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** True when the built agent knows retry.bootJitterMs (the start-up jitter), so tools can switch it off. */
export function supportsBootJitter(): boolean {
  return AgentConfigSchema.safeParse({ retry: { bootJitterMs: 0 } }).success;
}

export interface World {
  stack: DevStack;
  /** Certificates for mutual TLS; undefined when openssl is missing (plain TCP then). */
  pki: TestCerts | undefined;
  encryptKey: string;
  /** Scratch directory removed by close(). */
  work: string;
  close(): Promise<void>;
}

export interface WorldOptions {
  /** Mutual TLS on the broker with certificates in every bootstrap response (needs openssl). */
  tls: boolean;
  stack?: Partial<DevStackOptions>;
  prefix?: string;
}

export async function startWorld(options: WorldOptions): Promise<World> {
  const work = mkdtempSync(join(tmpdir(), options.prefix ?? 'mgda-bench-'));
  try {
    const pki = options.tls && hasOpenssl() ? makeTestCerts(mkdtempSync(join(work, 'pki-'))) : undefined;
    const stack = await startDevStack({
      encryptKey: BENCH_ENCRYPT_KEY,
      ...(pki ? { tls: { key: pki.serverKey, cert: pki.serverCert, ca: pki.caCert, requestCert: true } } : {}),
      ...options.stack,
    });
    return {
      stack,
      pki,
      encryptKey: BENCH_ENCRYPT_KEY,
      work,
      async close() {
        await stack.close().catch(() => undefined);
        rmSync(work, { recursive: true, force: true });
      },
    };
  } catch (error) {
    rmSync(work, { recursive: true, force: true });
    throw error;
  }
}

export interface WorldDevice {
  device: RegisteredDevice;
  files: DeviceFiles;
  dir: string;
}

export interface DeviceOptions {
  channels?: number;
  /** Channel names (their number wins over `channels`); default ch<n>-0, ch<n>-1, ... */
  channelNames?: string[];
  /** Connect the client to its channels at once (default true). */
  enable?: boolean;
  /** Secure (AES-CFB) bootstrap (default true). */
  secure?: boolean;
  content?: string;
  /** Extra agent.json sections, merged over the defaults. */
  config?: Record<string, Record<string, unknown>>;
  externalId?: string;
}

let deviceCounter = 0;

/** Registers a device through the management API and writes its key files and agent.json. */
export async function addDevice(world: World, options: DeviceOptions = {}): Promise<WorldDevice> {
  const index = ++deviceCounter;
  const device = await registerDevice(world.stack, {
    externalId: options.externalId ?? macExternalId(),
    channelNames: options.channelNames ?? Array.from({ length: options.channels ?? 3 }, (_, i) => `ch${index}-${i}`),
    enable: options.enable ?? true,
    ...(options.content === undefined ? {} : { content: options.content }),
    ...(world.pki ? { certs: { clientCert: world.pki.clientCert, clientKey: world.pki.clientKey, caCert: world.pki.caCert } } : {}),
  });
  const dir = join(world.work, `device-${index}`);
  mkdirSync(dir, { mode: 0o700 });
  const extra = options.config ?? {};
  const files = writeDeviceFiles(dir, {
    bootstrapUrl: world.stack.bootstrapUrl,
    externalKey: device.externalKey,
    externalId: device.externalId,
    ...((options.secure ?? true) ? { encryptKey: world.encryptKey } : {}),
    config: {
      ...extra,
      // The start-up jitter is a deliberate wait, not a cost: measurements switch it off.
      retry: { ...(supportsBootJitter() ? { bootJitterMs: 0 } : {}), ...extra['retry'] },
      log: { level: 'info', ...extra['log'] },
    },
  });
  return { device, files, dir };
}

/**
 * Which build of the agent runs: the checkout's tsc output (dist/, loading its packages from
 * node_modules/) or the esbuild bundle of an unpacked release tarball, which is what a device runs.
 * Every figure names the one it measured, since the two load very differently.
 */
export type AgentBuildName = 'dist' | 'release bundle';

export interface AgentBuild {
  name: AgentBuildName;
  /** The program node runs. */
  entry: string;
}

export function distAgent(): AgentBuild {
  return { name: 'dist', entry: agentEntryPoint() };
}

export interface RunAgentOptions {
  /** Default: the checkout's dist/. */
  agent?: AgentBuild;
  nodeOptions?: string;
}

/** Starts the real built agent on a device's files. */
export function runAgent(files: DeviceFiles, options: RunAgentOptions = {}): AgentProcess {
  return new AgentProcess({
    args: ['run', '--config', files.configFile],
    entry: (options.agent ?? distAgent()).entry,
    env: cleanAgentEnv(options.nodeOptions === undefined ? {} : { NODE_OPTIONS: options.nodeOptions }),
  });
}
