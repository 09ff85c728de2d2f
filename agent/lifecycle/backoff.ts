import type { FailureClass } from './failure-policy.js';

export interface BackoffPolicy {
  initialDelayMs: number;
  maxDelayMs: number;
}

/**
 * Exponential backoff with full jitter: a uniformly random delay in [0, min(cap, base·2^attempt)].
 * Full jitter spreads a fleet that failed together (power cut, server restart) evenly over the
 * window instead of letting it return in synchronised waves.
 */
export function backoffDelay(policy: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const exp = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * exp);
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
      return { initialDelayMs: retry.initialDelayMs * 15, maxDelayMs: retry.permanentMaxDelayMs };
    case 'invalid':
      return { initialDelayMs: retry.initialDelayMs * 5, maxDelayMs: retry.permanentMaxDelayMs };
    default:
      return { initialDelayMs: retry.initialDelayMs, maxDelayMs: retry.maxDelayMs };
  }
}

/** A server's Retry-After is honoured as a floor, never shortened by jitter. */
export function withRetryAfter(delayMs: number, retryAfterMs: number | undefined, capMs: number): number {
  if (retryAfterMs === undefined) return delayMs;
  return Math.max(delayMs, Math.min(retryAfterMs, capMs));
}
