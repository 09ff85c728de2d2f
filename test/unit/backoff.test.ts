import { describe, expect, it } from 'vitest';
import { backoffCeiling, backoffDelay, policyFor, withRetryAfter } from '../../agent/lifecycle/backoff.js';
import { classifyFailure } from '../../agent/lifecycle/failure-policy.js';
import { SlidingWindowBreaker } from '../../agent/lifecycle/circuit-breaker.js';
import { ErrorCodes } from '../../agent/errors/agent-error.js';

const retry = { initialDelayMs: 1000, maxDelayMs: 60_000, permanentMaxDelayMs: 3_600_000 };

describe('backoff', () => {
  it('doubles the jitter window per attempt up to the cap', () => {
    const p = policyFor('transient', retry);
    expect([0, 1, 2, 3, 6, 7, 20].map((a) => backoffCeiling(p, a))).toEqual([1000, 2000, 4000, 8000, 60_000, 60_000, 60_000]);
  });

  it('uses full jitter: the whole window from zero to the ceiling', () => {
    const p = policyFor('transient', retry);
    expect(backoffDelay(p, 3, () => 0)).toBe(0);
    expect(backoffDelay(p, 3, () => 0.5)).toBe(4000);
    expect(backoffDelay(p, 3, () => 0.999999)).toBe(7999);
  });

  it('spreads a fleet: 1000 devices failing together land across the window, not on one instant', () => {
    let seed = 42;
    const rng = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const delays = Array.from({ length: 1000 }, () => backoffDelay(policyFor('transient', retry), 4, rng));
    const perSecond = new Map<number, number>();
    for (const d of delays) perSecond.set(Math.floor(d / 1000), (perSecond.get(Math.floor(d / 1000)) ?? 0) + 1);
    expect(perSecond.size).toBe(16);
    expect(Math.max(...perSecond.values())).toBeLessThan(1000 / 4);
  });

  it('retries failures only an operator can fix slowly, up to an hour', () => {
    const p = policyFor('operator', retry);
    expect(p.initialDelayMs).toBeGreaterThan(policyFor('transient', retry).initialDelayMs);
    expect(backoffCeiling(p, 30)).toBe(3_600_000);
  });

  it('never retries an operator problem (403/404) right away: half the window is always waited', () => {
    const p = policyFor('operator', retry);
    expect(backoffDelay(p, 0, () => 0)).toBe(7_500);
    expect(backoffDelay(p, 0, () => 0.999999)).toBe(14_999);
    expect(backoffDelay(policyFor('invalid', retry), 1, () => 0)).toBe(5_000);
    expect(backoffDelay(policyFor('transient', retry), 1, () => 0)).toBe(0);
  });

  it('honours Retry-After as a floor, within the cap', () => {
    expect(withRetryAfter(100, 30_000, 60_000)).toBe(30_000);
    expect(withRetryAfter(45_000, 30_000, 60_000)).toBe(45_000);
    expect(withRetryAfter(100, 10_000_000, 60_000)).toBe(60_000);
    expect(withRetryAfter(100, undefined, 60_000)).toBe(100);
  });
});

describe('failure classes', () => {
  it('gives every error code a class', () => {
    for (const code of ErrorCodes) expect(['transient', 'auth', 'operator', 'invalid', 'fatal']).toContain(classifyFailure(code));
  });
  it('separates auth refusals, operator problems and transient faults', () => {
    expect(classifyFailure('MQTT_AUTH_REFUSED')).toBe('auth');
    expect(classifyFailure('MQTT_CONNECT_REFUSED')).toBe('transient');
    expect(classifyFailure('BOOTSTRAP_FORBIDDEN')).toBe('operator');
    expect(classifyFailure('BOOTSTRAP_NOT_FOUND')).toBe('operator');
    expect(classifyFailure('BOOTSTRAP_CONFIG_DISABLED')).toBe('operator');
    expect(classifyFailure('BOOTSTRAP_SERVER_ERROR')).toBe('transient');
    expect(classifyFailure('BOOTSTRAP_RATE_LIMITED')).toBe('transient');
    expect(classifyFailure('MQTT_TLS_CLOCK')).toBe('transient');
    expect(classifyFailure('CONFIG_INVALID')).toBe('fatal');
    expect(classifyFailure('BOOTSTRAP_RESPONSE_INVALID')).toBe('invalid');
  });
});

describe('re-bootstrap breaker', () => {
  it('allows a bounded number per window, then opens again as the window slides', () => {
    let now = 0;
    const b = new SlidingWindowBreaker(3, 60_000, () => now);
    expect([b.tryAcquire(), b.tryAcquire(), b.tryAcquire(), b.tryAcquire()]).toEqual([true, true, true, false]);
    expect(b.msUntilOpen()).toBe(60_000);
    now = 59_999;
    expect(b.tryAcquire()).toBe(false);
    now = 60_000;
    expect(b.tryAcquire()).toBe(true);
  });
});
