import type { TimerFunctions } from '../../agent/updates/timers.js';

/**
 * A monotonic clock and a wall clock driven by hand, with timers on the monotonic one (as Node's
 * are). `stepWall` moves only the wall clock, the way NTP or `date -s` does on a board without RTC.
 */
export class ManualClock implements TimerFunctions {
  monotonic = 0;
  wall: number;
  private timers: { at: number; callback: () => void; id: number }[] = [];
  private nextId = 1;

  constructor(wallStart: number) {
    this.wall = wallStart;
  }

  readonly wallNow = (): number => this.wall;
  readonly monotonicNow = (): number => this.monotonic;

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.monotonic + Math.max(0, ms), callback, id });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((t) => t.id !== handle);
  }

  get pendingTimers(): number {
    return this.timers.length;
  }

  /** Lets time pass on both clocks, firing due timers in order. */
  advance(ms: number): void {
    const end = this.monotonic + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.timers[0];
      if (!next || next.at > end) break;
      this.timers.shift();
      this.wall += next.at - this.monotonic;
      this.monotonic = next.at;
      next.callback();
    }
    this.wall += end - this.monotonic;
    this.monotonic = end;
  }

  stepWall(ms: number): void {
    this.wall += ms;
  }
}
