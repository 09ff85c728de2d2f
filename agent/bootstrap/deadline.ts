/**
 * A signal that aborts when `parent` does (with the parent's reason) or once `ms` have passed (with
 * `expired()`'s reason), until dispose(). Not AbortSignal.any(): on Node 20 and 22 each call leaves
 * an entry in a long-lived parent's set of dependants for good (nodejs/node#55351), and the
 * agent's stop signal lives as long as the device runs.
 */
export interface Deadline {
  readonly signal: AbortSignal;
  /** Clears the timer and unhooks from the parent; call it when the work is done, whatever happened. */
  dispose(): void;
}

export function startDeadline(parent: AbortSignal | undefined, ms: number, expired: () => unknown): Deadline {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(expired()), ms);
  const onParentAbort = (): void => controller.abort(parent?.reason);
  if (parent?.aborted) onParentAbort();
  else parent?.addEventListener('abort', onParentAbort, { once: true });
  return {
    signal: controller.signal,
    dispose() {
      clearTimeout(timer);
      parent?.removeEventListener('abort', onParentAbort);
    },
  };
}
