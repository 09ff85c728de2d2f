import type { FailureClass } from './failure-policy.js';

export interface BackoffPolicy {
  initialDelayMs: number;
  maxDelayMs: number;
  /**
   * Fraction of the window that is always waited (0 = full jitter). Failures only an operator can
   * fix use one half ("equal jitter"), so a retry is never a few milliseconds after a 403.
   */
  floorRatio?: number;
}

/**
 * Exponential backoff with jitter: a uniformly random delay in [floor, ceiling], ceiling =
 * min(cap, base·2^attempt), floor = ceiling·floorRatio (0 by default: full jitter). Full jitter
 * spreads a fleet that failed together (power cut, server restart) evenly over the window instead of
 * letting it return in synchronised waves.
 */
export function backoffDelay(policy: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const ceiling = backoffCeiling(policy, attempt);
  const floor = ceiling * (policy.floorRatio ?? 0);
  return Math.floor(floor + random() * (ceiling - floor));
}

/** Upper bound of the jitter window for an attempt (for logs and tests). */
export function backoffCeiling(policy: BackoffPolicy, attempt: number): number {
  return Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.min(Math.max(attempt, 0), 30));
}

export interface RetrySettings {
  initialDelayMs: number;
  maxDelayMs: number;
  permanentMaxDelayMs: number;
}

/** Per-class policy: failures only an operator can fix are retried slowly, up to an hour by default. */
export function policyFor(failure: FailureClass, retry: RetrySettings): BackoffPolicy {
  switch (failure) {
    case 'operator':
      return { initialDelayMs: retry.initialDelayMs * 15, maxDelayMs: retry.permanentMaxDelayMs, floorRatio: 0.5 };
    case 'invalid':
      return { initialDelayMs: retry.initialDelayMs * 5, maxDelayMs: retry.permanentMaxDelayMs, floorRatio: 0.5 };
    default:
      return { initialDelayMs: retry.initialDelayMs, maxDelayMs: retry.maxDelayMs };
  }
}

/** A server's Retry-After is honoured as a floor, never shortened by jitter. */
export function withRetryAfter(delayMs: number, retryAfterMs: number | undefined, capMs: number): number {
  if (retryAfterMs === undefined) return delayMs;
  return Math.max(delayMs, Math.min(retryAfterMs, capMs));
}

export interface FirstAttemptDelay {
  delayMs: number;
  /** resume: the agent was failing before this start (crash loop, reboot mid-outage); jitter: a clean start. */
  kind: 'resume' | 'jitter';
}

/**
 * How long the first network attempt after a start waits. After a restart in the middle of a
 * failure streak it is the same full-jitter window the agent was in, so a crash loop under systemd
 * keeps backing off; otherwise a uniformly random delay up to bootJitterMs, so a fleet that lost
 * power together does not return in one wave.
 */
export function firstAttemptDelay(
  persisted: { failures: number; failureClass: FailureClass | undefined },
  retry: RetrySettings & { bootJitterMs: number },
  random: () => number = Math.random,
): FirstAttemptDelay {
  if (persisted.failureClass !== undefined && persisted.failures > 0) {
    return { delayMs: backoffDelay(policyFor(persisted.failureClass, retry), persisted.failures - 1, random), kind: 'resume' };
  }
  return { delayMs: Math.floor(random() * retry.bootJitterMs), kind: 'jitter' };
}
