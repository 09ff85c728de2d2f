import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { isFullyOnline, waitForCount } from './agent-signals.js';
import { median } from './stats.js';
import { addDevice, runAgent, type World } from './world.js';

/**
 * Boot to subscribed: from spawning `node dist/cli/main.js run` on an empty state directory to the
 * log line saying every channel is subscribed (secure bootstrap, three channels, certificates
 * written with fsync, mutual TLS), against spawning a bare `node -e 0` until it exits. The two
 * alternate, so both see the same machine state.
 */

export interface BootResult {
  agentMs: number[];
  bareNodeMs: number[];
  medianAgentMs: number;
  medianBareNodeMs: number;
  ratio: number;
}

export function timeBareNode(): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', () => resolve(performance.now() - started));
  });
}

export async function measureBoot(world: World, runs: number, log: (line: string) => void): Promise<BootResult> {
  const agentMs: number[] = [];
  const bareNodeMs: number[] = [];
  // One unmeasured round warms the file-system cache, as on a device that has booted before.
  for (let i = -1; i < runs; i++) {
    const bare = await timeBareNode();
    const { files } = await addDevice(world, { channels: 3 });
    const started = performance.now();
    const agent = runAgent(files);
    try {
      await waitForCount(agent, (l) => isFullyOnline(l, 3), 1, 30_000, 'online with 3 of 3 channels');
      const elapsed = performance.now() - started;
      if (i >= 0) {
        agentMs.push(elapsed);
        bareNodeMs.push(bare);
        log(`  boot run ${i + 1}/${runs}: agent ${elapsed.toFixed(0)} ms, node -e 0 ${bare.toFixed(0)} ms`);
      }
    } finally {
      await agent.stop(3_000);
    }
  }
  const medianAgentMs = median(agentMs);
  const medianBareNodeMs = median(bareNodeMs);
  return { agentMs, bareNodeMs, medianAgentMs, medianBareNodeMs, ratio: medianAgentMs / medianBareNodeMs };
}
