import { createHash, timingSafeEqual } from 'node:crypto';
import type { DeviceChannel } from '../bootstrap/model.js';

/*
 * The small pure decisions of remote control: which channel is the control channel, whether a
 * request carries the command secret, whether it is within the rate limit.
 */

const CONTROL_NAMES = new Set(['control', 'commands']);

/**
 * The configured channel (by ID, then by name); without configuration the first channel whose name
 * or metadata `type` is "control" or "commands". undefined: remote control is off for this config.
 */
export function pickControlChannel(channels: readonly DeviceChannel[], configured?: string): DeviceChannel | undefined {
  if (configured !== undefined) return channels.find((c) => c.id === configured) ?? channels.find((c) => c.name === configured);
  const named = (value: unknown) => typeof value === 'string' && CONTROL_NAMES.has(value.toLowerCase());
  return channels.find((c) => named(c.name)) ?? channels.find((c) => named(c.metadata?.['type']));
}

/**
 * Constant-time comparison of the presented token with the secret. Both are hashed first, so the
 * comparison is always between two 32-byte digests and neither the length nor a prefix of the
 * secret leaks through timing.
 */
export function tokenMatches(secret: Buffer, presented: string | undefined): boolean {
  const expected = createHash('sha256').update(secret).digest();
  const actual = createHash('sha256').update(presented ?? '', 'utf8').digest();
  // A missing token still costs the same work as a wrong one.
  return timingSafeEqual(expected, actual) && presented !== undefined;
}

/** At most `limit` events in any sliding minute. */
export class RateWindow {
  private readonly times: number[] = [];

  constructor(
    private readonly limit: number,
    private readonly windowMs = 60_000,
  ) {}

  /** Records an event at `now` and says whether it is within the limit (refused events are not recorded). */
  tryAcquire(now: number): boolean {
    while (this.times.length > 0 && now - (this.times[0] as number) >= this.windowMs) this.times.shift();
    if (this.times.length >= this.limit) return false;
    this.times.push(now);
    return true;
  }
}
