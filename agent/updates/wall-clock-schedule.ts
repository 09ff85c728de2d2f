import { createTask, type ScheduledTask } from 'node-cron';
import type { Logger } from '../logging/logger.js';
import { realTimers, type TimerFunctions } from './timers.js';

/*
 * The optional wall-clock schedule (`updates.cron`), guarded against clock steps.
 *
 * node-cron's own runner replays every slot a forward step skipped (a minute schedule and a
 * one-year step: half a million "missed execution" warnings) and, after a backward step, waits for
 * the slot it expected, which is now in the future (a one-year stall). So node-cron is used only to
 * parse and match the expression; the stepping is ours: a monotonic timer wakes once a minute,
 * reads the wall clock, and looks at the minutes since the previous wake-up.
 *
 * - Normal: a minute that matches runs once.
 * - Forward step: the skipped minutes are not replayed; if any of them matched (or the step is too
 *   long to look through), there is exactly one catch-up run. One log line.
 * - Backward step: the schedule continues from the new time at once; the minute that already ran is
 *   not run again. One log line.
 * Step log lines are rate-limited, so a clock that keeps jumping cannot flood the journal.
 */

export interface WallClockScheduleOptions {
  /** 5-field cron expression, evaluated in local time. */
  expression: string;
  onDue: (info: { catchUp: boolean }) => void;
  logger: Pick<Logger, 'info' | 'warn'>;
  /** Wall clock (ms since the epoch); default Date.now. */
  wallNow?: () => number;
  /** Monotonic clock (ms); default performance.now. */
  monotonicNow?: () => number;
  timers?: TimerFunctions;
  /** A forward step longer than this is not searched for matches: it counts as having skipped a slot. */
  maxScanMinutes?: number;
  /** Differences between wall and monotonic elapsed time below this are drift, not steps. */
  stepToleranceMs?: number;
  /** At most one step log line per this long. */
  stepLogIntervalMs?: number;
}

const MINUTE = 60_000;

export class WallClockSchedule {
  private readonly options: WallClockScheduleOptions;
  private readonly wallNow: () => number;
  private readonly monotonicNow: () => number;
  private readonly timers: TimerFunctions;
  private readonly maxScanMinutes: number;
  private readonly stepToleranceMs: number;
  private readonly stepLogIntervalMs: number;
  private matcher: ScheduledTask | undefined;
  private handle: unknown;
  private lastWall = 0;
  private lastMonotonic = 0;
  private lastMinute = 0;
  private lastRunMinute: number | undefined;
  private lastStepLog: number | undefined;
  private suppressedSteps = 0;

  constructor(options: WallClockScheduleOptions) {
    this.options = options;
    this.wallNow = options.wallNow ?? Date.now;
    this.monotonicNow = options.monotonicNow ?? (() => performance.now());
    this.timers = options.timers ?? realTimers;
    this.maxScanMinutes = options.maxScanMinutes ?? 7 * 24 * 60;
    this.stepToleranceMs = options.stepToleranceMs ?? 5_000;
    this.stepLogIntervalMs = options.stepLogIntervalMs ?? 3_600_000;
  }

  start(): void {
    if (this.matcher) return;
    // A task that is never started: only its parser and matcher are used (destroyed on stop).
    this.matcher = createTask(this.options.expression, () => undefined);
    this.lastWall = this.wallNow();
    this.lastMonotonic = this.monotonicNow();
    this.lastMinute = Math.floor(this.lastWall / MINUTE);
    this.arm();
  }

  stop(): void {
    if (this.handle !== undefined) this.timers.clearTimeout(this.handle);
    this.handle = undefined;
    const matcher = this.matcher;
    this.matcher = undefined;
    try {
      void Promise.resolve(matcher?.destroy()).catch(() => undefined);
    } catch {
      /* never throw halfway through a stop */
    }
  }

  /** Wakes just after the next minute boundary (by the wall clock as it reads now), at most a minute away. */
  private arm(): void {
    const untilNextMinute = MINUTE - (this.wallNow() % MINUTE) + 500;
    this.handle = this.timers.setTimeout(() => {
      this.handle = undefined;
      if (!this.matcher) return;
      this.tick();
      if (this.matcher) this.arm();
    }, Math.min(Math.max(untilNextMinute, 1_000), MINUTE + 500));
  }

  private tick(): void {
    const matcher = this.matcher as ScheduledTask;
    const wall = this.wallNow();
    const monotonic = this.monotonicNow();
    const step = wall - (this.lastWall + (monotonic - this.lastMonotonic));
    const minute = Math.floor(wall / MINUTE);
    let from = this.lastMinute + 1;
    let catchUp = false;

    if (minute < this.lastMinute) {
      this.logStep('back', -step, 'the schedule continues from the new time');
      from = minute;
    } else if (step > this.stepToleranceMs) {
      catchUp = true;
    }

    let due: number | undefined;
    if (minute - from + 1 > this.maxScanMinutes) {
      due = matcher.match(new Date(minute * MINUTE)) ? minute : minute - 1; // too long to look through: a slot was surely skipped
    } else {
      for (let m = minute; m >= from; m--) {
        if (m !== this.lastRunMinute && matcher.match(new Date(m * MINUTE))) {
          due = m;
          break;
        }
      }
    }
    if (catchUp) this.logStep('forward', step, due !== undefined ? 'skipped slots are not replayed; one catch-up check' : 'no slot was skipped');

    this.lastWall = wall;
    this.lastMonotonic = monotonic;
    this.lastMinute = minute;
    if (due !== undefined) {
      this.lastRunMinute = due;
      this.options.onDue({ catchUp: catchUp && due < minute });
    }
  }

  private logStep(direction: 'forward' | 'back', stepMs: number, outcome: string): void {
    const now = this.monotonicNow();
    if (this.lastStepLog !== undefined && now - this.lastStepLog < this.stepLogIntervalMs) {
      this.suppressedSteps++;
      return;
    }
    this.lastStepLog = now;
    const suppressed = this.suppressedSteps;
    this.suppressedSteps = 0;
    this.options.logger.warn(
      { stepMs: Math.round(stepMs), direction, expression: this.options.expression, ...(suppressed > 0 ? { suppressedSteps: suppressed } : {}) },
      `wall clock stepped ${direction} by ${describeDuration(stepMs)}; ${outcome}`,
    );
  }
}

function describeDuration(ms: number): string {
  const seconds = Math.round(Math.abs(ms) / 1000);
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7_200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172_800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86_400)} days`;
}
