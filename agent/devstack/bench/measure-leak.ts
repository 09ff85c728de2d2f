import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentProcess } from '../agent-process.js';
import { growth, heapSnapshotOptions, takeHeapSnapshot, type HeapSummary } from './heap-snapshot.js';
import { isFullyOnline, waitForCount } from './agent-signals.js';
import { openDescriptors, residentBytes } from './proc-stats.js';
import { median } from './stats.js';
import { addDevice, runAgent, type AgentBuild, type AgentBuildName, type World } from './world.js';

/**
 * No leaks: cycles of "the dev stack rotates the client secret, the agent is asked to check
 * (SIGHUP), re-bootstraps, writes a new generation, reconnects with the new credentials and
 * subscribes again". Three views of memory, after warm-up and at the end:
 * - the live JS heap from a heap snapshot (taken after a full GC): what a leak grows;
 * - the resident size right after that full GC;
 * - the raw resident size (medians of a window of cycles), which also grows while V8 merely lets
 *   its heap expand under the churn, and so overstates leaks.
 * Open descriptors are sampled after every cycle. Runs the agent build it is given: the bench
 * gives it the release bundle, as shipped.
 */

export interface LeakRun {
  cycles: number;
  liveHeapAfterWarmupBytes: number;
  liveHeapGrowthBytes: number;
  rssAfterGcGrowthBytes: number;
  /** Object kinds whose count grew the most (a leak shows up here by name). */
  grew: { kind: string; added: number }[];
  rssAfterWarmupBytes: number;
  rssAtEndBytes: number;
  rssGrowthBytes: number;
  fdsAfterWarmup: number;
  fdsAtEnd: number;
  /** Smallest and largest descriptor count seen after warm-up. */
  fdsRange: [number, number];
  cycleMsMedian: number;
}

export interface LeakResult {
  agent: AgentBuildName;
  cyclesPerRun: number;
  runs: LeakRun[];
  medianLiveHeapGrowthBytes: number;
  medianRssAfterGcGrowthBytes: number;
  medianRssGrowthBytes: number;
  maxFdDrift: number;
}

const WINDOW = 25;

async function cycleOne(world: World, agentBuild: AgentBuild, cycles: number, log: (line: string) => void, label: string): Promise<LeakRun> {
  const { device, files, dir } = await addDevice(world, { channels: 3 });
  const snapshots = join(dir, 'heap');
  mkdirSync(snapshots);
  const agent: AgentProcess = runAgent(files, { agent: agentBuild, nodeOptions: heapSnapshotOptions(snapshots) });
  const warm = Math.min(Math.max(WINDOW, Math.floor(cycles / 10)), Math.max(1, cycles - WINDOW));
  let warmHeap: HeapSummary | undefined;
  let warmRssAfterGc = Number.NaN;
  try {
    const online = (l: Parameters<typeof isFullyOnline>[0]) => isFullyOnline(l, 3);
    await waitForCount(agent, online, 1, 30_000, 'first online');
    const pid = agent.child.pid as number;
    const rss: number[] = [];
    const fds: number[] = [];
    const cycleMs: number[] = [];
    for (let cycle = 1; cycle <= cycles; cycle++) {
      const rotated = world.stack.registry.rotateClientSecret(device.clientId);
      if (!rotated.ok) throw new Error(`dev stack could not rotate the secret: ${rotated.message}`);
      const started = performance.now();
      agent.child.kill('SIGHUP');
      await waitForCount(agent, online, cycle + 1, 30_000, `online after rotation ${cycle}`);
      cycleMs.push(performance.now() - started);
      rss.push(residentBytes(pid) ?? Number.NaN);
      fds.push(openDescriptors(pid)?.total ?? Number.NaN);
      if (cycle === warm) {
        warmHeap = await takeHeapSnapshot(pid, snapshots);
        warmRssAfterGc = residentBytes(pid) ?? Number.NaN;
      }
      if (cycle % 100 === 0) log(`  ${label}: ${cycle}/${cycles} cycles, rss ${((rss.at(-1) ?? 0) / 1_048_576).toFixed(1)} MB, ${fds.at(-1)} fds`);
    }
    const endHeap = await takeHeapSnapshot(pid, snapshots);
    const endRssAfterGc = residentBytes(pid) ?? Number.NaN;
    const fromHeap = warmHeap ?? endHeap;
    const afterWarmup = rss.slice(warm, warm + WINDOW);
    const atEnd = rss.slice(-WINDOW);
    const fdsAfterWarmup = fds.slice(warm);
    return {
      cycles,
      liveHeapAfterWarmupBytes: fromHeap.liveBytes,
      liveHeapGrowthBytes: endHeap.liveBytes - fromHeap.liveBytes,
      rssAfterGcGrowthBytes: endRssAfterGc - warmRssAfterGc,
      grew: growth(fromHeap, endHeap),
      rssAfterWarmupBytes: median(afterWarmup),
      rssAtEndBytes: median(atEnd),
      rssGrowthBytes: median(atEnd) - median(afterWarmup),
      fdsAfterWarmup: median(fds.slice(warm, warm + WINDOW)),
      fdsAtEnd: median(fds.slice(-WINDOW)),
      fdsRange: [Math.min(...fdsAfterWarmup), Math.max(...fdsAfterWarmup)],
      cycleMsMedian: median(cycleMs),
    };
  } finally {
    await agent.stop(3_000);
  }
}

export async function measureLeak(
  world: World,
  options: { agent: AgentBuild; runs: number; cycles: number; parallel: number },
  log: (line: string) => void,
): Promise<LeakResult> {
  const runs: LeakRun[] = [];
  for (let first = 0; first < options.runs; first += options.parallel) {
    const batch = Array.from({ length: Math.min(options.parallel, options.runs - first) }, (_, i) => first + i);
    runs.push(...(await Promise.all(batch.map((i) => cycleOne(world, options.agent, options.cycles, log, `leak run ${i + 1}/${options.runs} (${options.agent.name})`)))));
  }
  return {
    agent: options.agent.name,
    cyclesPerRun: options.cycles,
    runs,
    medianLiveHeapGrowthBytes: median(runs.map((r) => r.liveHeapGrowthBytes)),
    medianRssAfterGcGrowthBytes: median(runs.map((r) => r.rssAfterGcGrowthBytes)),
    medianRssGrowthBytes: median(runs.map((r) => r.rssGrowthBytes)),
    maxFdDrift: Math.max(...runs.map((r) => Math.abs(r.fdsAtEnd - r.fdsAfterWarmup))),
  };
}
