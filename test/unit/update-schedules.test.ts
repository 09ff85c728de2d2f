import { describe, expect, it } from 'vitest';
import { PeriodicSchedule, jitteredInterval } from '../../agent/updates/periodic-schedule.js';
import { WallClockSchedule } from '../../agent/updates/wall-clock-schedule.js';
import { ManualClock } from '../helpers/manual-clock.js';

/*
 * When configuration checks are due. Time is driven by hand: a monotonic clock that the timers run
 * on, and a wall clock that can be stepped by a year the way a board without RTC sees NTP arrive.
 */

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const YEAR = 365 * DAY;

describe('periodic checks', () => {
  it('every interval ± 15 %, each interval drawn afresh', () => {
    expect(jitteredInterval(100_000, 0.15, () => 0)).toBe(85_000);
    expect(jitteredInterval(100_000, 0.15, () => 0.5)).toBe(100_000);
    expect(jitteredInterval(100_000, 0.15, () => 0.999_999)).toBe(115_000);

    const clock = new ManualClock(Date.UTC(2024, 0, 1));
    const randoms = [0, 0.75, 0.5];
    let i = 0;
    const due: number[] = [];
    const schedule = new PeriodicSchedule({ intervalMs: HOUR, random: () => randoms[i++ % 3] as number, timers: clock, onDue: () => due.push(clock.monotonic) });
    schedule.start();
    clock.advance(3.5 * HOUR);
    expect(due).toEqual([0.85 * HOUR, 0.85 * HOUR + 1.075 * HOUR, 0.85 * HOUR + 1.075 * HOUR + HOUR]);
    schedule.stop();
    clock.advance(10 * HOUR);
    expect(due).toHaveLength(3);
    expect(clock.pendingTimers).toBe(0);
  });

  it('ignores the wall clock entirely: a year forward or back changes nothing', () => {
    const clock = new ManualClock(Date.UTC(2024, 0, 1));
    const due: number[] = [];
    const schedule = new PeriodicSchedule({ intervalMs: HOUR, random: () => 0.5, timers: clock, onDue: () => due.push(clock.monotonic) });
    schedule.start();
    clock.advance(30 * MINUTE);
    clock.stepWall(YEAR);
    clock.advance(HOUR);
    clock.stepWall(-2 * YEAR);
    clock.advance(HOUR);
    expect(due).toEqual([HOUR, 2 * HOUR]);
    schedule.stop();
  });

  it('0 turns periodic checks off', () => {
    const clock = new ManualClock(0);
    const schedule = new PeriodicSchedule({ intervalMs: 0, timers: clock, onDue: () => undefined });
    schedule.start();
    expect(clock.pendingTimers).toBe(0);
  });
});

describe('wall-clock (cron) checks, guarded against clock steps', () => {
  function cron(expression: string, wallStart: number) {
    const clock = new ManualClock(wallStart);
    const runs: { wall: number; catchUp: boolean }[] = [];
    const logs: { msg: string; fields: Record<string, unknown> }[] = [];
    const logger = {
      info: (fields: object, msg?: string) => logs.push({ msg: msg ?? '', fields: fields as Record<string, unknown> }),
      warn: (fields: object, msg?: string) => logs.push({ msg: msg ?? '', fields: fields as Record<string, unknown> }),
    };
    const schedule = new WallClockSchedule({
      expression,
      logger: logger as never,
      wallNow: clock.wallNow,
      monotonicNow: clock.monotonicNow,
      timers: clock,
      onDue: ({ catchUp }) => runs.push({ wall: clock.wall, catchUp }),
    });
    schedule.start();
    return { clock, runs, logs, schedule };
  }

  // Cron expressions are local time: every date here is local time too, whatever TZ the test runs in.
  const start = new Date(2024, 2, 1, 10, 0, 30).getTime();

  it('runs each matching minute once, shortly after it starts', () => {
    const { clock, runs, schedule } = cron('7 * * * *', start);
    clock.advance(3 * HOUR);
    expect(runs.map((r) => new Date(r.wall).getMinutes())).toEqual([7, 7, 7]);
    expect(runs.every((r) => r.wall % MINUTE < 2_000 && !r.catchUp)).toBe(true);
    schedule.stop();
  });

  it('a clock stepped forward by a year: one catch-up run, one log line, then on schedule again', () => {
    const { clock, runs, logs, schedule } = cron('* * * * *', start); // every minute: the worst case
    clock.advance(5 * MINUTE);
    const before = runs.length;
    const logsBefore = logs.length;
    clock.stepWall(YEAR);
    clock.advance(MINUTE);
    expect(runs.length - before).toBe(1);
    expect(runs.at(-1)?.catchUp).toBe(false); // the current minute matches too: it is simply run
    expect(logs.length - logsBefore).toBe(1);
    expect(logs.at(-1)?.msg).toMatch(/^wall clock stepped forward by 365 days; skipped slots are not replayed; one catch-up check$/);
    clock.advance(3 * MINUTE);
    expect(runs.length - before).toBe(4);
    schedule.stop();
  });

  it('forward past a daily slot: exactly one catch-up run for everything skipped', () => {
    const { clock, runs, logs, schedule } = cron('30 3 * * *', start);
    clock.advance(MINUTE);
    clock.stepWall(YEAR); // 365 slots skipped
    clock.advance(2 * MINUTE);
    expect(runs).toEqual([{ wall: expect.any(Number), catchUp: true }]);
    expect(logs.filter((l) => l.msg.includes('stepped forward'))).toHaveLength(1);
    clock.advance(DAY);
    expect(runs).toHaveLength(2);
    expect(runs[1]?.catchUp).toBe(false);
    schedule.stop();
  });

  it('a clock stepped back by a year: no stall, the next slot of the new time runs on time', () => {
    const { clock, runs, logs, schedule } = cron('7 * * * *', start);
    clock.advance(HOUR); // ran at 10:07
    expect(runs).toHaveLength(1);
    clock.stepWall(-YEAR);
    clock.advance(HOUR); // ... and an hour later (a year earlier) at 10:07 again, not a year from now
    expect(runs).toHaveLength(2);
    expect(new Date(runs[1]?.wall as number).getFullYear()).toBe(2023);
    expect(logs.filter((l) => l.msg.startsWith('wall clock stepped back by 365 days'))).toHaveLength(1);
    schedule.stop();
  });

  it('a small step back right after a run does not run the same slot twice', () => {
    const { clock, runs, schedule } = cron('7 * * * *', new Date(2024, 2, 1, 10, 6, 0).getTime());
    clock.advance(90_000); // runs at 10:07:00.5
    expect(runs).toHaveLength(1);
    clock.stepWall(-40_000); // back into 10:06:50
    clock.advance(2 * MINUTE);
    expect(runs).toHaveLength(1);
    schedule.stop();
  });

  it('a clock that keeps jumping cannot flood the journal', () => {
    const { clock, logs, schedule } = cron('0 4 * * *', start);
    for (let i = 0; i < 200; i++) {
      clock.stepWall(i % 2 === 0 ? 3 * DAY : -2 * DAY);
      clock.advance(MINUTE);
    }
    expect(logs.length).toBeLessThanOrEqual(4); // at most one line per hour of real (monotonic) time
    schedule.stop();
  });

  it('stop() leaves no timer behind', () => {
    const { clock, schedule } = cron('* * * * *', start);
    expect(clock.pendingTimers).toBe(1);
    schedule.stop();
    expect(clock.pendingTimers).toBe(0);
  });
});
