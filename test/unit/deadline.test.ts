import { getEventListeners } from 'node:events';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startDeadline } from '../../agent/bootstrap/deadline.js';

describe('startDeadline', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('aborts with the expiry reason once the time is up, and not before', () => {
    vi.useFakeTimers();
    const deadline = startDeadline(undefined, 1_000, () => new Error('too late'));
    vi.advanceTimersByTime(999);
    expect(deadline.signal.aborted).toBe(false);
    vi.advanceTimersByTime(1);
    expect((deadline.signal.reason as Error).message).toBe('too late');
    deadline.dispose();
  });

  it("aborts with the parent's reason when the parent aborts, at once if it already has", () => {
    const parent = new AbortController();
    const deadline = startDeadline(parent.signal, 60_000, () => new Error('too late'));
    parent.abort(new Error('stopping'));
    expect((deadline.signal.reason as Error).message).toBe('stopping');
    deadline.dispose();

    const late = startDeadline(parent.signal, 60_000, () => new Error('too late'));
    expect((late.signal.reason as Error).message).toBe('stopping');
    late.dispose();
  });

  it('leaves nothing behind on a parent that lives for years: no listener, no timer', () => {
    vi.useFakeTimers();
    const parent = new AbortController();
    for (let i = 0; i < 10_000; i++) startDeadline(parent.signal, 60_000, () => new Error('too late')).dispose();
    expect(getEventListeners(parent.signal, 'abort')).toHaveLength(0);
    expect(vi.getTimerCount()).toBe(0);
    // AbortSignal.any() would keep 10,000 dependants on the parent here (nodejs/node#55351).
  });
});
