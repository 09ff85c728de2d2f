import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from '../agent-process.js';
import { runBadInput } from './bad-input.js';
import { runFlapping } from './flapping.js';
import { runPowerCuts } from './power-cut.js';
import type { Mode, SuiteOptions, SuiteReport } from './report.js';
import { runResourceFaults } from './resource-faults.js';
import { randomSeed } from './rng.js';

/**
 * `npm run torture [-- --long] [-- --seed N] [-- --only power-cut,bad-input,resource-faults,flapping]`:
 * tries to break the agent on purpose and checks its invariants. The short run (under a minute) is
 * what CI runs through test/torture/; the long run is 200+ power cuts, 10,000+ bad inputs and
 * minutes of flapping. Every violation line carries the seed, so a failure reproduces.
 */

export const SUITES = {
  'power-cut': runPowerCuts,
  'bad-input': runBadInput,
  'resource-faults': runResourceFaults,
  flapping: runFlapping,
} as const;

export type SuiteName = keyof typeof SUITES;

const USAGE = `usage: npm run torture -- [--long] [--seed N] [--only LIST] [--out DIR]

  --long        the long run (200+ power cuts, 10,000+ bad inputs, minutes of flapping)
  --seed N      reproduce a run (default: random, printed)
  --only LIST   comma-separated subset of: ${Object.keys(SUITES).join(', ')}
  --out DIR     where the JSON report goes (default bench-results/)
`;

export async function runTorture(options: { mode: Mode; seed: number; only: SuiteName[]; log: (line: string) => void }): Promise<SuiteReport[]> {
  const reports: SuiteReport[] = [];
  for (const name of options.only) {
    options.log(`${name} (seed ${options.seed}, ${options.mode})...`);
    const suiteOptions: SuiteOptions = { mode: options.mode, seed: options.seed, log: options.log };
    const report = await SUITES[name](suiteOptions);
    reports.push(report);
    options.log(`  ${report.violations.length === 0 ? 'PASS' : 'FAIL'} ${name}: ${report.cases} cases in ${(report.durationMs / 1000).toFixed(1)} s`);
    for (const note of report.notes) options.log(`    ${note}`);
    for (const violation of report.violations) options.log(`    VIOLATION ${violation}`);
  }
  return reports;
}

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { long: { type: 'boolean', default: false }, seed: { type: 'string' }, only: { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean', default: false } },
      strict: true,
    }));
  } catch (error) {
    process.stderr.write(`torture: ${(error as Error).message}\n${USAGE}`);
    return 64;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.seed !== undefined && !/^\d+$/.test(values.seed)) {
    process.stderr.write(`torture: --seed must be a whole number\n`);
    return 64;
  }
  const only = (values.only ?? Object.keys(SUITES).join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = only.filter((s) => !(s in SUITES));
  if (unknown.length > 0) {
    process.stderr.write(`torture: unknown suite(s) ${unknown.join(', ')}\n${USAGE}`);
    return 64;
  }
  const seed = values.seed === undefined ? randomSeed() : Number(values.seed);
  const mode: Mode = values.long ? 'long' : 'short';
  const log = (line: string) => process.stdout.write(`${line}\n`);
  log(`mg-device-agent torture, ${mode} run, seed ${seed} (repeat with --seed ${seed})`);
  const startedAt = new Date();
  const reports = await runTorture({ mode, seed, only: only as SuiteName[], log });
  const failed = reports.filter((r) => r.violations.length > 0);
  const outDir = values.out ?? join(repoRoot(), 'bench-results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `torture-${mode}-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify({ startedAt: startedAt.toISOString(), mode, seed, reports }, null, 2)}\n`);
  log(`\n${failed.length === 0 ? 'torture PASSED' : `torture FAILED: ${failed.map((r) => r.suite).join(', ')}`} (${reports.reduce((n, r) => n + r.cases, 0)} cases, seed ${seed}); report: ${file}`);
  return failed.length === 0 ? 0 : 1;
}

// Run only as the entry point (the test suite imports runTorture).
if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`torture: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
