import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../agent/logging/logger.js';
import { BackoffStateFile } from '../../agent/lifecycle/backoff-state.js';
import { firstAttemptDelay } from '../../agent/lifecycle/backoff.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';
import { captureLogger } from '../helpers/log-capture.js';

/* The failure streak on disk: what a restarted agent resumes, and what a power cut can leave of it. */

const t = useTeardown();

function setup() {
  const dir = tempWorkDir(t, 'mgda-backoff-');
  const { logger, lines } = captureLogger();
  const file = new BackoffStateFile({ stateDir: dir, logger });
  return { dir, file, lines, logger, path: join(dir, 'backoff.json') };
}

describe('backoff state file', () => {
  it('round-trips the streak through a new instance (a restart), mode 0600', async () => {
    const { dir, file, path } = setup();
    await file.save({ counts: { transient: 3, operator: 1 }, last: 'transient' });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const restarted = new BackoffStateFile({ stateDir: dir, logger: createLogger({ level: 'silent' }) });
    expect(await restarted.load()).toEqual({ counts: { transient: 3, operator: 1 }, last: 'transient' });
  });

  it('success removes the file; a healthy agent never writes it at all', async () => {
    const { file, path } = setup();
    expect(await file.load()).toEqual({ counts: {} });
    await file.save({ counts: {} });
    expect(existsSync(path)).toBe(false);
    await file.save({ counts: { auth: 1 }, last: 'auth' });
    expect(existsSync(path)).toBe(true);
    await file.save({ counts: {} });
    expect(existsSync(path)).toBe(false);
  });

  it.each([
    ['empty', Buffer.alloc(0)],
    ['zero-filled', Buffer.alloc(64)],
    ['not JSON', Buffer.from('{"version":1,"counts":{"transient":')],
    ['wrong shape', Buffer.from('{"version":1,"counts":{"transient":-4}}')],
  ])('a %s file (torn by a power cut) costs only the history, with one warning', async (_name, bytes) => {
    const { file, path, lines } = setup();
    writeFileSync(path, bytes);
    expect(await file.load()).toEqual({ counts: {} });
    const warnings = lines.filter((l) => l['level'] === 'warn');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.['code']).toBe('STORAGE_CORRUPT');
    // The next failure overwrites it with a good one.
    await file.save({ counts: { transient: 1 }, last: 'transient' });
    expect(JSON.parse(readFileSync(path, 'utf8')).counts).toEqual({ transient: 1 });
  });

  it('a state directory it cannot write to never stops the agent: save does not throw and warns once', async () => {
    const { dir, lines, logger } = setup();
    // A directory that cannot be written to (here: one that is not there), as for root and non-root alike.
    const file = new BackoffStateFile({ stateDir: join(dir, 'missing', 'deeper'), logger });
    await expect(file.save({ counts: { transient: 1 } })).resolves.toBeUndefined();
    await expect(file.save({ counts: { transient: 2 } })).resolves.toBeUndefined();
    expect(lines.filter((l) => l['level'] === 'warn' && l['code'] === 'STORAGE_WRITE_FAILED')).toHaveLength(1);
  });
});

describe('firstAttemptDelay', () => {
  const retry = { initialDelayMs: 1000, maxDelayMs: 60_000, permanentMaxDelayMs: 3_600_000, bootJitterMs: 5_000 };

  it('a clean start: uniform in [0, bootJitterMs)', () => {
    expect(firstAttemptDelay({ failures: 0, failureClass: undefined }, retry, () => 0)).toEqual({ delayMs: 0, kind: 'jitter' });
    expect(firstAttemptDelay({ failures: 0, failureClass: undefined }, retry, () => 0.999)).toEqual({ delayMs: 4995, kind: 'jitter' });
    expect(firstAttemptDelay({ failures: 0, failureClass: undefined }, { ...retry, bootJitterMs: 0 }, () => 0.7).delayMs).toBe(0);
  });

  it('after a restart mid-streak: the window of the last failure, per class', () => {
    // 6 transient failures: window 1000·2^5 = 32 s; random 0.5 → 16 s.
    expect(firstAttemptDelay({ failures: 6, failureClass: 'transient' }, retry, () => 0.5)).toEqual({ delayMs: 16_000, kind: 'resume' });
    // operator class starts at 15×, is capped by permanentMaxDelayMs (1 h) and always waits half of
    // the window: 30 min + 0.5 · 30 min.
    expect(firstAttemptDelay({ failures: 20, failureClass: 'operator' }, retry, () => 0.5)).toEqual({ delayMs: 2_700_000, kind: 'resume' });
  });
});
