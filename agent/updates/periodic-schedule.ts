import { realTimers, type TimerFunctions } from './timers.js';

/*
 * The periodic configuration check: every intervalMs ± jitter, on monotonic timers. A device
 * without a real-time clock can have its wall clock stepped by a year when NTP syncs; this schedule
 * does not notice, because nothing in it reads the wall clock. Each interval is drawn afresh, so a
 * fleet started together drifts apart instead of checking in lockstep.
 */

export const DEFAULT_JITTER_FRACTION = 0.15;

/** intervalMs scaled by a uniform factor in [1 − fraction, 1 + fraction]. */
export function jitteredInterval(intervalMs: number, fraction: number, random: () => number): number {
  return Math.max(1, Math.round(intervalMs * (1 + (random() * 2 - 1) * fraction)));
}

export interface PeriodicScheduleOptions {
  intervalMs: number;
  jitterFraction?: number;
  random?: () => number;
  /** Called when a check is due; must not throw (it only asks for a check). */
  onDue: () => void;
  timers?: TimerFunctions;
}

export class PeriodicSchedule {
  private readonly options: PeriodicScheduleOptions;
  private readonly timers: TimerFunctions;
  private handle: unknown;
  private running = false;

  constructor(options: PeriodicScheduleOptions) {
    this.options = options;
    this.timers = options.timers ?? realTimers;
  }

  start(): void {
    if (this.running || this.options.intervalMs <= 0) return;
    this.running = true;
    this.arm();
  }

  stop(): void {
    this.running = false;
    if (this.handle !== undefined) this.timers.clearTimeout(this.handle);
    this.handle = undefined;
  }

  private arm(): void {
    const { intervalMs, jitterFraction = DEFAULT_JITTER_FRACTION, random = Math.random } = this.options;
    this.handle = this.timers.setTimeout(() => {
      this.handle = undefined;
      if (!this.running) return;
      this.arm(); // re-armed first: a slow check never delays the next slot
      this.options.onDue();
    }, jitteredInterval(intervalMs, jitterFraction, random));
  }
}
