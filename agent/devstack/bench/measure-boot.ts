import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { isFullyOnline, waitForCount } from './agent-signals.js';
import { median } from './stats.js';
import { addDevice, runAgent, type AgentBuild, type AgentBuildName, type World } from './world.js';

/**
 * Boot to subscribed: from spawning `node <agent> run` on an empty state directory to the log line
 * saying every channel is subscribed (secure bootstrap, three channels, certificates written with
 * fsync, mutual TLS), against spawning a bare `node -e 0` until it exits. Each round runs the bare
 * node and then every agent build (the checkout's dist/, the release bundle), one after the other,
 * so all see the same machine state.
 */

export interface BootAgentResult {
  agent: AgentBuildName;
  ms: number[];
  medianMs: number;
  /** Median boot over the median bare `node -e 0` of the same rounds. */
  ratio: number;
}

export interface BootResult {
  bareNodeMs: number[];
  medianBareNodeMs: number;
  agents: BootAgentResult[];
}

export function timeBareNode(): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', () => resolve(performance.now() - started));
  });
}

/** Milliseconds from spawning the agent on a fresh device to fully online; the agent is stopped either way. */
async function timeAgentBoot(world: World, agentBuild: AgentBuild): Promise<number> {
  const { files } = await addDevice(world, { channels: 3 });
  const started = performance.now();
  const agent = runAgent(files, { agent: agentBuild });
  try {
    await waitForCount(agent, (l) => isFullyOnline(l, 3), 1, 30_000, `${agentBuild.name} online with 3 of 3 channels`);
    return performance.now() - started;
  } finally {
    await agent.stop(3_000);
  }
}

export async function measureBoot(world: World, runs: number, agents: AgentBuild[], log: (line: string) => void): Promise<BootResult> {
  const bareNodeMs: number[] = [];
  const perAgent = agents.map((build) => ({ build, ms: [] as number[] }));
  // One unmeasured round warms the file-system cache, as on a device that has booted before.
  for (let i = -1; i < runs; i++) {
    const bare = await timeBareNode();
    const round: { ms: number[]; elapsed: number; name: AgentBuildName }[] = [];
    for (const { build, ms } of perAgent) round.push({ ms, elapsed: await timeAgentBoot(world, build), name: build.name });
    if (i < 0) continue;
    bareNodeMs.push(bare);
    for (const { ms, elapsed } of round) ms.push(elapsed);
    log(`  boot run ${i + 1}/${runs}: node -e 0 ${bare.toFixed(0)} ms, ${round.map((r) => `${r.name} ${r.elapsed.toFixed(0)} ms`).join(', ')}`);
  }
  const medianBareNodeMs = median(bareNodeMs);
  return {
    bareNodeMs,
    medianBareNodeMs,
    agents: perAgent.map(({ build, ms }) => ({ agent: build.name, ms, medianMs: median(ms), ratio: median(ms) / medianBareNodeMs })),
  };
}
