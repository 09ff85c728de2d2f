/**
 * Bounds how often an action may run in a sliding window. Re-bootstrap on an auth failure goes
 * through one, so a broker that refuses everyone cannot turn a fleet into a bootstrap storm.
 */
export class SlidingWindowBreaker {
  private readonly times: number[] = [];

  constructor(
    private readonly maxPerWindow: number,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records an attempt and returns true when it is allowed; false when the window is full. */
  tryAcquire(): boolean {
    const t = this.now();
    while (this.times.length > 0 && t - (this.times[0] as number) >= this.windowMs) this.times.shift();
    if (this.times.length >= this.maxPerWindow) return false;
    this.times.push(t);
    return true;
  }

  /** Milliseconds until the next attempt would be allowed (0 when allowed now). */
  msUntilOpen(): number {
    const t = this.now();
    const live = this.times.filter((x) => t - x < this.windowMs);
    if (live.length < this.maxPerWindow) return 0;
    return this.windowMs - (t - (live[0] as number));
  }
}
