import { AgentError } from '../../agent/errors/agent-error.js';

/** The AgentError that `run` throws, for assertions on its code and details; anything else thrown is rethrown. */
export function thrownAgentError(run: () => unknown): AgentError {
  try {
    run();
  } catch (error) {
    if (error instanceof AgentError) return error;
    throw error;
  }
  throw new Error('expected an AgentError, nothing was thrown');
}

/** The AgentError that the promise (or the one `run` returns) rejects with; any other rejection is rethrown. */
export async function rejectedAgentError(work: Promise<unknown> | (() => Promise<unknown>)): Promise<AgentError> {
  try {
    await (typeof work === 'function' ? work() : work);
  } catch (error) {
    if (error instanceof AgentError) return error;
    throw error;
  }
  throw new Error('expected a rejection with an AgentError, it resolved');
}
