/**
 * Small pure helpers shared by the benchmark, the torture harness and the fleet simulator:
 * medians and quantiles, rate histograms, ASCII sparklines and plain-text tables.
 */

/** The q-quantile (0..1) by linear interpolation between closest ranks; NaN for no samples. */
export function quantile(samples: readonly number[], q: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const position = (sorted.length - 1) * Math.min(Math.max(q, 0), 1);
  const lower = Math.floor(position);
  const upper = Math.ceil(position);
  const low = sorted[lower] as number;
  const high = sorted[upper] as number;
  return low + (high - low) * (position - lower);
}

export function median(samples: readonly number[]): number {
  return quantile(samples, 0.5);
}

/** Counts of event times (ms) per bucket of `bucketMs`, from `startMs` to the last event (or `endMs`). */
export function histogram(timesMs: readonly number[], startMs: number, bucketMs: number, endMs?: number): number[] {
  const last = endMs ?? (timesMs.length === 0 ? startMs : Math.max(...timesMs));
  const buckets = new Array<number>(Math.max(1, Math.floor((last - startMs) / bucketMs) + 1)).fill(0);
  for (const t of timesMs) {
    const index = Math.floor((t - startMs) / bucketMs);
    if (index >= 0 && index < buckets.length) buckets[index] = (buckets[index] as number) + 1;
  }
  return buckets;
}

const SPARKS = ' ▁▂▃▄▅▆▇█';

/** One character per value, scaled to the largest (or `max`): a request-rate shape at a glance. */
export function sparkline(values: readonly number[], max = Math.max(0, ...values)): string {
  if (max <= 0) return values.map(() => SPARKS[0]).join('');
  return values
    .map((v) => {
      if (v <= 0) return SPARKS[0];
      const level = Math.max(1, Math.round((v / max) * (SPARKS.length - 1)));
      return SPARKS[Math.min(level, SPARKS.length - 1)];
    })
    .join('');
}

/** Time (ms after `startMs`) by which `fraction` of `total` events had happened; undefined if never. */
export function timeToFraction(timesMs: readonly number[], total: number, fraction: number, startMs: number): number | undefined {
  const needed = Math.ceil(total * fraction);
  if (needed === 0) return 0;
  if (timesMs.length < needed) return undefined;
  const sorted = [...timesMs].sort((a, b) => a - b);
  return (sorted[needed - 1] as number) - startMs;
}

/** A plain-text table with a header row and aligned columns. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function formatMs(ms: number | undefined): string {
  if (ms === undefined || Number.isNaN(ms)) return 'n/a';
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms)} ms`;
}

export function formatMb(bytes: number | undefined): string {
  if (bytes === undefined || Number.isNaN(bytes)) return 'n/a';
  return `${(bytes / 1_048_576).toFixed(1)} MB`;
}
