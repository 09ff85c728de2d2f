import type { AgentProcess, LogLine } from '../agent-process.js';

/**
 * The agent's log lines the benchmark, torture and fleet tools wait for, named once so that a change
 * of wording in the agent is fixed in one place.
 */

/** "online: subscribed to <n> of <n> channels": connected and every channel granted. */
export function isFullyOnline(line: LogLine, channels?: number): boolean {
  const match = /^online: subscribed to (\d+) of (\d+)/.exec(String(line.msg));
  if (!match) return false;
  return match[1] === match[2] && (channels === undefined || Number(match[1]) === channels);
}

/** Any "online: subscribed ..." line, granted or not. */
export function isOnline(line: LogLine): boolean {
  return String(line.msg).startsWith('online: subscribed');
}

/** A failure the agent logged with a stable code (one warn/error line per problem). */
export function isCodedProblem(line: LogLine): boolean {
  return typeof line['code'] === 'string' && (line.level === 'warn' || line.level === 'error' || line.level === 'fatal');
}

/**
 * Resolves when the agent has logged `count` lines matching `predicate` in total (already seen ones
 * included); rejects after `timeoutMs` or when the process exits first.
 */
export function waitForCount(agent: AgentProcess, predicate: (line: LogLine) => boolean, count: number, timeoutMs: number, what: string): Promise<void> {
  let matched = countLines(agent, predicate);
  if (matched >= count) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const stdout = agent.child.stdout;
    let checked = agent.lines.length;
    const cleanup = () => {
      clearTimeout(timer);
      stdout?.off('data', onData);
      agent.child.off('exit', onExit);
    };
    const onData = () => {
      // AgentProcess registered its own listener first, so the chunk's lines are already parsed.
      for (; checked < agent.lines.length; checked++) if (predicate(agent.lines[checked] as LogLine)) matched++;
      if (matched >= count) {
        cleanup();
        resolve();
      }
    };
    const onExit = () => {
      cleanup();
      reject(new Error(`agent exited before ${what}; last output:\n${agent.output.slice(-1500)}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${matched}/${count}); last lines:\n${agent.lines.slice(-6).map((l) => JSON.stringify(l)).join('\n')}`));
    }, timeoutMs);
    stdout?.on('data', onData);
    agent.child.once('exit', onExit);
  });
}

/** Number of lines matching `predicate` so far. */
export function countLines(agent: AgentProcess, predicate: (line: LogLine) => boolean): number {
  return agent.lines.reduce((n, line) => (predicate(line) ? n + 1 : n), 0);
}
