/** What one torture suite found: how much it tried, and every invariant it saw broken. */
export interface SuiteReport {
  suite: 'power-cut' | 'bad-input' | 'resource-faults' | 'flapping';
  seed: number;
  /** Cases tried (kills, mutated inputs, faults, flaps). */
  cases: number;
  /** Broken invariants, each one line naming the case and the seed. Empty means the suite passed. */
  violations: string[];
  /** Facts worth printing (counts by outcome, calibrated windows, request totals). */
  notes: string[];
  durationMs: number;
  /** Numbers for the JSON report and the CI assertions. */
  stats: Record<string, number>;
}

export type Mode = 'short' | 'long';

export interface SuiteOptions {
  mode: Mode;
  seed: number;
  log: (line: string) => void;
}

/** Collects violations, capped so that a systematic failure does not print ten thousand lines. */
export class Violations {
  readonly list: string[] = [];
  private dropped = 0;

  constructor(private readonly limit = 50) {}

  add(line: string): void {
    if (this.list.length < this.limit) this.list.push(line);
    else this.dropped++;
  }

  get count(): number {
    return this.list.length + this.dropped;
  }

  /** The list, with one closing line saying how many more were not kept. */
  final(): string[] {
    return this.dropped === 0 ? this.list : [...this.list, `... and ${this.dropped} more`];
  }
}
