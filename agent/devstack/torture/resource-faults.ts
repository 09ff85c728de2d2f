import { existsSync, rmSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildAgent, type BuiltAgent } from '../../composition-root.js';
import { AgentConfigSchema, type AgentConfig } from '../../config/schema.js';
import { createLogger } from '../../logging/logger.js';
import { supportsPeriodicCheck } from '../bench/measure-update.js';
import { addDevice, startWorld, supportsBootJitter, type World, type WorldDevice } from '../bench/world.js';
import { checkStateDir, type KnownConfig } from './disk-check.js';
import { Violations, type SuiteOptions, type SuiteReport } from './report.js';
import { switchableFs, type DiskFault, type SwitchableFs } from './switchable-fs.js';

/**
 * Resource faults, in process: the agent is built by the composition root exactly as `run` builds
 * it, except that the state store's file-system calls go through a switch that makes the disk full
 * (ENOSPC) or read-only (EROFS) on demand; and the state directory is deleted under the running
 * agent. Each time: one clear log line naming the fault, the previous configuration whole on disk
 * and still in use, and recovery on its own once the fault clears (the periodic check retries).
 */

const CHANNELS = 2;
const STEP_TIMEOUT_MS = 20_000;

interface Harness {
  world: World;
  wd: WorldDevice;
  switch: SwitchableFs;
  lines: { raw: string; json: Record<string, unknown> }[];
  known: KnownConfig[];
  agent?: BuiltAgent;
  config: AgentConfig;
}

function agentConfig(world: World, wd: WorldDevice): AgentConfig {
  return AgentConfigSchema.parse({
    bootstrap: { url: world.stack.bootstrapUrl, mode: 'plain' },
    identity: { externalId: wd.device.externalId, externalKeyFile: wd.files.keyFile },
    state: { dir: wd.files.stateDir },
    retry: { initialDelayMs: 100, maxDelayMs: 1_000, ...(supportsBootJitter() ? { bootJitterMs: 0 } : {}) },
    // The periodic check is what brings a device back after a fault without anyone poking it.
    ...(supportsPeriodicCheck() ? { updates: { checkIntervalMs: 1_000 } } : {}),
    log: { level: 'debug' },
  });
}

async function start(h: Harness): Promise<BuiltAgent> {
  const logger = createLogger({
    level: 'debug',
    destination: {
      write: (raw: string) => {
        try {
          h.lines.push({ raw, json: JSON.parse(raw) as Record<string, unknown> });
        } catch {
          h.lines.push({ raw, json: {} });
        }
      },
    },
  });
  const agent = await buildAgent({ config: h.config, logger, env: {}, stateFs: h.switch.fs });
  agent.start();
  h.agent = agent;
  return agent;
}

async function until(what: string, predicate: () => boolean, timeoutMs = STEP_TIMEOUT_MS): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

function serve(h: Harness, label: string): KnownConfig {
  const { stack } = h.world;
  const content = JSON.stringify({ agent: { mqtt: { url: stack.mqttUrl } }, domain_id: stack.domainId, label });
  stack.registry.updateConfig(stack.domainId, h.wd.device.clientId, { name: 'resource faults', content });
  const known = { label, content };
  h.known.push(known);
  return known;
}

function currentLabel(h: Harness): string | undefined {
  return checkStateDir(h.wd.files.stateDir, h.known).current?.matches;
}

function linesWith(h: Harness, fault: string, from: number): { raw: string; json: Record<string, unknown> }[] {
  return h.lines.slice(from).filter((l) => l.json['osCode'] === fault || (typeof l.json['msg'] === 'string' && (l.json['msg'] as string).includes(fault)));
}

/** Fault while running: the change is refused with one clear line, the old generation stays whole and in use, and recovery follows. */
async function faultWhileRunning(h: Harness, fault: DiskFault, label: string, violations: Violations, notes: string[]): Promise<void> {
  const agent = h.agent as BuiltAgent;
  const before = currentLabel(h);
  const mark = h.lines.length;
  h.switch.set(fault);
  serve(h, label);
  agent.runtime.requestUpdate(`torture ${fault}`);
  try {
    await until(`a log line naming ${fault}`, () => linesWith(h, fault, mark).some((l) => l.json['level'] === 'warn' || l.json['level'] === 'error'));
  } catch (error) {
    violations.add(`${fault}: ${(error as Error).message}`);
  }
  await sleep(1_500); // a periodic check or two under the fault
  const named = linesWith(h, fault, mark).filter((l) => l.json['level'] === 'warn' || l.json['level'] === 'error');
  const first = named[0];
  if (first && typeof first.json['code'] !== 'string') violations.add(`${fault}: the line naming it has no error code: ${first.raw.slice(0, 160)}`);
  if (!notes.some((n) => n.startsWith(`${fault}:`))) notes.push(`${fault}: "${String(first?.json['msg'] ?? '(no line)')}" (${named.length} warn line(s) over ~1.5 s)`);
  if (agent.runtime.state !== 'online') violations.add(`${fault}: the agent left the broker (state ${agent.runtime.state}) although its configuration is unchanged in memory`);
  const disk = checkStateDir(h.wd.files.stateDir, h.known);
  for (const p of disk.problems) violations.add(`${fault}: ${p}`);
  if (disk.current?.matches !== before) violations.add(`${fault}: current is ${disk.current?.matches ?? 'missing'}, expected the previous ${before}`);

  h.switch.set(undefined);
  try {
    await until(`recovery to ${label} after ${fault} cleared`, () => currentLabel(h) === label && agent.runtime.state === 'online');
  } catch (error) {
    violations.add(`${fault}: ${(error as Error).message}`);
  }
}

export async function runResourceFaults(options: SuiteOptions): Promise<SuiteReport> {
  const started = performance.now();
  const violations = new Violations();
  const notes: string[] = [];
  const rounds = options.mode === 'long' ? 5 : 1;
  const world = await startWorld({ tls: false, prefix: 'mgda-torture-disk-' });
  let cases = 0;
  const h: Harness = { world, wd: undefined as unknown as WorldDevice, switch: switchableFs(), lines: [], known: [], config: undefined as unknown as AgentConfig };
  try {
    h.wd = await addDevice(world, { channels: CHANNELS, secure: false });
    h.config = agentConfig(world, h.wd);
    const secrets = [h.wd.device.externalKey, world.stack.registry.getClient(h.wd.device.clientId)?.secret ?? 'none'];

    // 1. First boot on a full disk: a clear fatal line; once the disk has room, a restart (systemd's job) comes up.
    cases++;
    h.switch.set('ENOSPC');
    serve(h, 'boot');
    const first = await start(h);
    const ended = await Promise.race([first.runtime.done().then(() => 'ended', () => 'ended'), sleep(3_000).then(() => 'running')]);
    const bootLine = linesWith(h, 'ENOSPC', 0)[0];
    if (!bootLine) violations.add('first boot on a full disk: no log line names ENOSPC');
    else notes.push(`first boot on a full disk (${ended === 'ended' ? 'agent stops, systemd restarts it' : 'agent keeps retrying'}): "${String(bootLine.json['msg']).slice(0, 140)}"`);
    await first.stop();
    h.switch.set(undefined);
    await start(h);
    try {
      await until('online after the disk has room again', () => h.agent?.runtime.state === 'online' && currentLabel(h) === 'boot');
    } catch (error) {
      violations.add(`first boot on a full disk: ${(error as Error).message}`);
    }

    for (let round = 1; round <= rounds; round++) {
      for (const fault of ['ENOSPC', 'EROFS'] as const) {
        cases++;
        await faultWhileRunning(h, fault, `${fault}-${round}`, violations, notes);
      }
      // The state directory deleted under the running agent.
      cases++;
      const agent = h.agent as BuiltAgent;
      rmSync(h.wd.files.stateDir, { recursive: true, force: true });
      const label = `deleted-${round}`;
      serve(h, label);
      agent.runtime.requestUpdate('torture: state directory deleted');
      try {
        await until(`the configuration written again after the state directory was deleted`, () => currentLabel(h) === label && agent.runtime.state === 'online');
        const mode = statSync(h.wd.files.stateDir).mode & 0o777;
        if (mode !== 0o700) violations.add(`state directory recreated with mode ${mode.toString(8)}, not 0700`);
      } catch (error) {
        violations.add(`state directory deleted: ${(error as Error).message} (exists: ${existsSync(h.wd.files.stateDir)})`);
      }
      if (agent.runtime.state !== 'online') violations.add(`state directory deleted: agent state ${agent.runtime.state}`);
    }
    for (const line of h.lines) for (const secret of secrets) if (line.raw.includes(secret)) violations.add(`a log line contains a secret: ${line.raw.slice(0, 100)}`);
    const disk = checkStateDir(h.wd.files.stateDir, h.known);
    for (const p of disk.problems) violations.add(`at the end: ${p}`);
  } finally {
    await h.agent?.stop();
    await world.close();
  }
  return {
    suite: 'resource-faults',
    seed: options.seed,
    cases,
    violations: violations.final(),
    notes,
    durationMs: performance.now() - started,
    stats: { faults: cases, refusedCalls: h.switch.injected, logLines: h.lines.length },
  };
}

