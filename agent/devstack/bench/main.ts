import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { arch, cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from '../agent-process.js';
import { measureBoot, type BootResult } from './measure-boot.js';
import { measureFootprint, type FootprintResult } from './measure-footprint.js';
import { measureIdle, type IdleResult, type IdleVariant } from './measure-idle.js';
import { measureLeak, type LeakResult } from './measure-leak.js';
import { measureUpdate, type UpdateResult, type UpdateTrigger } from './measure-update.js';
import { formatMb, formatMs, formatTable } from './stats.js';
import { hasOpenssl, startWorld } from './world.js';

/**
 * `npm run bench [-- --quick] [-- --only boot,idle,leak,footprint,update]`: measures the agent as
 * it runs on a device, each figure next to its baseline measured in the same run, prints a table
 * and writes everything (every sample, the machine, the commit) to bench-results/. Never part of
 * the test suite: figures depend on the machine.
 */

const USAGE = `usage: npm run bench -- [options]

  --quick               smoke run: 3 runs, 10 s idle, 60 rotation cycles (default: the full measurement)
  --runs N              runs per figure (default 10; at least 10 for published figures)
  --idle-seconds S      idle window for memory and CPU (default 60)
  --cycles N            re-bootstrap + reconnect cycles per leak run (default 500)
  --only LIST           comma-separated subset of: boot, idle, leak, footprint, update
  --node-options OPTS   also measure memory with these NODE_OPTIONS (e.g. "--max-semi-space-size=1")
  --out DIR             where the JSON goes (default bench-results/)
  --help                this text
`;

const ALL = ['boot', 'idle', 'leak', 'footprint', 'update'] as const;
type Figure = (typeof ALL)[number];

/** NODE_OPTIONS recommended for the systemd unit, measured as a second memory variant. */
export const RECOMMENDED_NODE_OPTIONS = '--max-semi-space-size=1 --v8-pool-size=1';

interface Settings {
  quick: boolean;
  runs: number;
  idleSeconds: number;
  cycles: number;
  leakRuns: number;
  only: Figure[];
  nodeOptions: string[];
  outDir: string;
  periodicIntervalMs: number;
}

function parseSettings(argv: string[]): Settings | string {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        quick: { type: 'boolean', default: false },
        runs: { type: 'string' },
        'idle-seconds': { type: 'string' },
        cycles: { type: 'string' },
        only: { type: 'string' },
        'node-options': { type: 'string', multiple: true },
        out: { type: 'string' },
        help: { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (error) {
    return (error as Error).message;
  }
  if (values.help) return '';
  const positive = (text: string | undefined, fallback: number, name: string): number | string => {
    if (text === undefined) return fallback;
    return /^\d+$/.test(text) && Number(text) > 0 ? Number(text) : `--${name} must be a positive whole number`;
  };
  const quick = values.quick === true;
  const runs = positive(values.runs, quick ? 3 : 10, 'runs');
  const idleSeconds = positive(values['idle-seconds'], quick ? 10 : 60, 'idle-seconds');
  const cycles = positive(values.cycles, quick ? 60 : 500, 'cycles');
  for (const v of [runs, idleSeconds, cycles]) if (typeof v === 'string') return v;
  const only = (values.only ?? ALL.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = only.filter((f) => !(ALL as readonly string[]).includes(f));
  if (unknown.length > 0) return `--only: unknown figure(s) ${unknown.join(', ')}; choose from ${ALL.join(', ')}`;
  return {
    quick,
    runs: runs as number,
    idleSeconds: idleSeconds as number,
    cycles: cycles as number,
    leakRuns: quick ? 2 : (runs as number),
    only: only as Figure[],
    nodeOptions: values['node-options'] ?? [RECOMMENDED_NODE_OPTIONS],
    outDir: values.out ?? join(repoRoot(), 'bench-results'),
    periodicIntervalMs: quick ? 3_000 : 10_000,
  };
}

function readOnlyGit(args: string[]): string | undefined {
  try {
    return execFileSync('git', args, { cwd: repoRoot(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

function machine() {
  const cpu = cpus();
  return {
    cpu: cpu[0]?.model ?? 'unknown',
    cores: cpu.length,
    memoryBytes: totalmem(),
    arch: arch(),
    kernel: release(),
    node: process.version,
    commit: readOnlyGit(['rev-parse', 'HEAD']),
    uncommittedChanges: (readOnlyGit(['status', '--porcelain']) ?? '') !== '',
  };
}

interface Results {
  boot?: BootResult;
  idle?: IdleResult;
  leak?: LeakResult;
  footprint?: FootprintResult;
  update?: UpdateResult;
}

const verdict = (met: boolean, missedBy: string) => (met ? 'met' : `MISSED (${missedBy})`);

function table(r: Results, s: Settings): string {
  const rows: string[][] = [];
  const notes: string[] = [];
  if (r.boot) {
    const b = r.boot;
    rows.push(['boot to subscribed (secure, 3 channels, certs)', formatMs(b.medianAgentMs), `node -e 0: ${formatMs(b.medianBareNodeMs)}`, `${b.ratio.toFixed(1)}×`, '≤ 4×', verdict(b.ratio <= 4, `${(b.ratio / 4).toFixed(1)}× over`)]);
  }
  if (r.idle) {
    const i = r.idle;
    for (const v of i.variants) {
      const ratio = v.medianRssBytes / i.medianBareRssBytes;
      rows.push([`RSS after ${i.idleSeconds} s idle (${v.label})`, formatMb(v.medianRssBytes), `node + socket: ${formatMb(i.medianBareRssBytes)}`, `${ratio.toFixed(2)}×`, '≤ 1.5×', verdict(ratio <= 1.5, `+${formatMb(v.medianRssBytes - 1.5 * i.medianBareRssBytes)} over`)]);
    }
    for (const v of i.variants) {
      rows.push([`idle CPU over ${i.idleSeconds} s (${v.label})`, `${v.medianCpuPercent.toFixed(3)} %`, `node + socket: ${i.medianBareCpuPercent.toFixed(3)} %`, '', '< 0.5 %', verdict(v.medianCpuPercent < 0.5, `${v.medianCpuPercent.toFixed(2)} %`)]);
    }
  }
  if (r.leak) {
    const l = r.leak;
    const signed = (bytes: number) => `${bytes >= 0 ? '+' : ''}${formatMb(bytes)}`;
    const heapGrowth = l.medianLiveHeapGrowthBytes;
    rows.push([`live JS heap growth over ${l.cyclesPerRun} rotate+re-bootstrap cycles (after full GC)`, signed(heapGrowth), `after warm-up: ${formatMb(l.runs[0]?.liveHeapAfterWarmupBytes)}`, '', '≤ 5 MB', verdict(heapGrowth <= 5 * 1_048_576, formatMb(heapGrowth))]);
    rows.push(['  resident size growth, measured right after a full GC', signed(l.medianRssAfterGcGrowthBytes), '', '', '≤ 5 MB', verdict(l.medianRssAfterGcGrowthBytes <= 5 * 1_048_576, formatMb(l.medianRssAfterGcGrowthBytes))]);
    rows.push(['  resident size growth, raw (V8 lets its heap grow under churn)', signed(l.medianRssGrowthBytes), `after warm-up: ${formatMb(l.runs[0]?.rssAfterWarmupBytes)}`, '', '', '']);
    const grew = l.runs[0]?.grew.map((g) => `${g.kind} +${g.added}`).join(', ');
    if (grew) notes.push(`objects whose count grew most over the cycles (run 1): ${grew}`);
    rows.push(['open descriptors, warm-up → end (max drift)', `${l.runs.map((x) => `${x.fdsAfterWarmup}→${x.fdsAtEnd}`).slice(0, 3).join(', ')}`, '', `drift ${l.maxFdDrift}`, 'constant', verdict(l.maxFdDrift === 0, `drift ${l.maxFdDrift}`)]);
  }
  if (r.footprint) {
    const f = r.footprint;
    rows.push(['release artefact, unpacked', formatMb(f.unpackedBytes), `node binary: ${formatMb(f.nodeBinaryBytes)}`, '', '≤ 10 MB', verdict(f.unpackedBytes <= 10 * 1_048_576, `+${formatMb(f.unpackedBytes - 10 * 1_048_576)} over`)]);
    rows.push(['  of which not needed at run time (.d.ts, .map, .md, @types)', formatMb(f.notNeededAtRuntimeBytes), '', '', '', '']);
  }
  if (r.update) {
    for (const t of r.update.triggers) {
      const label =
        t.trigger === 'periodic'
          ? `update latency, periodic check every ${formatMs(t.intervalMs)} (≈ half the interval + apply)`
          : `update latency, ${t.trigger === 'sighup' ? 'SIGHUP' : 'control-channel "bootstrap" request'}`;
      rows.push([label, t.supported ? formatMs(t.medianLatencyMs) : 'n/a', '', '', '', t.supported ? '' : (t.note ?? '')]);
    }
  }
  const header = ['figure', 'agent (median)', 'baseline (same run)', 'ratio', 'target', 'result'];
  return `${formatTable(header, rows)}\n\n${[...notes, `medians of ${s.runs} runs${s.quick ? ' (QUICK smoke run: not for publication)' : ''}`].join('\n')}`;
}

async function main(argv: string[]): Promise<number> {
  const settings = parseSettings(argv);
  if (typeof settings === 'string') {
    if (settings !== '') process.stderr.write(`bench: ${settings}\n`);
    process.stdout.write(USAGE);
    return settings === '' ? 0 : 64;
  }
  const log = (line: string) => process.stdout.write(`${line}\n`);
  const startedAt = new Date();
  const info = machine();
  log(`mg-device-agent bench${settings.quick ? ' (quick)' : ''}: ${info.cpu}, ${info.cores} cores, ${formatMb(info.memoryBytes)}, node ${info.node}, commit ${info.commit?.slice(0, 12) ?? '?'}${info.uncommittedChanges ? ' + uncommitted changes' : ''}`);
  if (!hasOpenssl()) log('  openssl missing: no certificates, plain MQTT (figures are then not comparable)');

  const results: Results = {};
  const world = await startWorld({ tls: true });
  try {
    if (settings.only.includes('boot')) {
      log('boot to subscribed...');
      results.boot = await measureBoot(world, settings.runs, log);
    }
    if (settings.only.includes('idle')) {
      log('resident memory and idle CPU...');
      const variants: IdleVariant[] = [{ label: 'as shipped' }, ...settings.nodeOptions.map((o) => ({ label: `NODE_OPTIONS=${o}`, nodeOptions: o }))];
      results.idle = await measureIdle(world, { processes: settings.runs, idleSeconds: settings.idleSeconds, variants }, log);
    }
    if (settings.only.includes('leak')) {
      log('leaks over re-bootstrap + reconnect cycles...');
      results.leak = await measureLeak(world, { runs: settings.leakRuns, cycles: settings.cycles, parallel: Math.min(settings.leakRuns, 5) }, log);
    }
    if (settings.only.includes('footprint')) {
      log('footprint of the release artefact...');
      results.footprint = measureFootprint(log);
    }
    if (settings.only.includes('update')) {
      log('update latency...');
      const triggers: UpdateTrigger[] = ['sighup', 'periodic', 'control'];
      results.update = await measureUpdate(world, { runs: settings.runs, periodicIntervalMs: settings.periodicIntervalMs, triggers }, log);
    }
  } finally {
    await world.close();
  }

  const text = table(results, settings);
  log(`\n${text}`);
  mkdirSync(settings.outDir, { recursive: true });
  const file = join(settings.outDir, `bench-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify({ startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), machine: info, settings, results, table: text }, null, 2)}\n`);
  log(`\nresults: ${file}`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
