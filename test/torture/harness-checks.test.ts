import { cpSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeviceConfig } from '../../agent/bootstrap/model.js';
import { histogram, median, quantile, sparkline, timeToFraction } from '../../agent/devstack/bench/stats.js';
import { checkStateDir, type KnownConfig } from '../../agent/devstack/torture/disk-check.js';
import { attemptsBound } from '../../agent/devstack/torture/flapping.js';
import { createRng } from '../../agent/devstack/torture/rng.js';
import { createLogger } from '../../agent/logging/logger.js';
import { GenerationStore } from '../../agent/storage/generation-store.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { makeTestCerts } from '../helpers/test-certs.js';

/*
 * The torture harness is only as good as its checks: these show that the state-directory audit
 * catches a torn, emptied or mixed generation (so a clean torture run means something), and that
 * runs reproduce from their seed.
 */

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanups.splice(0)) fn();
});

function tempDir(): string {
  const { dir, cleanup } = makeTempDir('mgda-harness-');
  cleanups.push(cleanup);
  return dir;
}

function config(content: string): DeviceConfig {
  return { family: 'clients', mqtt: { url: 'mqtt://127.0.0.1:1883', username: 'u', password: 'p' }, channels: [{ id: 'c1' }], content, certs: {} };
}

async function twoGenerations(): Promise<{ stateDir: string; known: KnownConfig[] }> {
  const stateDir = join(tempDir(), 'state');
  const logger = createLogger({ level: 'fatal', destination: { write: () => undefined } });
  const store = new GenerationStore({ dir: stateDir, keepGenerations: 3, logger });
  await store.init();
  const certs = makeTestCerts(join(tempDir()));
  const first = await store.writeCandidate({ ...config('first'), certs: { clientCert: certs.clientCert, clientKey: certs.clientKey, caCert: certs.caCert } }, { externalId: 'x', fetchedAt: new Date() });
  await store.promote(first);
  const second = await store.writeCandidate(config('second'), { externalId: 'x', fetchedAt: new Date() });
  await store.promote(second);
  return {
    stateDir,
    known: [
      { label: 'first', content: 'first', clientCert: certs.clientCert, clientKey: certs.clientKey, caCert: certs.caCert },
      { label: 'second', content: 'second' },
    ],
  };
}

describe('state directory audit', () => {
  it('accepts whole generations and names the one current points at', async () => {
    const { stateDir, known } = await twoGenerations();
    const report = checkStateDir(stateDir, known);
    expect(report.problems).toEqual([]);
    expect(report.generations.map((g) => g.matches)).toEqual(['first', 'second']);
    expect(report.current?.matches).toBe('second');
  });

  it('catches a file changed after the manifest was written (torn write)', async () => {
    const { stateDir, known } = await twoGenerations();
    writeFileSync(join(stateDir, 'generations', '000002', 'content'), 'secon');
    expect(checkStateDir(stateDir, known).problems).toEqual(['generations/000002: content does not match its sha256 (5 bytes)']);
  });

  it('catches an empty certificate and a mixed generation', async () => {
    const { stateDir, known } = await twoGenerations();
    writeFileSync(join(stateDir, 'generations', '000001', 'certs', 'ca.crt'), '');
    expect(checkStateDir(stateDir, known).problems).toEqual(['generations/000001: certs/ca.crt is empty']);

    // A whole generation that is nevertheless no configuration the server ever sent: second's
    // manifest and content with first's certificates would be a mix; here, simply unknown content.
    const mixedDir = join(stateDir, 'generations', '000003');
    cpSync(join(stateDir, 'generations', '000002'), mixedDir, { recursive: true });
    const manifest = JSON.parse(readFileSync(join(mixedDir, 'config.json'), 'utf8')) as { generation: number };
    manifest.generation = 3;
    writeFileSync(join(mixedDir, 'config.json'), JSON.stringify(manifest));
    const onlyFirst = known.filter((k) => k.label === 'first');
    const problems = checkStateDir(stateDir, onlyFirst).problems;
    expect(problems).toContain('generations/000003: is not any configuration the server handed out (mixed or altered)');
  });

  it('catches current pointing nowhere, and tolerates leftovers of interrupted writes', async () => {
    const { stateDir, known } = await twoGenerations();
    rmSync(join(stateDir, 'current'));
    symlinkSync('generations/000009', join(stateDir, 'current'));
    mkdirSync(join(stateDir, 'generations', '.000003.tmp-abc'));
    const report = checkStateDir(stateDir, known);
    expect(report.problems).toEqual(['current points at generations/000009, which is not a generation on disk']);
    expect(report.tempLeftovers).toBe(1);
  });
});

describe('harness helpers', () => {
  it('a seed reproduces the same sequence', () => {
    const a = createRng(1234);
    const b = createRng(1234);
    const draws = (r: ReturnType<typeof createRng>) => [r.int(1000), r.next(), r.pick(['a', 'b', 'c']), r.bytes(4).toString('hex'), r.fork().int(99)];
    expect(draws(a)).toEqual(draws(b));
    expect(draws(createRng(1235))).not.toEqual(draws(createRng(1234)));
  });

  it('statistics: quantiles, request-rate buckets, time to a fraction, sparkline', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([1, 2, 3, 4])).toBe(2.5);
    expect(quantile([10, 20, 30, 40, 50], 0.99)).toBeCloseTo(49.6);
    expect(histogram([1000, 1100, 2999, 3000, 5500], 1000, 1000)).toEqual([2, 1, 1, 0, 1]);
    expect(timeToFraction([300, 100, 200, 400], 4, 0.5, 0)).toBe(200);
    expect(timeToFraction([300, 100], 4, 1, 0)).toBeUndefined();
    expect(sparkline([0, 4, 8])).toBe(' ▄█'); // half of the peak is half height
  });

  it('the flapping bound grows with the outage and stays far below one attempt per millisecond', () => {
    const short = attemptsBound(1_000, 500);
    const long = attemptsBound(60_000, 500);
    expect(short).toBeGreaterThanOrEqual(2);
    expect(long).toBeGreaterThan(short);
    expect(long).toBeLessThan(200);
  });
});
