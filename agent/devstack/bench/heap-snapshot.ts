import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * The live JavaScript heap of another process, measured from outside: the process runs with
 * `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=<dir>`, and a heap snapshot (which V8 takes after
 * a full garbage collection) is summed up. Unlike the resident size, this does not move with the
 * garbage collector's mood, so it is what tells a leak from a heap that was merely allowed to grow.
 */

export interface HeapSummary {
  /** Sum of every live object's own size. */
  liveBytes: number;
  /** Object count per "type:constructor" (e.g. "object:Promise", "closure:onData"). */
  counts: Map<string, number>;
}

/** NODE_OPTIONS that let `takeHeapSnapshot` ask the process for a snapshot. */
export function heapSnapshotOptions(dir: string): string {
  return `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${dir}`;
}

/** Signals the process, waits for the snapshot file, summarises it and deletes it. */
export async function takeHeapSnapshot(pid: number, dir: string, timeoutMs = 60_000): Promise<HeapSummary> {
  const before = new Set(existsSync(dir) ? readdirSync(dir) : []);
  process.kill(pid, 'SIGUSR2');
  const deadline = performance.now() + timeoutMs;
  let file: string | undefined;
  let lastSize = -1;
  for (;;) {
    if (performance.now() > deadline) throw new Error(`no heap snapshot from process ${pid} within ${timeoutMs} ms`);
    await sleep(200);
    file ??= readdirSync(dir).find((name) => name.endsWith('.heapsnapshot') && !before.has(name));
    if (file === undefined) continue;
    // Written in one go by the process; done when its size stops changing and it parses.
    const size = statSync(join(dir, file)).size;
    if (size > 0 && size === lastSize) {
      try {
        const summary = summarise(readFileSync(join(dir, file), 'utf8'));
        rmSync(join(dir, file), { force: true });
        return summary;
      } catch {
        // not complete yet
      }
    }
    lastSize = size;
  }
}

interface RawSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

const NAMED_TYPES = new Set(['object', 'closure', 'hidden', 'native']);

function summarise(text: string): HeapSummary {
  const raw = JSON.parse(text) as RawSnapshot;
  const fields = raw.snapshot.meta.node_fields;
  const types = raw.snapshot.meta.node_types[0];
  const width = fields.length;
  const typeAt = fields.indexOf('type');
  const nameAt = fields.indexOf('name');
  const sizeAt = fields.indexOf('self_size');
  const counts = new Map<string, number>();
  let liveBytes = 0;
  for (let i = 0; i < raw.nodes.length; i += width) {
    const type = types[raw.nodes[i + typeAt] as number] ?? '?';
    liveBytes += raw.nodes[i + sizeAt] as number;
    const key = NAMED_TYPES.has(type) ? `${type}:${(raw.strings[raw.nodes[i + nameAt] as number] ?? '').slice(0, 60)}` : type;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return { liveBytes, counts };
}

/** The kinds of object whose count grew the most between two snapshots. */
export function growth(from: HeapSummary, to: HeapSummary, top = 5): { kind: string; added: number }[] {
  const rows: { kind: string; added: number }[] = [];
  for (const [kind, count] of to.counts) rows.push({ kind, added: count - (from.counts.get(kind) ?? 0) });
  return rows.sort((a, b) => b.added - a.added).slice(0, top).filter((r) => r.added > 0);
}
