import { readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import type { AgentProcess, LogLine } from '../../agent/devstack/agent-process.js';
import { faultAlways, type Fault } from '../../agent/devstack/faults.js';
import { registerDevice, writeDeviceFiles, type RegisteredDevice } from '../../agent/devstack/scenario.js';
import type { DevStack } from '../../agent/devstack/stack.js';
import { backoffCeiling, policyFor } from '../../agent/lifecycle/backoff.js';
import type { FailureClass } from '../../agent/lifecycle/failure-policy.js';
import { createTeardown, onlineWith, randomExternalId, runAgentProcess, startStack, tempWorkDir, waitForLineFrom } from '../helpers/agent-harness.js';
import { FaultProxy } from '../helpers/fault-proxy.js';

/*
 * The fault matrix: the real built agent against the dev stack, with TCP proxies in front of the
 * Bootstrap service and the broker for the faults a network makes. For every fault: how many
 * requests reached Bootstrap (server log) and how many attempts the agent made (its log) while the
 * fault lasted, and how long after the fault cleared the agent was online again. Recovery must come
 * within one backoff step: the window the agent was in when the fault cleared (its own policy, from
 * its own log line), plus one attempt's deadline and some slack for a loaded machine.
 */

const RETRY = { initialDelayMs: 100, maxDelayMs: 2_000, permanentMaxDelayMs: 10_000, bootJitterMs: 0 };
/** bootstrap.timeoutMs and mqtt.connectTimeoutMs: the longest a single attempt can take. */
const ATTEMPT_DEADLINE_MS = 1_000;
const SLACK_MS = 2_000;

interface Row {
  fault: string;
  faultMs: number;
  bootstrapRequests: number;
  agentAttempts: number;
  recoveredMs: number;
  boundMs: number;
}
const rows: Row[] = [];

afterAll(() => {
  const order = new Map(SCENARIO_ORDER.map((name, i) => [name, i]));
  rows.sort((a, b) => (order.get(a.fault) ?? 99) - (order.get(b.fault) ?? 99));
  const header = ['fault', 'fault lasted', 'Bootstrap requests', 'agent attempts', 'recovered after', 'bound (one step)'];
  const body = rows.map((r) => [r.fault, `${r.faultMs} ms`, String(r.bootstrapRequests), String(r.agentAttempts), `${r.recoveredMs} ms`, `${r.boundMs} ms`]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((line) => (line[i] as string).length)));
  const format = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] as number)).join(' | ');
  console.log(['', 'fault matrix (retry: initial 100 ms, cap 2 s, operator cap 10 s)', format(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...body.map(format), ''].join('\n'));
});

const SCENARIO_ORDER = [
  'Bootstrap down (refused)',
  'Bootstrap 503',
  'Bootstrap 429, Retry-After: 1',
  'Bootstrap 403',
  'Bootstrap 404',
  'Bootstrap garbage',
  'Bootstrap slow (no answer)',
  'broker down (refused)',
  'broker refusing (CONNACK 3)',
  'broker silent (dead link)',
  'broker flapping',
  'credentials rotated on the server',
];

interface World {
  stack: DevStack;
  device: RegisteredDevice;
  bootstrapProxy: FaultProxy;
  brokerProxy: FaultProxy;
  agent: AgentProcess;
  stateDir: string;
  cleanup(): Promise<void>;
}

/** A dev stack, proxies in front of both servers, a registered and connected device, and the agent (not yet started). */
async function world(): Promise<Omit<World, 'agent'> & { start(): AgentProcess }> {
  // One teardown per world: the tests run concurrently, so each scenario cleans up after itself.
  const t = createTeardown();
  const stack = await startStack(t);
  const bootstrapProxy = await FaultProxy.start({ host: '127.0.0.1', port: stack.bootstrap.port });
  const brokerProxy = await FaultProxy.start({ host: '127.0.0.1', port: stack.broker.port });
  t.add(() => bootstrapProxy.close(), () => brokerProxy.close());
  const externalId = randomExternalId();
  const device = await registerDevice(stack, {
    externalId,
    enable: true,
    content: JSON.stringify({ agent: { mqtt: { url: `mqtt://127.0.0.1:${brokerProxy.port}` } }, domain_id: stack.domainId }),
  });
  const files = writeDeviceFiles(tempWorkDir(t, 'mgda-faults-'), {
    externalId,
    bootstrapUrl: `http://127.0.0.1:${bootstrapProxy.port}`,
    externalKey: device.externalKey,
    config: {
      retry: RETRY,
      bootstrap: { timeoutMs: ATTEMPT_DEADLINE_MS },
      mqtt: { keepaliveSeconds: 5, connectTimeoutMs: ATTEMPT_DEADLINE_MS },
      updates: { checkIntervalMs: 0 },
    },
  });
  return {
    stack,
    device,
    bootstrapProxy,
    brokerProxy,
    stateDir: files.stateDir,
    start: () => runAgentProcess(t, ['run', '--config', files.configFile]),
    cleanup: () => t.run(),
  };
}

const isOnline = onlineWith(2);
const isFailure = (l: LogLine) => l.level === 'warn' && typeof l['retryInMs'] === 'number' && typeof l['failureClass'] === 'string';
const isLost = (l: LogLine) => String(l.msg).startsWith('connection to the broker lost');

function linesFrom(agent: AgentProcess, from: number): LogLine[] {
  return agent.lines.slice(from);
}

function deviceRequests(stack: DevStack): number {
  return stack.bootstrap.requests.filter((r) => r.endpoint === 'plain').length;
}

/** A row of the matrix printed at the end: what the fault cost, and the bound its recovery is held to. */
function record(r: { fault: string; faultMs: number; bootstrapRequests: number; failures: LogLine[]; recoveringSince: number; extraBoundMs?: number }): Row {
  const row: Row = {
    fault: r.fault,
    faultMs: r.faultMs,
    bootstrapRequests: r.bootstrapRequests,
    agentAttempts: r.failures.length,
    recoveredMs: Date.now() - r.recoveringSince,
    boundMs: oneStepBound(r.failures) + (r.extraBoundMs ?? 0),
  };
  rows.push(row);
  return row;
}

/** One backoff step from where the agent was when the fault cleared: its next window, an attempt, slack. */
function oneStepBound(failures: LogLine[]): number {
  const last = failures.at(-1);
  if (!last) return ATTEMPT_DEADLINE_MS + SLACK_MS;
  const policy = policyFor(last['failureClass'] as FailureClass, RETRY);
  const window = Math.max(backoffCeiling(policy, Number(last['attempt'])), Number(last['retryInMs']));
  return window + ATTEMPT_DEADLINE_MS + SLACK_MS;
}

/** A fault present from the agent's first boot (no stored configuration): it must come online once the fault clears. */
async function firstBootFault(
  name: string,
  faultMs: number,
  apply: (w: Awaited<ReturnType<typeof world>>) => Promise<void> | void,
  clear: (w: Awaited<ReturnType<typeof world>>) => Promise<void> | void,
  maxAttempts: number,
): Promise<{ row: Row; failures: LogLine[]; w: Awaited<ReturnType<typeof world>> }> {
  const w = await world();
  try {
    await apply(w);
    const agent = w.start();
    await sleep(faultMs);
    const failures = agent.lines.filter(isFailure);
    const bootstrapRequests = deviceRequests(w.stack);
    await clear(w);
    const cleared = Date.now();
    await agent.waitFor(isOnline, 20_000, `online after "${name}" cleared`);
    const row = record({ fault: name, faultMs, bootstrapRequests, failures, recoveringSince: cleared });
    expect(failures.length, 'the agent kept trying').toBeGreaterThanOrEqual(1);
    expect(failures.length, 'attempts bounded by the backoff').toBeLessThanOrEqual(maxAttempts);
    expect(row.recoveredMs, 'online within one backoff step after the fault cleared').toBeLessThanOrEqual(row.boundMs);
    expect(agent.child.exitCode, 'never exits').toBeNull();
    expect(readlinkSync(join(w.stateDir, 'current')), 'nothing was written while the fault lasted').toBe('generations/000001');
    return { row, failures, w };
  } catch (error) {
    await w.cleanup();
    throw error;
  }
}

/** A fault that hits a device already online: it must be online again once the fault clears, without asking Bootstrap. */
async function runningFault(
  name: string,
  faultMs: number,
  apply: (w: Awaited<ReturnType<typeof world>>, agent: AgentProcess) => Promise<void> | void,
  clear: (w: Awaited<ReturnType<typeof world>>) => Promise<void> | void,
  maxAttempts: number,
): Promise<{ row: Row; failures: LogLine[] }> {
  const w = await world();
  try {
    const agent = w.start();
    await agent.waitFor(isOnline, 20_000, 'online before the fault');
    const from = agent.lines.length;
    const requestsBefore = deviceRequests(w.stack);
    await apply(w, agent);
    await sleep(faultMs);
    const during = linesFrom(agent, from);
    const failures = during.filter(isFailure);
    const bootstrapRequests = deviceRequests(w.stack) - requestsBefore;
    const clearIndex = agent.lines.length;
    await clear(w);
    const cleared = Date.now();
    // Online already if the last thing that happened was a successful connection.
    const events = linesFrom(agent, from).filter((l) => isOnline(l) || isFailure(l) || isLost(l));
    if (events.length === 0 || !isOnline(events.at(-1) as LogLine)) {
      await waitForLineFrom(agent, clearIndex, isOnline, `online after "${name}" cleared`, 30_000);
    }
    const row = record({ fault: name, faultMs, bootstrapRequests, failures, recoveringSince: cleared });
    expect(bootstrapRequests, 'a network or broker fault never makes the agent re-bootstrap').toBe(0);
    expect(failures.length, 'attempts bounded by the backoff').toBeLessThanOrEqual(maxAttempts);
    expect(row.recoveredMs, 'online within one backoff step after the fault cleared').toBeLessThanOrEqual(row.boundMs);
    expect(readlinkSync(join(w.stateDir, 'current')), 'the generation was kept').toBe('generations/000001');
    await w.cleanup();
    return { row, failures };
  } catch (error) {
    await w.cleanup();
    throw error;
  }
}

function statusFault(fault: Fault) {
  return {
    apply: (w: Awaited<ReturnType<typeof world>>) => w.stack.bootstrap.setFault(faultAlways(fault)),
    clear: (w: Awaited<ReturnType<typeof world>>) => w.stack.bootstrap.setFault(undefined),
  };
}

describe.concurrent('fault matrix: the real agent recovers within one backoff step, with bounded requests', () => {
  it('Bootstrap down (connection refused): retried with backoff', { timeout: 60_000 }, async () => {
    const { failures, w } = await firstBootFault(
      'Bootstrap down (refused)',
      3_000,
      (w) => w.bootstrapProxy.setMode('down'),
      (w) => w.bootstrapProxy.setMode('pass'),
      14,
    );
    expect(failures.every((l) => l['code'] === 'BOOTSTRAP_NETWORK' && l['failureClass'] === 'transient')).toBe(true);
    await w.cleanup();
  });

  it('Bootstrap 5xx: transient, retried with backoff', { timeout: 60_000 }, async () => {
    const f = statusFault({ kind: 'status', status: 503, body: '{"message":"unavailable"}' });
    const { failures, w } = await firstBootFault('Bootstrap 503', 3_000, f.apply, f.clear, 14);
    expect(new Set(failures.map((l) => l['code']))).toEqual(new Set(['BOOTSTRAP_SERVER_ERROR']));
    await w.cleanup();
  });

  it('Bootstrap 429 with Retry-After: never asks again sooner than the server said', { timeout: 60_000 }, async () => {
    const f = statusFault({ kind: 'status', status: 429, headers: { 'Retry-After': '1' } });
    const { row, w } = await firstBootFault('Bootstrap 429, Retry-After: 1', 3_500, f.apply, f.clear, 5);
    const times = w.stack.bootstrap.requests.filter((r) => r.endpoint === 'plain').map((r) => Date.parse(r.time));
    const gaps = times.slice(1).map((t, i) => t - (times[i] as number));
    expect(gaps.slice(0, row.bootstrapRequests - 1).every((gap) => gap >= 950)).toBe(true);
    await w.cleanup();
  });

  it('Bootstrap 403: an operator problem, retried slowly, never exits', { timeout: 60_000 }, async () => {
    const f = statusFault({ kind: 'status', status: 403, body: '{"message":"failed to perform authentication over the entity"}' });
    const { failures, w } = await firstBootFault('Bootstrap 403', 3_000, f.apply, f.clear, 5);
    expect(failures.every((l) => l['code'] === 'BOOTSTRAP_FORBIDDEN' && l['failureClass'] === 'operator')).toBe(true);
    await w.cleanup();
  });

  it('Bootstrap 404: an operator problem, retried slowly, never exits', { timeout: 60_000 }, async () => {
    const f = statusFault({ kind: 'status', status: 404, body: '{"message":"entity not found"}' });
    const { failures, w } = await firstBootFault('Bootstrap 404', 3_000, f.apply, f.clear, 5);
    expect(failures.every((l) => l['code'] === 'BOOTSTRAP_NOT_FOUND')).toBe(true);
    await w.cleanup();
  });

  it('Bootstrap garbage: an unusable answer, nothing written, retried', { timeout: 60_000 }, async () => {
    const f = statusFault({ kind: 'garbage', body: '{"client_id": 42, "channels": "x"' });
    const { failures, w } = await firstBootFault('Bootstrap garbage', 3_000, f.apply, f.clear, 9);
    expect(failures.every((l) => l['failureClass'] === 'invalid')).toBe(true);
    await w.cleanup();
  });

  it('Bootstrap slow (never answers): each attempt ends at its deadline', { timeout: 60_000 }, async () => {
    const f = statusFault({ kind: 'hang' });
    const { failures, w } = await firstBootFault('Bootstrap slow (no answer)', 3_000, f.apply, f.clear, 4);
    expect(failures.every((l) => l['code'] === 'BOOTSTRAP_TIMEOUT')).toBe(true);
    await w.cleanup();
  });

  it('broker down (connection refused): reconnects with backoff on the stored generation', { timeout: 60_000 }, async () => {
    const { failures } = await runningFault('broker down (refused)', 3_000, (w) => w.brokerProxy.setMode('down'), (w) => w.brokerProxy.setMode('pass'), 14);
    expect(failures.filter((l) => l['stage'] === 'connect').every((l) => l['code'] === 'MQTT_NETWORK')).toBe(true);
  });

  it('broker refusing (CONNACK 3, server unavailable): not an auth failure, no re-bootstrap', { timeout: 60_000 }, async () => {
    const { failures } = await runningFault('broker refusing (CONNACK 3)', 3_000, (w) => w.brokerProxy.setMode('refusing'), (w) => w.brokerProxy.setMode('pass'), 14);
    const refusals = failures.filter((l) => l['stage'] === 'connect');
    expect(refusals.length).toBeGreaterThanOrEqual(1);
    expect(refusals.every((l) => l['code'] === 'MQTT_CONNECT_REFUSED' && l['failureClass'] === 'transient')).toBe(true);
  });

  it('broker silent (a dead link): the keep-alive notices, connects time out, then it recovers', { timeout: 60_000 }, async () => {
    const { failures } = await runningFault('broker silent (dead link)', 11_000, (w) => w.brokerProxy.setMode('silent'), (w) => w.brokerProxy.setMode('pass'), 14);
    // The keep-alive ends the dead session (MQTT.js closes it); new connections get no CONNACK in time.
    expect(failures.filter((l) => l['stage'] === 'connection')).toHaveLength(1);
    expect(failures.filter((l) => l['stage'] === 'connect').every((l) => l['code'] === 'MQTT_TIMEOUT')).toBe(true);
  });

  it('broker flapping: a connection that never stays up keeps the backoff growing', { timeout: 60_000 }, async () => {
    let flapping: NodeJS.Timeout | undefined;
    const { row } = await runningFault(
      'broker flapping',
      4_000,
      (w) => {
        flapping = setInterval(() => w.brokerProxy.reset(), 300);
      },
      () => clearInterval(flapping),
      14,
    );
    expect(row.agentAttempts).toBeGreaterThanOrEqual(3);
  });

  it('credentials rotated on the server: auth refusal, one re-bootstrap, online with the new secret', { timeout: 60_000 }, async () => {
    const w = await world();
    try {
      const agent = w.start();
      await agent.waitFor(isOnline, 20_000, 'online before the rotation');
      const from = agent.lines.length;
      const requestsBefore = deviceRequests(w.stack);
      const rotated = await fetch(`${w.stack.bootstrapUrl}/dev/clients/${w.device.clientId}/secret`, { method: 'POST' });
      expect(rotated.status).toBe(200);
      const kicked = await fetch(`${w.stack.bootstrapUrl}/dev/clients/${w.device.clientId}/kick`, { method: 'POST' });
      expect(((await kicked.json()) as { sessions_closed: number }).sessions_closed).toBe(1);
      const started = Date.now();
      await waitForLineFrom(agent, from, isOnline, 'online with the rotated secret', 20_000);
      const during = linesFrom(agent, from);
      const row = record({
        fault: 'credentials rotated on the server',
        faultMs: 0,
        bootstrapRequests: deviceRequests(w.stack) - requestsBefore,
        failures: during.filter(isFailure),
        recoveringSince: started,
        extraBoundMs: ATTEMPT_DEADLINE_MS, // plus the re-bootstrap itself
      });
      expect(during.some((l) => l['code'] === 'MQTT_AUTH_REFUSED')).toBe(true);
      expect(row.bootstrapRequests).toBe(1);
      expect(row.recoveredMs).toBeLessThanOrEqual(row.boundMs);
      expect(readlinkSync(join(w.stateDir, 'current'))).toBe('generations/000002');
      // One session per client ID, never two.
      expect(w.stack.broker.sessions().filter((s) => s.username === w.device.clientId)).toHaveLength(1);
    } finally {
      await w.cleanup();
    }
  });
});
