/**
 * The timer functions the schedules use, injectable so that tests can drive time by hand. Node's
 * timers run on the monotonic clock: a wall-clock step neither fires them early nor holds them back.
 */
export interface TimerFunctions {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: TimerFunctions = {
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};
