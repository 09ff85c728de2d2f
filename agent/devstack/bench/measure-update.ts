import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentConfigSchema } from '../../config/schema.js';
import type { AgentProcess } from '../agent-process.js';
import type { BrokerEvents } from '../broker.js';
import { isFullyOnline, waitForCount } from './agent-signals.js';
import { median } from './stats.js';
import { addDevice, runAgent, type AgentBuild, type AgentBuildName, type World, type WorldDevice } from './world.js';

/**
 * Update latency: from an operator's change on the dev stack (new content and one more channel, in
 * one step) to the change applied on the device: `current/content` holds the new content and the
 * broker has granted the new channel's subscription. Triggers: SIGHUP (a manual check), the
 * periodic check (with a short interval, since the latency is dominated by it), and a request on
 * the control channel, each where the built agent supports it. Runs the agent build it is given
 * (the bench gives it the checkout's dist/).
 */

export type UpdateTrigger = 'sighup' | 'periodic' | 'control';

export interface UpdateTriggerResult {
  trigger: UpdateTrigger;
  supported: boolean;
  note?: string;
  latencyMs: number[];
  medianLatencyMs: number;
  /** The periodic check's interval, when that is the trigger. */
  intervalMs?: number;
}

export interface UpdateResult {
  agent: AgentBuildName;
  triggers: UpdateTriggerResult[];
}

/** True when the built agent's configuration has updates.checkIntervalMs (the periodic check). */
export function supportsPeriodicCheck(): boolean {
  return AgentConfigSchema.safeParse({ updates: { checkIntervalMs: 5_000 } }).success;
}

/** True when the built agent answers requests on a control channel (control.enabled). */
export function supportsControlChannel(): boolean {
  return AgentConfigSchema.safeParse({ control: { enabled: true } }).success;
}

interface Running {
  wd: WorldDevice;
  agent: AgentProcess;
  channels: string[];
}

async function startOnline(world: World, agentBuild: AgentBuild, config: Record<string, Record<string, unknown>>): Promise<Running> {
  // A channel named "control" is the agent's control channel; the other one is ordinary.
  const wd = await addDevice(world, { channelNames: ['control', 'telemetry'], config });
  const agent = runAgent(wd.files, { agent: agentBuild });
  try {
    await waitForCount(agent, (l) => isFullyOnline(l, 2), 1, 30_000, 'online with 2 of 2 channels');
  } catch (error) {
    // Not in the caller's pool yet, so nobody else would stop it.
    await agent.stop(3_000);
    throw error;
  }
  return { wd, agent, channels: [...wd.device.channelIds] };
}

/** Changes content and adds a channel atomically on the server; resolves with the time it took until applied. */
async function changeAndWait(world: World, running: Running, run: number, trigger: () => void, timeoutMs: number): Promise<number> {
  const { stack } = world;
  const { wd } = running;
  const added = stack.registry.addChannel({ domainId: stack.domainId, name: `update-${run}`, metadata: null });
  if (!added.ok) throw new Error(`dev stack refused a channel: ${added.message}`);
  const channelId = added.value.id;
  const content = JSON.stringify({ agent: { mqtt: { url: stack.mqttUrl } }, domain_id: stack.domainId, revision: run, at: Date.now() });
  let subscribedAt: number | undefined;
  const onSubscribed = (event: BrokerEvents['subscribed']) => {
    if (event.username === wd.device.clientId && event.topic.includes(channelId)) subscribedAt ??= performance.now();
  };
  stack.broker.events.on('subscribed', onSubscribed);
  try {
    // Both changes in the same tick: no check can see one without the other.
    const updated = stack.registry.updateConfig(stack.domainId, wd.device.clientId, { name: `device ${wd.device.externalId}`, content });
    const connected = stack.registry.updateConfigChannels(stack.domainId, wd.device.clientId, [...running.channels, channelId]);
    if (!updated.ok || !connected.ok) throw new Error('dev stack refused the configuration change');
    const changedAt = performance.now();
    running.channels.push(channelId);
    trigger();
    const contentFile = join(wd.files.stateDir, 'current', 'content');
    let contentAt: number | undefined;
    while (performance.now() - changedAt < timeoutMs) {
      if (contentAt === undefined) {
        try {
          if (readFileSync(contentFile, 'utf8') === content) contentAt = performance.now();
        } catch {
          // mid-swap or not there yet
        }
      }
      if (contentAt !== undefined && subscribedAt !== undefined) return Math.max(contentAt, subscribedAt) - changedAt;
      await sleep(5);
    }
    throw new Error(`update ${run} not applied within ${timeoutMs} ms (content ${contentAt === undefined ? 'old' : 'new'}, channel ${subscribedAt === undefined ? 'not subscribed' : 'subscribed'})`);
  } finally {
    stack.broker.events.off('subscribed', onSubscribed);
  }
}

export async function measureUpdate(
  world: World,
  options: { agent: AgentBuild; runs: number; periodicIntervalMs: number; triggers: UpdateTrigger[] },
  log: (line: string) => void,
): Promise<UpdateResult> {
  const results: UpdateTriggerResult[] = [];
  for (const trigger of options.triggers) {
    const unsupported =
      trigger === 'periodic' && !supportsPeriodicCheck()
        ? 'the built agent has no periodic check (updates.checkIntervalMs) yet'
        : trigger === 'control' && !supportsControlChannel()
          ? 'the built agent has no control channel yet'
          : undefined;
    if (unsupported) {
      results.push({ trigger, supported: false, note: unsupported, latencyMs: [], medianLatencyMs: Number.NaN });
      continue;
    }
    // Only the trigger under test may notice the change: the periodic check is off otherwise.
    const config: Record<string, Record<string, unknown>> = supportsPeriodicCheck()
      ? { updates: { checkIntervalMs: trigger === 'periodic' ? options.periodicIntervalMs : 0 } }
      : {};
    // The agent refuses a second control-channel check within 30 s, so each control run gets its own device.
    const pool: Running[] = [];
    const latencyMs: number[] = [];
    try {
      const agents = trigger === 'control' ? options.runs : 1;
      for (let i = 0; i < agents; i++) pool.push(await startOnline(world, options.agent, config));
      for (let run = 1; run <= options.runs; run++) {
        const running = pool[trigger === 'control' ? run - 1 : 0] as Running;
        if (trigger === 'periodic') await sleep(Math.random() * options.periodicIntervalMs); // a change arrives at any moment of the period
        const fire = (): void => {
          if (trigger === 'sighup') running.agent.child.kill('SIGHUP');
          if (trigger === 'control') {
            const topic = `m/${world.stack.domainId}/c/${running.channels[0]}/req`;
            void world.stack.broker.publish(topic, JSON.stringify([{ bn: `bench-${run}:`, n: 'bootstrap' }]), { qos: 1 });
          }
        };
        const timeout = trigger === 'periodic' ? options.periodicIntervalMs * 2 + 10_000 : 20_000;
        const ms = await changeAndWait(world, running, run, fire, timeout);
        latencyMs.push(ms);
        log(`  update via ${trigger} ${run}/${options.runs}: ${ms.toFixed(0)} ms`);
      }
    } finally {
      await Promise.all(pool.map((r) => r.agent.stop(3_000)));
    }
    results.push({
      trigger,
      supported: true,
      latencyMs,
      medianLatencyMs: median(latencyMs),
      ...(trigger === 'periodic' ? { intervalMs: options.periodicIntervalMs } : {}),
    });
  }
  return { agent: options.agent.name, triggers: results };
}
