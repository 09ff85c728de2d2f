import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../agent/logging/logger.js';
import type { RuntimeStatus } from '../../agent/lifecycle/agent-runtime.js';
import { StatusFileSchema } from '../../agent/lifecycle/status-file.js';
import { StatusFileWriter } from '../../agent/lifecycle/status-writer.js';
import { nodeFs, type Fs } from '../../agent/storage/atomic-write.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';

/* status.json on disk: what the `status` command reads, how often it is written, what it never holds. */

const t = useTeardown();

function snapshot(state: RuntimeStatus['state'], generation: number | null = 3): RuntimeStatus {
  return {
    state,
    detail: state === 'online' ? 'generation 3, 2/2 channels' : null,
    since: '2024-03-01T10:00:00.000Z',
    generation,
    externalId: 'dc:a6:32:01:02:03',
    lastBootstrap: { at: '2024-03-01T09:59:58.000Z', ok: true },
    connection: { broker: 'mqtts://broker.example:8883/', connected: state === 'online', since: state === 'online' ? '2024-03-01T10:00:00.000Z' : null },
    channels: { subscribed: ['c1', 'c2'], refused: [] },
  };
}

/** node:fs with every rename (the commit of an atomic write) counted. */
function countingFs(): { fs: Fs; writes: () => number } {
  let renames = 0;
  return {
    fs: { ...nodeFs, rename: async (a, b) => { renames++; await nodeFs.rename(a, b); } },
    writes: () => renames,
  };
}

function setup(minIntervalMs: number) {
  const dir = tempWorkDir(t, 'mgda-status-');
  const counting = countingFs();
  const writer = new StatusFileWriter({ stateDir: dir, logger: createLogger({ level: 'silent' }), minIntervalMs, pid: 4242, fs: counting.fs });
  const path = join(dir, 'status.json');
  return { writer, path, writes: counting.writes, read: () => StatusFileSchema.parse(JSON.parse(readFileSync(path, 'utf8'))) };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (cond()) return;
    await sleep(10);
  }
  throw new Error(`never happened: ${what}`);
}

describe('status.json writer', () => {
  it('writes what the shared schema reads, mode 0644, with the pid and the time of writing', async () => {
    const { writer, path, read } = setup(1_000);
    writer.update(snapshot('online'));
    await writer.stop();
    expect(statSync(path).mode & 0o777).toBe(0o644);
    const file = read();
    expect(file).toMatchObject({ pid: 4242, state: 'online', generation: 3, connection: { broker: 'mqtts://broker.example:8883/', connected: true } });
    expect(Date.parse(file.updatedAt)).not.toBeNaN();
  });

  it('many changes in a burst: the first at once, then one trailing write with the newest', async () => {
    const { writer, read, writes } = setup(300);
    writer.update(snapshot('connecting'));
    await until(() => writes() === 1, 'first write');
    for (const state of ['online', 'waiting', 'connecting', 'bootstrapping', 'online'] as const) writer.update(snapshot(state, 9));
    expect(read().state).toBe('connecting'); // the burst waits for the interval
    await until(() => writes() === 2, 'trailing write');
    expect(read()).toMatchObject({ state: 'online', generation: 9 });
    await sleep(400);
    expect(writes()).toBe(2);
    await writer.stop();
    expect(writes()).toBe(2); // nothing new to write
  });

  it('stop() writes the final snapshot at once, whatever the interval', async () => {
    const { writer, read } = setup(60_000);
    writer.update(snapshot('online'));
    writer.update(snapshot('stopping'));
    writer.update(snapshot('stopped'));
    await writer.stop();
    expect(read().state).toBe('stopped');
    writer.update(snapshot('online')); // after stop: ignored
    await sleep(20);
    expect(read().state).toBe('stopped');
  });
});
