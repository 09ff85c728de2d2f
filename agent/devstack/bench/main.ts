import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { arch, cpus, release, totalmem } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from '../agent-process.js';
import { measureBoot, type BootResult } from './measure-boot.js';
import { measureFootprint, type FootprintResult } from './measure-footprint.js';
import { measureIdle, type IdleResult, type IdleVariant } from './measure-idle.js';
import { measureLeak, type LeakResult } from './measure-leak.js';
import { measureUpdate, type UpdateResult, type UpdateTrigger } from './measure-update.js';
import { withReleaseBuild, type ReleaseBuild, type ReleaseBundle } from './release-bundle.js';
import { formatMb, formatMs, formatTable } from './stats.js';
import { distAgent, hasOpenssl, startWorld, type AgentBuildName } from './world.js';

/**
 * `npm run bench [-- --quick] [-- --only boot,idle,leak,footprint,update]`: measures the agent as
 * it ships (the release bundle: scripts/build-release.sh run once on the freshly compiled dist/,
 * unpacked) and, for comparison, the checkout's dist/, each figure next to its baseline measured
 * in the same run; prints a table and writes everything (every sample, the machine, the commit) to
 * bench-results/. Never part of the test suite: figures depend on the machine.
 */

const USAGE = `usage: npm run bench -- [options]

  --quick               smoke run: 3 runs, 10 s idle, 60 rotation cycles (default: the full measurement)
  --runs N              runs per figure (default 10; at least 10 for published figures)
  --idle-seconds S      idle window for memory and CPU (default 60)
  --cycles N            re-bootstrap + reconnect cycles per leak run (default 500)
  --only LIST           comma-separated subset of: boot, idle, leak, footprint, update
  --node-options OPTS   also measure the release bundle's memory with these NODE_OPTIONS
                        (e.g. "--max-semi-space-size=1"; the unit's are always measured)
  --out DIR             where the JSON goes (default bench-results/)
  --help                this text
`;

const ALL = ['boot', 'idle', 'leak', 'footprint', 'update'] as const;
type Figure = (typeof ALL)[number];

/** NODE_OPTIONS of the systemd unit (systemd/mg-device-agent.service), always measured as a memory variant. */
export const RECOMMENDED_NODE_OPTIONS = '--max-semi-space-size=1 --v8-pool-size=1';

interface Settings {
  quick: boolean;
  runs: number;
  idleSeconds: number;
  cycles: number;
  leakRuns: number;
  only: Figure[];
  /** NODE_OPTIONS the release bundle's memory is also measured with: the unit's, then any --node-options. */
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
    nodeOptions: [...new Set([RECOMMENDED_NODE_OPTIONS, ...(values['node-options'] ?? [])])],
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
  /** The release the "release bundle" figures ran: its tarball, or why it could not be built. */
  release?: { built: true; tarball: string; tarballBytes: number; bundledPackages: string[] | undefined } | { built: false; error: string; output?: string };
  boot?: BootResult;
  idle?: IdleResult;
  leak?: LeakResult;
  footprint?: FootprintResult;
  update?: UpdateResult;
  /** Release-bundle figures left out because the release could not be built. */
  notMeasured: { figure: Figure; agent: AgentBuildName; reason: string }[];
}

/** The figures that run or measure the release bundle: one release build serves them all. */
const NEEDS_RELEASE: readonly Figure[] = ['boot', 'idle', 'leak', 'footprint'];

/** Targets are about the agent as shipped; the checkout's dist/ rows are there for comparison. */
const TARGETED: AgentBuildName = 'release bundle';

function summariseRelease(release: ReleaseBuild): NonNullable<Results['release']> {
  if (!release.ok) return { built: false, error: release.error, ...(release.output ? { output: release.output } : {}) };
  const { tarball, tarballBytes, bundledPackages } = release.bundle;
  return { built: true, tarball: basename(tarball), tarballBytes, bundledPackages };
}

/** Memory variants: the release bundle plain and with each NODE_OPTIONS, and dist/ with the unit's for comparison. */
function idleVariants(settings: Settings, bundle: ReleaseBundle | undefined): IdleVariant[] {
  const shipped: IdleVariant[] = bundle ? [{ agent: bundle.agent }, ...settings.nodeOptions.map((nodeOptions) => ({ agent: bundle.agent, nodeOptions }))] : [];
  return [...shipped, { agent: distAgent(), nodeOptions: RECOMMENDED_NODE_OPTIONS }];
}

/** Each figure's name, in the progress log and in the table's rows for what could not be measured. */
const TITLES: Record<Figure, string> = {
  boot: 'boot to subscribed',
  idle: 'resident memory and idle CPU',
  leak: 'leaks over re-bootstrap + reconnect cycles',
  footprint: 'footprint of the release artefact',
  update: 'update latency',
};

async function measure(settings: Settings, release: ReleaseBuild | undefined, log: (line: string) => void): Promise<Results> {
  const results: Results = { notMeasured: [], ...(release ? { release: summariseRelease(release) } : {}) };
  const bundle = release?.ok ? release.bundle : undefined;
  // Whether `figure` was asked for; if so, says that it starts, and without a bundle records the
  // release bundle's part of it as not measured (never estimated).
  const begins = (figure: Figure) => {
    if (!settings.only.includes(figure)) return false;
    log(`${TITLES[figure]}...`);
    if (!bundle && NEEDS_RELEASE.includes(figure)) {
      log('  the release bundle: not measured (its build failed)');
      results.notMeasured.push({ figure, agent: 'release bundle', reason: 'the release build failed (see release.error)' });
    }
    return true;
  };
  const dist = distAgent();
  const world = await startWorld({ tls: true });
  try {
    if (begins('boot')) results.boot = await measureBoot(world, settings.runs, bundle ? [dist, bundle.agent] : [dist], log);
    if (begins('idle')) {
      results.idle = await measureIdle(world, { processes: settings.runs, idleSeconds: settings.idleSeconds, variants: idleVariants(settings, bundle) }, log);
    }
    if (begins('leak') && bundle) {
      results.leak = await measureLeak(world, { agent: bundle.agent, runs: settings.leakRuns, cycles: settings.cycles, parallel: Math.min(settings.leakRuns, 5) }, log);
    }
    if (begins('footprint') && bundle) results.footprint = measureFootprint(bundle);
    if (begins('update')) {
      const triggers: UpdateTrigger[] = ['sighup', 'periodic', 'control'];
      results.update = await measureUpdate(world, { agent: dist, runs: settings.runs, periodicIntervalMs: settings.periodicIntervalMs, triggers }, log);
    }
  } finally {
    await world.close();
  }
  return results;
}

/** Builds the release once if a figure needs it; its scratch directories are gone when this settles. */
async function measureWithRelease(settings: Settings, log: (line: string) => void): Promise<Results> {
  if (!settings.only.some((figure) => NEEDS_RELEASE.includes(figure))) return measure(settings, undefined, log);
  log('release bundle (scripts/build-release.sh --skip-build, unpacked)...');
  return withReleaseBuild(log, (release) => measure(settings, release, log));
}

const verdict = (met: boolean, missedBy: string) => (met ? 'met' : `MISSED (${missedBy})`);

/** [target, result] cells: judged for the targeted build, "for comparison" for the other. */
function judged(agent: AgentBuildName, target: string, met: boolean, missedBy: string): [string, string] {
  return agent === TARGETED ? [target, verdict(met, missedBy)] : ['', 'for comparison'];
}

const signed = (bytes: number) => `${bytes >= 0 ? '+' : ''}${formatMb(bytes)}`;

interface Section {
  rows: string[][];
  notes?: string[];
}

function bootSection(b: BootResult): Section {
  return {
    rows: b.agents.map((a) => [
      'boot to subscribed (secure, 3 channels, certs)',
      a.agent,
      formatMs(a.medianMs),
      `node -e 0: ${formatMs(b.medianBareNodeMs)}`,
      `${a.ratio.toFixed(1)}×`,
      ...judged(a.agent, '≤ 4×', a.ratio <= 4, `${(a.ratio / 4).toFixed(2)}× the target`),
    ]),
  };
}

function idleSection(i: IdleResult): Section {
  const bare = `node + socket: ${formatMb(i.medianBareRssBytes)}`;
  const rss = i.variants.map((v) => {
    const ratio = v.medianRssBytes / i.medianBareRssBytes;
    const over = `+${formatMb(v.medianRssBytes - 1.5 * i.medianBareRssBytes)} over`;
    return [`RSS after ${i.idleSeconds} s idle (${v.label})`, v.agent, formatMb(v.medianRssBytes), bare, `${ratio.toFixed(2)}×`, ...judged(v.agent, '≤ 1.5×', ratio <= 1.5, over)];
  });
  const cpu = i.variants.map((v) => {
    const percent = `${v.medianCpuPercent.toFixed(3)} %`;
    return [`idle CPU over ${i.idleSeconds} s (${v.label})`, v.agent, percent, `node + socket: ${i.medianBareCpuPercent.toFixed(3)} %`, '', ...judged(v.agent, '< 0.5 %', v.medianCpuPercent < 0.5, percent)];
  });
  return { rows: [...rss, ...cpu] };
}

function leakSection(l: LeakResult): Section {
  const heapGrowth = l.medianLiveHeapGrowthBytes;
  const rows = [
    [`live JS heap growth over ${l.cyclesPerRun} rotate+re-bootstrap cycles (after full GC)`, l.agent, signed(heapGrowth), `after warm-up: ${formatMb(l.runs[0]?.liveHeapAfterWarmupBytes)}`, '', ...judged(l.agent, '≤ 5 MB', heapGrowth <= 5 * 1_048_576, formatMb(heapGrowth))],
    ['  resident size growth, measured right after a full GC', l.agent, signed(l.medianRssAfterGcGrowthBytes), '', '', ...judged(l.agent, '≤ 5 MB', l.medianRssAfterGcGrowthBytes <= 5 * 1_048_576, formatMb(l.medianRssAfterGcGrowthBytes))],
    ['  resident size growth, raw (V8 lets its heap grow under churn)', l.agent, signed(l.medianRssGrowthBytes), `after warm-up: ${formatMb(l.runs[0]?.rssAfterWarmupBytes)}`, '', '', ''],
    ['open descriptors, warm-up → end (max drift)', l.agent, l.runs.map((x) => `${x.fdsAfterWarmup}→${x.fdsAtEnd}`).slice(0, 3).join(', '), '', `drift ${l.maxFdDrift}`, ...judged(l.agent, 'constant', l.maxFdDrift === 0, `drift ${l.maxFdDrift}`)],
  ];
  const grew = l.runs[0]?.grew.map((g) => `${g.kind} +${g.added}`).join(', ');
  return { rows, notes: grew ? [`objects whose count grew most over the cycles (${l.agent}, run 1): ${grew}`] : [] };
}

function footprintSection(f: FootprintResult): Section {
  const limit = 10 * 1_048_576;
  // Most chunks are a few KB: MB with one decimal would call them all 0.0.
  const kb = (bytes: number) => `${Math.round(bytes / 1024)} KB`;
  const packages = f.bundledPackages?.length ?? '?';
  return {
    rows: [
      ['release artefact, unpacked', f.agent, formatMb(f.unpackedBytes), `node binary: ${formatMb(f.nodeBinaryBytes)}`, '', ...judged(f.agent, '≤ 10 MB', f.unpackedBytes <= limit, `+${formatMb(f.unpackedBytes - limit)} over`)],
      ['  tarball (gzip)', f.agent, formatMb(f.tarballBytes), '', '', '', ''],
      [`  dist/cli/: ${f.bundleFiles} files bundling ${packages} packages`, f.agent, formatMb(f.bundleBytes), '', '', '', ''],
    ],
    notes: [`largest files in the release's dist/cli/: ${f.largestBundleFiles.map((x) => `${x.name} ${kb(x.bytes)}`).join(', ')}`],
  };
}

function updateSection(u: UpdateResult): Section {
  return {
    rows: u.triggers.map((t) => {
      const label =
        t.trigger === 'periodic'
          ? `update latency, periodic check every ${formatMs(t.intervalMs)} (≈ half the interval + apply)`
          : `update latency, ${t.trigger === 'sighup' ? 'SIGHUP' : 'control-channel "bootstrap" request'}`;
      return [label, u.agent, t.supported ? formatMs(t.medianLatencyMs) : 'n/a', '', '', '', t.supported ? '' : (t.note ?? '')];
    }),
  };
}

function notMeasuredRow(m: Results['notMeasured'][number]): string[] {
  return [TITLES[m.figure], m.agent, 'not measured', '', '', '', 'NOT MEASURED (release build failed)'];
}

function table(r: Results, s: Settings): string {
  const sections: Record<Figure, Section | undefined> = {
    boot: r.boot && bootSection(r.boot),
    idle: r.idle && idleSection(r.idle),
    leak: r.leak && leakSection(r.leak),
    footprint: r.footprint && footprintSection(r.footprint),
    update: r.update && updateSection(r.update),
  };
  const rows = ALL.flatMap((figure) => [...(sections[figure]?.rows ?? []), ...r.notMeasured.filter((m) => m.figure === figure).map(notMeasuredRow)]);
  const header = ['figure', 'agent', 'value (median)', 'baseline (same run)', 'ratio', 'target', 'result'];
  const notes = [
    ...(r.release?.built === false ? [`RELEASE BUILD FAILED: ${r.release.error}`] : []),
    ...ALL.flatMap((figure) => sections[figure]?.notes ?? []),
    `targets apply to the release bundle (the tarball, as shipped); dist rows are the checkout's tsc output, for comparison`,
    `medians of ${s.runs} runs${s.quick ? ' (QUICK smoke run: not for publication)' : ''}`,
  ];
  return `${formatTable(header, rows)}\n\n${notes.join('\n')}`;
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

  const results = await measureWithRelease(settings, log);

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
