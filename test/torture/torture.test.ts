import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runBadInput } from '../../agent/devstack/torture/bad-input.js';
import { runFlapping } from '../../agent/devstack/torture/flapping.js';
import { runPowerCuts } from '../../agent/devstack/torture/power-cut.js';
import type { SuiteReport } from '../../agent/devstack/torture/report.js';
import { runResourceFaults } from '../../agent/devstack/torture/resource-faults.js';
import { randomSeed } from '../../agent/devstack/torture/rng.js';

/*
 * The short torture run, as CI runs it: the real agent killed at random moments, thousands of
 * broken inputs reduced to hundreds, disk faults, a flapping broker and Bootstrap. A fresh seed
 * every run (TORTURE_SEED pins one); every violation line names it, so `npm run torture -- --seed N`
 * repeats the failing run. The long run is `npm run torture -- --long`.
 */

const seed = process.env['TORTURE_SEED'] ? Number(process.env['TORTURE_SEED']) : randomSeed();
const log = () => undefined;

let opensslPresent = true;
try {
  execFileSync('openssl', ['version'], { stdio: 'ignore' });
} catch {
  opensslPresent = false;
}
if (!opensslPresent && process.env['CI'] !== 'true') {
  console.warn('\n!!! openssl is missing: the torture generations carry no certificates (cert/key checks not exercised). !!!\n');
}

function expectClean(report: SuiteReport): void {
  console.log(`${report.suite} seed ${report.seed}: ${report.cases} cases, ${Math.round(report.durationMs)} ms; ${report.notes.join(' | ')}`);
  expect(report.violations, `violations (repeat with npm run torture -- --only ${report.suite} --seed ${report.seed})`).toEqual([]);
}

describe(`torture, short run (seed ${seed})`, () => {
  it('under CI, openssl is there to make certificates', () => {
    if (process.env['CI'] === 'true') expect(opensslPresent).toBe(true);
  });

  it('power cuts: every SIGKILL leaves whole generations, and the agent comes back subscribed', { timeout: 60_000 }, async () => {
    const report = await runPowerCuts({ mode: 'short', seed, log });
    expectClean(report);
    expect(report.stats['kills']).toBe(8);
    expect(report.stats['restarts']).toBeGreaterThanOrEqual(8);
  });

  it('bad input: no crash, nothing invalid written, no secret shown, one line per problem', { timeout: 60_000 }, async () => {
    const report = await runBadInput({ mode: 'short', seed, log });
    expectClean(report);
    expect(report.cases).toBeGreaterThanOrEqual(450);
    expect(report.stats['uncaught']).toBe(0);
    // The mutations must not be so wild that nothing valid is ever accepted and written.
    expect(report.stats['written']).toBeGreaterThan(0);
  });

  it('disk full, read-only, state directory deleted: clear line, old configuration intact, recovery', { timeout: 60_000 }, async () => {
    const report = await runResourceFaults({ mode: 'short', seed, log });
    expectClean(report);
    expect(report.stats['refusedCalls']).toBeGreaterThan(0);
    expect(report.notes.some((n) => n.startsWith('ENOSPC:') && n.includes('ENOSPC'))).toBe(true);
  });

  it('flapping broker and Bootstrap: ends connected, with request counts the backoff explains', { timeout: 60_000 }, async () => {
    const report = await runFlapping({ mode: 'short', seed, log });
    expectClean(report);
    expect(report.stats['brokerRestarts']).toBeGreaterThanOrEqual(3);
    expect(report.stats['bootstrapRequests']).toBeLessThanOrEqual(report.stats['bootstrapBound'] as number);
  });
});
