import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelay, policyFor } from '../../lifecycle/backoff.js';
import type { AgentProcess } from '../agent-process.js';
import { isFullyOnline, waitForCount, countLines } from '../bench/agent-signals.js';
import { supportsPeriodicCheck } from '../bench/measure-update.js';
import { BENCH_ENCRYPT_KEY, macExternalId, runAgent, supportsBootJitter } from '../bench/world.js';
import { startBootstrapServer, type BootstrapServer } from '../bootstrap-server.js';
import { startBroker, type DevBroker } from '../broker.js';
import type { Fault } from '../faults.js';
import { createRegistry } from '../registry.js';
import { onSamePort } from '../fleet/servers.js';
import { writeDeviceFiles } from '../scenario.js';
import { Violations, type SuiteOptions, type SuiteReport } from './report.js';
import { createRng, type Rng } from './rng.js';

/**
 * Flapping: the broker is stopped and started again every few seconds, and Bootstrap answers 200,
 * 5xx, hangs past the agent's deadline or drops the connection, in turn, for a while (seconds in
 * the short run, minutes in the long one), with the real agent process booting into it. Then
 * everything settles, and the agent must end connected and subscribed, having sent a number of
 * requests that its own backoff policy explains (a Monte Carlo bound from the same backoff code,
 * at the 99.9th percentile, so a retry loop without backoff would exceed it many times over).
 */

const CHANNELS = 2;
const RETRY = { initialDelayMs: 200, maxDelayMs: 2_000, permanentMaxDelayMs: 10_000 };
const CHECK_INTERVAL_MS = 2_000;
const BOOTSTRAP_TIMEOUT_MS = 1_000;
const CONNECT_TIMEOUT_MS = 1_000;

/** Attempts the agent makes to span an outage of `outageMs` (first one at 0), 99.9th percentile over many draws. */
export function attemptsBound(outageMs: number, draws = 2_000): number {
  const policy = policyFor('transient', { ...RETRY });
  const counts: number[] = [];
  for (let d = 0; d < draws; d++) {
    let t = 0;
    let attempts = 1;
    // Each failed attempt costs at most the connect deadline, then the backoff wait.
    for (let k = 0; t < outageMs; k++) {
      t += backoffDelay(policy, k) + 1;
      attempts++;
    }
    counts.push(attempts);
  }
  counts.sort((a, b) => a - b);
  return counts[Math.floor(counts.length * 0.999)] ?? counts[counts.length - 1] ?? 1;
}

interface Stack {
  registry: ReturnType<typeof createRegistry>;
  bootstrap: BootstrapServer;
  broker: DevBroker | undefined;
  brokerPort: number;
  domainId: string;
  mqttConnects: number;
  restarts: number;
  downtimesMs: number[];
}

async function startBrokerOn(stack: Stack): Promise<void> {
  const broker = await onSamePort(() => startBroker({ host: '127.0.0.1', port: stack.brokerPort, registry: stack.registry }));
  broker.events.on('clientConnected', () => stack.mqttConnects++);
  broker.events.on('connectRefused', () => stack.mqttConnects++);
  stack.broker = broker;
  stack.brokerPort = broker.port;
}

function bootstrapFault(rng: Rng): Fault | undefined {
  return rng.pick<Fault | undefined>([undefined, { kind: 'status', status: 503 }, { kind: 'status', status: 500, body: '{"message":"db down"}' }, { kind: 'hang' }, { kind: 'close' }]);
}

export async function runFlapping(options: SuiteOptions): Promise<SuiteReport> {
  const started = performance.now();
  const rng = createRng(options.seed);
  const long = options.mode === 'long';
  const flapMs = long ? 180_000 : 10_000;
  const violations = new Violations();
  const notes: string[] = [];
  const work = mkdtempSync(join(tmpdir(), 'mgda-torture-flap-'));
  const registry = createRegistry();
  const domainId = randomUUID();
  const stack: Stack = {
    registry,
    bootstrap: undefined as unknown as BootstrapServer,
    broker: undefined,
    brokerPort: 0,
    domainId,
    mqttConnects: 0,
    restarts: 0,
    downtimesMs: [],
  };
  let agent: AgentProcess | undefined;
  try {
    await startBrokerOn(stack);
    stack.bootstrap = await startBootstrapServer({
      host: '127.0.0.1',
      port: 0,
      registry,
      encryptKey: BENCH_ENCRYPT_KEY,
      responseFamily: 'v0.20',
      userToken: randomUUID(),
      brokerUrl: `mqtt://127.0.0.1:${stack.brokerPort}`,
      kick: (clientId) => stack.broker?.kick(clientId) ?? 0,
    });
    const channels = Array.from({ length: CHANNELS }, (_, i) => {
      const result = registry.addChannel({ domainId, name: `flap-${i}`, metadata: null });
      if (!result.ok) throw new Error(result.message);
      return result.value.id;
    });
    const externalId = macExternalId();
    const externalKey = randomBytes(16).toString('hex');
    const added = registry.addConfig({
      externalId,
      externalKey,
      domainId,
      channels,
      state: 1,
      content: JSON.stringify({ agent: { mqtt: { url: `mqtt://127.0.0.1:${stack.brokerPort}` } }, domain_id: domainId }),
    });
    if (!added.ok) throw new Error(added.message);
    const dir = join(work, 'device');
    mkdirSync(dir, { mode: 0o700 });
    const files = writeDeviceFiles(dir, {
      bootstrapUrl: stack.bootstrap.url,
      externalKey,
      externalId,
      encryptKey: BENCH_ENCRYPT_KEY,
      config: {
        bootstrap: { timeoutMs: BOOTSTRAP_TIMEOUT_MS },
        mqtt: { connectTimeoutMs: CONNECT_TIMEOUT_MS, keepaliveSeconds: 5 },
        retry: { ...RETRY, ...(supportsBootJitter() ? { bootJitterMs: 0 } : {}) },
        ...(supportsPeriodicCheck() ? { updates: { checkIntervalMs: CHECK_INTERVAL_MS } } : {}),
      },
    });

    // Flapping: Bootstrap's answer changes with every request; the broker goes away and comes back.
    const faultRng = rng.fork();
    stack.bootstrap.setFault(() => bootstrapFault(faultRng));
    agent = runAgent(files);
    const flapEnd = performance.now() + flapMs;
    while (performance.now() < flapEnd) {
      await sleep(rng.between(long ? 2_000 : 1_000, long ? 6_000 : 2_500));
      const down = rng.between(300, long ? 3_000 : 1_200);
      await stack.broker?.close();
      stack.broker = undefined;
      await sleep(down);
      await startBrokerOn(stack);
      stack.restarts++;
      stack.downtimesMs.push(down);
    }

    // Settle: everything answers again. The agent must end connected, on its own.
    stack.bootstrap.setFault(undefined);
    const settleStart = performance.now();
    const onlineBefore = countLines(agent, (l) => isFullyOnline(l, CHANNELS));
    const settleTimeout = RETRY.maxDelayMs + CONNECT_TIMEOUT_MS + BOOTSTRAP_TIMEOUT_MS + 10_000;
    const connected = () => stack.broker?.sessions().some((s) => s.username === String(added.value.clientId)) ?? false;
    if (!connected()) {
      try {
        await waitForCount(agent, (l) => isFullyOnline(l, CHANNELS), onlineBefore + 1, settleTimeout, 'subscribed to all channels after the flapping');
      } catch (error) {
        violations.add(`did not end connected (seed ${options.seed}): ${(error as Error).message.split('\n')[0]}`);
      }
    }
    await sleep(500);
    if (!connected()) violations.add(`the broker has no session of the device after settling (seed ${options.seed})`);
    if (agent.child.exitCode !== null) violations.add(`the agent exited (code ${agent.child.exitCode}) (seed ${options.seed})`);
    notes.push(`settled in ${Math.round(performance.now() - settleStart)} ms after ${stack.restarts} broker restarts over ${Math.round(flapMs / 1000)} s`);

    // Request counts against what the backoff policy allows.
    const bootstrapRequests = stack.bootstrap.requests.filter((r) => r.endpoint === 'plain' || r.endpoint === 'secure').length;
    const mqttBound = stack.downtimesMs.reduce((sum, d) => sum + attemptsBound(d + CONNECT_TIMEOUT_MS), 0) + 2 * (stack.restarts + 1) + 5;
    const checks = Math.ceil(flapMs / (CHECK_INTERVAL_MS * 0.85)) + 1;
    const bootstrapBound = supportsPeriodicCheck() ? checks + attemptsBound(flapMs) + 5 : attemptsBound(flapMs) + 5;
    notes.push(`requests: Bootstrap ${bootstrapRequests} (bound ${bootstrapBound}), MQTT CONNECTs ${stack.mqttConnects} (bound ${mqttBound})`);
    if (bootstrapRequests > bootstrapBound) violations.add(`Bootstrap saw ${bootstrapRequests} requests, more than the backoff explains (${bootstrapBound}) (seed ${options.seed})`);
    if (stack.mqttConnects > mqttBound) violations.add(`the broker saw ${stack.mqttConnects} CONNECTs, more than the backoff explains (${mqttBound}) (seed ${options.seed})`);
    return {
      suite: 'flapping',
      seed: options.seed,
      cases: stack.restarts,
      violations: violations.final(),
      notes,
      durationMs: performance.now() - started,
      stats: { brokerRestarts: stack.restarts, bootstrapRequests, bootstrapBound, mqttConnects: stack.mqttConnects, mqttBound },
    };
  } finally {
    await agent?.stop(3_000);
    await stack.bootstrap?.close();
    await stack.broker?.close();
    rmSync(work, { recursive: true, force: true });
  }
}
