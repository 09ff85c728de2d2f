import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentProcess } from '../agent-process.js';
import { isFullyOnline, waitForCount } from './agent-signals.js';
import { cpuTimeMs, residentBytes } from './proc-stats.js';
import { median } from './stats.js';
import { addDevice, distAgent, runAgent, type AgentBuild, type AgentBuildName, type World } from './world.js';

/**
 * Resident memory and CPU of agents connected and idle (default heartbeat, nothing to do), against
 * bare Node processes that only hold a TCP socket open. All processes run side by side through the
 * same window, so both sides see the same machine.
 */

export interface IdleVariant {
  /** Default: the checkout's dist/. */
  agent?: AgentBuild;
  /** Default: none, plain `node`. */
  nodeOptions?: string;
}

export interface IdleVariantResult {
  /** "plain node" or "NODE_OPTIONS=...". */
  label: string;
  agent: AgentBuildName;
  nodeOptions: string | undefined;
  rssBytes: number[];
  cpuPercent: number[];
  medianRssBytes: number;
  medianCpuPercent: number;
}

export interface IdleResult {
  idleSeconds: number;
  bareRssBytes: number[];
  bareCpuPercent: number[];
  medianBareRssBytes: number;
  medianBareCpuPercent: number;
  variants: IdleVariantResult[];
}

/** `node -e` that connects to `port` and keeps the socket (and the process) open until killed. */
function startBareSocketHolder(port: number): ChildProcess {
  const script = `const s = require('node:net').connect(${port}, '127.0.0.1'); s.on('error', () => {}); setInterval(() => {}, 1 << 30);`;
  return spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
}

const buildOf = (variant: IdleVariant): AgentBuild => variant.agent ?? distAgent();
const nodeOptionsLabel = (variant: IdleVariant): string => (variant.nodeOptions === undefined ? 'plain node' : `NODE_OPTIONS=${variant.nodeOptions}`);
const describe = (variant: IdleVariant): string => `${buildOf(variant).name}, ${nodeOptionsLabel(variant)}`;

export async function measureIdle(
  world: World,
  options: { processes: number; idleSeconds: number; variants: IdleVariant[] },
  log: (line: string) => void,
): Promise<IdleResult> {
  const sockets = new Set<Socket>();
  const holder = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined).once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  const port = (holder.address() as AddressInfo).port;

  const bares: ChildProcess[] = [];
  const agents: { variant: IdleVariant; agent: AgentProcess }[] = [];
  try {
    for (let i = 0; i < options.processes; i++) bares.push(startBareSocketHolder(port));
    for (const variant of options.variants) {
      for (let i = 0; i < options.processes; i++) {
        const { files } = await addDevice(world, { channels: 3 });
        agents.push({ variant, agent: runAgent(files, { agent: buildOf(variant), nodeOptions: variant.nodeOptions }) });
      }
    }
    await Promise.all(agents.map(({ variant, agent }) => waitForCount(agent, (l) => isFullyOnline(l, 3), 1, 60_000, `${describe(variant)} online with 3 of 3 channels`)));
    log(`  ${agents.length} agents and ${bares.length} bare processes up; idle for ${options.idleSeconds} s`);

    const cpuAt = (pid: number | undefined) => (pid === undefined ? Number.NaN : (cpuTimeMs(pid) ?? Number.NaN));
    const startCpu = new Map<number, number>();
    for (const p of [...bares.map((b) => b.pid), ...agents.map((a) => a.agent.child.pid)]) if (p !== undefined) startCpu.set(p, cpuAt(p));
    const windowStart = performance.now();
    await sleep(options.idleSeconds * 1000);
    const windowMs = performance.now() - windowStart;

    const sample = (pid: number | undefined) => ({
      rss: pid === undefined ? Number.NaN : (residentBytes(pid) ?? Number.NaN),
      cpuPercent: pid === undefined ? Number.NaN : ((cpuAt(pid) - (startCpu.get(pid) ?? Number.NaN)) / windowMs) * 100,
    });
    const bareSamples = bares.map((b) => sample(b.pid));
    const variants = options.variants.map((variant): IdleVariantResult => {
      const samples = agents.filter((a) => a.variant === variant).map((a) => sample(a.agent.child.pid));
      const rssBytes = samples.map((s) => s.rss);
      const cpuPercent = samples.map((s) => s.cpuPercent);
      return { label: nodeOptionsLabel(variant), agent: buildOf(variant).name, nodeOptions: variant.nodeOptions, rssBytes, cpuPercent, medianRssBytes: median(rssBytes), medianCpuPercent: median(cpuPercent) };
    });
    const exited = agents.filter((a) => a.agent.child.exitCode !== null || a.agent.child.signalCode !== null);
    if (exited.length > 0) {
      const which = [...new Set(exited.map(({ variant }) => describe(variant)))].join('; ');
      throw new Error(`${exited.length} agents (${which}) exited during the idle window; last output of one:\n${exited[0]?.agent.output.slice(-1500)}`);
    }
    const bareRssBytes = bareSamples.map((s) => s.rss);
    const bareCpuPercent = bareSamples.map((s) => s.cpuPercent);
    return {
      idleSeconds: options.idleSeconds,
      bareRssBytes,
      bareCpuPercent,
      medianBareRssBytes: median(bareRssBytes),
      medianBareCpuPercent: median(bareCpuPercent),
      variants,
    };
  } finally {
    await Promise.all(agents.map(({ agent }) => agent.stop(3_000)));
    for (const bare of bares) bare.kill('SIGKILL');
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => holder.close(() => resolve()));
  }
}
