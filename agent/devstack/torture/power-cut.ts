import { mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentProcess } from '../agent-process.js';
import { isFullyOnline, waitForCount } from '../bench/agent-signals.js';
import { supportsPeriodicCheck } from '../bench/measure-update.js';
import { addDevice, hasOpenssl, runAgent, startWorld, type World, type WorldDevice } from '../bench/world.js';
import { makeTestCerts, type TestCerts } from '../dev-pki.js';
import { checkStateDir, type KnownConfig } from './disk-check.js';
import { Violations, type SuiteOptions, type SuiteReport } from './report.js';
import { createRng, type Rng } from './rng.js';

/**
 * Power cuts: the real agent process is killed with SIGKILL at a random moment while it boots,
 * while it applies a new configuration (fetch, write, switch), while it reconnects, and while it
 * re-bootstraps after its credentials were rotated. After every kill the state directory must hold
 * only whole generations, each exactly one configuration the server handed out, with `current` on
 * the old or the new one; then the agent is started again and must reach "subscribed" and converge
 * on the server's configuration.
 */

type Phase = 'boot' | 'update' | 'reconnect' | 'rotate';
const PHASES: readonly Phase[] = ['boot', 'update', 'reconnect', 'rotate'];
const CHANNELS = 2;
const RECOVERY_TIMEOUT_MS = 30_000;

interface Variant extends KnownConfig {
  index: number;
}

export async function runPowerCuts(options: SuiteOptions): Promise<SuiteReport> {
  const started = performance.now();
  const rng = createRng(options.seed);
  const iterations = options.mode === 'long' ? 200 : 8;
  const violations = new Violations();
  const notes: string[] = [];
  const world = await startWorld({ tls: false, prefix: 'mgda-torture-power-' });
  let agent: AgentProcess | undefined;
  const byPhase: Record<Phase, number> = { boot: 0, update: 0, reconnect: 0, rotate: 0 };
  let restarts = 0;
  try {
    const certSets = hasOpenssl() ? [makeTestCerts(mkdtempSync(join(world.work, 'pki-a-'))), makeTestCerts(mkdtempSync(join(world.work, 'pki-b-')))] : [];
    if (certSets.length === 0) notes.push('openssl missing: generations carry no certificates');
    const wd = await addDevice(world, {
      channels: CHANNELS,
      config: { retry: { initialDelayMs: 100, maxDelayMs: 1_000 }, ...noPeriodicCheck() },
    });
    const known: Variant[] = [];
    const serve = (v: Variant) => {
      const { registry, domainId } = world.stack;
      registry.updateConfig(domainId, wd.device.clientId, { name: 'power-cut device', content: v.content ?? '' });
      registry.updateConfigCerts(domainId, wd.device.clientId, { clientCert: v.clientCert ?? '', clientKey: v.clientKey ?? '', caCert: v.caCert ?? '' });
    };
    const newVariant = (): Variant => {
      const v = makeVariant(world, known.length, rng, certSets);
      known.push(v);
      serve(v);
      return v;
    };
    let serverVariant = newVariant();

    // Calibration: how long each phase takes here, so kills land inside it.
    const t0 = performance.now();
    agent = runAgent(wd.files);
    await recover(agent, wd, serverVariant, 1);
    const windows: Record<Phase, number> = { boot: Math.max(300, (performance.now() - t0) * 1.3), update: 0, reconnect: 0, rotate: 0 };
    for (const phase of ['update', 'reconnect', 'rotate'] as const) {
      const before = onlineCount(agent);
      const t = performance.now();
      if (phase === 'update') serverVariant = newVariant();
      await trigger(phase, world, wd, agent);
      await recover(agent, wd, serverVariant, before + 1);
      windows[phase] = Math.max(50, (performance.now() - t) * 1.5);
    }
    notes.push(`kill windows (ms): ${PHASES.map((p) => `${p} ${Math.round(windows[p])}`).join(', ')}`);

    for (let i = 1; i <= iterations; i++) {
      const phase = rng.pick(PHASES);
      byPhase[phase]++;
      const previous = serverVariant;
      let delay = 0;
      if (phase === 'boot') {
        await kill(agent);
        serverVariant = newVariant(); // the restart then also fetches, writes and switches
        agent = runAgent(wd.files);
        restarts++;
      } else {
        if (phase === 'update') serverVariant = newVariant();
        await trigger(phase, world, wd, agent);
      }
      delay = rng.next() * windows[phase];
      await sleep(delay);
      await kill(agent);

      const where = `iteration ${i} (${phase}, kill after ${Math.round(delay)} ms, seed ${options.seed})`;
      const afterKill = checkStateDir(wd.files.stateDir, known);
      for (const problem of afterKill.problems) violations.add(`${where}: ${problem}`);
      const allowed = new Set([previous.label, serverVariant.label]);
      if (afterKill.current?.matches && !allowed.has(afterKill.current.matches)) {
        violations.add(`${where}: current is ${afterKill.current.matches}, neither the old (${previous.label}) nor the new (${serverVariant.label}) configuration`);
      }
      if (!afterKill.current) violations.add(`${where}: no current generation after the kill`);

      agent = runAgent(wd.files);
      restarts++;
      try {
        await recover(agent, wd, serverVariant, 1);
      } catch (error) {
        violations.add(`${where}: did not recover after the restart: ${(error as Error).message.split('\n')[0]}`);
        await kill(agent);
        agent = runAgent(wd.files);
        await recover(agent, wd, serverVariant, 1).catch(() => undefined);
      }
      const afterRecovery = checkStateDir(wd.files.stateDir, known);
      for (const problem of afterRecovery.problems) violations.add(`${where}, after recovery: ${problem}`);
      if (i % 25 === 0) options.log(`  power cuts: ${i}/${iterations}, ${violations.count} violations`);
    }
    notes.push(`kills by phase: ${PHASES.map((p) => `${p} ${byPhase[p]}`).join(', ')}; ${known.length} configurations served`);
  } finally {
    if (agent) await kill(agent);
    await world.close();
  }
  return {
    suite: 'power-cut',
    seed: options.seed,
    cases: iterations,
    violations: violations.final(),
    notes,
    durationMs: performance.now() - started,
    stats: { kills: iterations, restarts, ...byPhase },
  };
}

function noPeriodicCheck(): Record<string, Record<string, unknown>> {
  // Only the harness decides when the agent looks for a new configuration.
  return supportsPeriodicCheck() ? { updates: { checkIntervalMs: 0 } } : {};
}

function makeVariant(world: World, index: number, rng: Rng, certSets: TestCerts[]): Variant {
  // Content sizes up to 256 KB widen the window in which a write is under way.
  const pad = 'x'.repeat(rng.chance(0.5) ? rng.int(262_144) : rng.int(64));
  const content = JSON.stringify({ agent: { mqtt: { url: world.stack.mqttUrl } }, domain_id: world.stack.domainId, variant: index, pad });
  const certs = certSets.length > 0 ? (certSets[index % certSets.length] as TestCerts) : undefined;
  return {
    index,
    label: `v${index}`,
    content,
    ...(certs ? { clientCert: certs.clientCert, clientKey: certs.clientKey, caCert: certs.caCert } : {}),
  };
}

function onlineCount(agent: AgentProcess): number {
  return agent.lines.filter((l) => isFullyOnline(l, CHANNELS)).length;
}

async function trigger(phase: Exclude<Phase, 'boot'>, world: World, wd: WorldDevice, agent: AgentProcess): Promise<void> {
  if (phase === 'update') agent.child.kill('SIGHUP');
  if (phase === 'reconnect') world.stack.broker.kick(wd.device.clientId);
  if (phase === 'rotate') {
    world.stack.registry.rotateClientSecret(wd.device.clientId);
    world.stack.broker.kick(wd.device.clientId);
  }
}

/** Waits for the n-th "subscribed to all" line and for `current/content` to equal the server's. */
async function recover(agent: AgentProcess, wd: WorldDevice, serving: Variant, onlineLines: number): Promise<void> {
  const deadline = performance.now() + RECOVERY_TIMEOUT_MS;
  await waitForCount(agent, (l) => isFullyOnline(l, CHANNELS), onlineLines, RECOVERY_TIMEOUT_MS, 'subscribed to all channels');
  const file = join(wd.files.stateDir, 'current', 'content');
  for (;;) {
    try {
      if (readFileSync(file, 'utf8') === serving.content) return;
    } catch {
      // mid-swap
    }
    if (performance.now() > deadline) throw new Error(`subscribed, but did not converge on ${serving.label} within ${RECOVERY_TIMEOUT_MS} ms`);
    await sleep(10);
  }
}

async function kill(agent: AgentProcess): Promise<void> {
  if (agent.child.exitCode === null && agent.child.signalCode === null) agent.child.kill('SIGKILL');
  await agent.exited;
}
