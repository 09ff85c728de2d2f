import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildAgent, type BuiltAgent } from '../../composition-root.js';
import { AgentConfigSchema, type AgentConfig } from '../../config/schema.js';
import { createLogger, type Logger } from '../../logging/logger.js';
import { faultAlways } from '../faults.js';
import { histogram, timeToFraction } from '../bench/stats.js';
import { BENCH_ENCRYPT_KEY, macExternalId, supportsBootJitter } from '../bench/world.js';
import { FleetServers } from './servers.js';

/**
 * Many virtual devices in one process, each with its own MAC-derived external ID, key file and
 * state directory, each built by the composition root exactly as `run` builds a device, against
 * one dev stack. The scenarios stress what a fleet does to the server: everyone booting at once,
 * a power outage, every credential rotated, Bootstrap down.
 */

export interface FleetOptions {
  devices: number;
  /** Secure (AES-CFB) bootstrap instead of plain. */
  secure: boolean;
  log: (line: string) => void;
}

interface Device {
  index: number;
  externalId: string;
  clientId: string;
  stateDir: string;
  keyFile: string;
  agent: BuiltAgent | undefined;
  onlineAt: number | undefined;
}

export interface ScenarioResult {
  scenario: string;
  label: string;
  devices: number;
  jitter: boolean;
  /** Requests per second seen by the servers from the scenario's start. */
  bootstrapPerSecond: number[];
  mqttPerSecond: number[];
  peakBootstrapPerSecond: number;
  peakMqttPerSecond: number;
  peakTotalPerSecond: number;
  totalBootstrap: number;
  totalMqtt: number;
  /** ms from the scenario's start until 50 %, 99 % and 100 % of devices were online (undefined: never). */
  connectedMs: { p50: number | undefined; p99: number | undefined; p100: number | undefined };
  allConnected: boolean;
  durationMs: number;
  memoryPerDeviceBytes?: number;
  heapPerDeviceBytes?: number;
  warnLines: number;
  notes: string[];
}

export class Fleet {
  readonly servers = new FleetServers(BENCH_ENCRYPT_KEY);
  private readonly devicesList: Device[] = [];
  // On tmpfs when there is one: each real device has its own SD card, while here one disk would
  // serialise every device's fsyncs and smear the fleet's timing with the simulator's I/O queue.
  private readonly work = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'mgda-fleet-'));
  private readonly logger: Logger;
  private warnLines = 0;
  /** Warn/error lines by error code, since the last result. */
  private readonly warnCodes = new Map<string, number>();
  private readonly options: FleetOptions;

  constructor(options: FleetOptions) {
    this.options = options;
    this.logger = createLogger({
      level: 'warn',
      destination: {
        write: (line: string) => {
          this.warnLines++;
          const code = /"code":"([A-Z_]+)"/.exec(line)?.[1] ?? 'no code';
          this.warnCodes.set(code, (this.warnCodes.get(code) ?? 0) + 1);
        },
      },
    });
  }

  get devices(): readonly Device[] {
    return this.devicesList;
  }

  /** Starts the servers and registers every device (config, channels, connections) and its files. */
  async setup(): Promise<void> {
    await this.servers.start();
    const { registry, domainId } = this.servers;
    const content = JSON.stringify({ agent: { mqtt: { url: this.servers.mqttUrl } }, domain_id: domainId });
    for (let index = 0; index < this.options.devices; index++) {
      const channels = ['commands', 'telemetry'].map((name) => {
        const added = registry.addChannel({ domainId, name: `${name}-${index}`, metadata: null });
        if (!added.ok) throw new Error(added.message);
        return added.value.id;
      });
      const externalId = macExternalId(index);
      const externalKey = randomBytes(16).toString('hex');
      const config = registry.addConfig({ externalId, externalKey, domainId, channels, content, state: 1, name: `fleet device ${index}` });
      if (!config.ok) throw new Error(config.message);
      const dir = join(this.work, `device-${index}`);
      mkdirSync(dir, { mode: 0o700 });
      const keyFile = join(dir, 'external_key');
      writeFileSync(keyFile, externalKey, { mode: 0o600 });
      this.devicesList.push({ index, externalId, clientId: config.value.clientId, stateDir: join(dir, 'state'), keyFile, agent: undefined, onlineAt: undefined });
    }
  }

  private config(device: Device, jitter: boolean): AgentConfig {
    return AgentConfigSchema.parse({
      bootstrap: { url: this.servers.bootstrapUrl, mode: this.options.secure ? 'secure' : 'plain' },
      identity: { externalId: device.externalId, externalKeyFile: device.keyFile },
      state: { dir: device.stateDir },
      // Everything else at its default, as a device ships; without jitter the start-up wait is gone too.
      ...(!jitter && supportsBootJitter() ? { retry: { bootJitterMs: 0 } } : {}),
      log: { level: 'warn' },
    });
  }

  /** Builds a fresh agent for every device (a reboot: nothing kept in memory), then starts them all at once. */
  async bootAll(jitter: boolean): Promise<number> {
    const encryptKeyEnv = this.options.secure ? { MG_AGENT_BOOTSTRAP_ENCRYPT_KEY: BENCH_ENCRYPT_KEY } : {};
    for (const device of this.devicesList) {
      device.agent = await buildAgent({
        config: this.config(device, jitter),
        logger: this.logger.child({ device: device.index }),
        // Nothing of this process's environment: no systemd socket, no credentials directory.
        env: { ...encryptKeyEnv },
        // Without jitter every random draw is the top of its window: all devices wait exactly alike.
        ...(jitter ? {} : { random: () => 1 }),
      });
    }
    const t0 = performance.now();
    for (const device of this.devicesList) device.agent?.start();
    return t0;
  }

  /**
   * Polls until every device is online with a broker session accepted after `since`; records when
   * each got there. (After a rotation the old sessions must not count.)
   */
  async waitAllOnline(timeoutMs: number, since: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    for (const device of this.devicesList) device.onlineAt = undefined;
    let nextReport = performance.now() + 15_000;
    for (;;) {
      const now = performance.now();
      let online = 0;
      for (const device of this.devicesList) {
        if (device.onlineAt === undefined && device.agent?.runtime.state === 'online' && (this.servers.lastConnectedAt.get(device.clientId) ?? -1) >= since) {
          device.onlineAt = now;
        }
        if (device.onlineAt !== undefined) online++;
      }
      if (online === this.devicesList.length) {
        const sessions = this.servers.connectedClients();
        if (this.devicesList.every((d) => sessions.has(d.clientId))) return true;
      }
      if (now > deadline) return false;
      if (now >= nextReport) {
        nextReport = now + 15_000;
        this.options.log(`  ... ${online}/${this.devicesList.length} online after ${Math.round((now - since) / 1000)} s`);
      }
      await sleep(50);
    }
  }

  /** A power cut: every agent dies without a goodbye (no offline status, no DISCONNECT). */
  async powerCut(): Promise<void> {
    await Promise.all(
      this.devicesList.map(async (device) => {
        await device.agent?.runtime.stop(0).catch(() => undefined);
        await device.agent?.stop();
        device.agent = undefined;
      }),
    );
  }

  /** Graceful stop of every agent. Never throws. */
  async stopAll(): Promise<void> {
    await Promise.all(this.devicesList.map((d) => d.agent?.stop().catch(() => undefined)));
    for (const d of this.devicesList) d.agent = undefined;
  }

  /** Forget every device's state (as if the devices were new). */
  wipeState(): void {
    for (const d of this.devicesList) rmSync(d.stateDir, { recursive: true, force: true });
  }

  rotateAll(): void {
    for (const d of this.devicesList) {
      this.servers.registry.rotateClientSecret(d.clientId);
      this.servers.kick(d.clientId);
    }
  }

  setBootstrapDown(down: boolean): void {
    this.servers.setBootstrapFault(down ? faultAlways({ kind: 'status', status: 503 }) : undefined);
  }

  resident(): { rss: number; heap: number } {
    const m = process.memoryUsage();
    return { rss: m.rss, heap: m.heapUsed };
  }

  /** Figures of the window that started at t0. */
  result(scenario: string, label: string, jitter: boolean, t0: number, allConnected: boolean, notes: string[], extra: Partial<ScenarioResult> = {}): ScenarioResult {
    const end = performance.now();
    const bootstrap = this.servers.times.bootstrap.filter((t) => t >= t0);
    const mqtt = this.servers.times.mqtt.filter((t) => t >= t0);
    const bootstrapPerSecond = histogram(bootstrap, t0, 1000, end);
    const mqttPerSecond = histogram(mqtt, t0, 1000, end);
    const total = bootstrapPerSecond.map((b, i) => b + (mqttPerSecond[i] ?? 0));
    const onlineTimes = this.devicesList.flatMap((d) => (d.onlineAt === undefined ? [] : [d.onlineAt]));
    const n = this.devicesList.length;
    const warnLines = this.warnLines;
    this.warnLines = 0;
    const codes = [...this.warnCodes.entries()].sort((a, b) => b[1] - a[1]).map(([code, count]) => `${code} ${count}`);
    this.warnCodes.clear();
    const allNotes = codes.length > 0 ? [...notes, `warn/error lines by code: ${codes.join(', ')}`] : notes;
    return {
      scenario,
      label,
      devices: n,
      jitter,
      bootstrapPerSecond,
      mqttPerSecond,
      peakBootstrapPerSecond: Math.max(0, ...bootstrapPerSecond),
      peakMqttPerSecond: Math.max(0, ...mqttPerSecond),
      peakTotalPerSecond: Math.max(0, ...total),
      totalBootstrap: bootstrap.length,
      totalMqtt: mqtt.length,
      connectedMs: {
        p50: timeToFraction(onlineTimes, n, 0.5, t0),
        p99: timeToFraction(onlineTimes, n, 0.99, t0),
        p100: timeToFraction(onlineTimes, n, 1, t0),
      },
      allConnected,
      durationMs: end - t0,
      warnLines,
      notes: allNotes,
      ...extra,
    };
  }

  async close(): Promise<void> {
    await this.stopAll();
    await this.servers.stop();
    rmSync(this.work, { recursive: true, force: true });
  }
}
