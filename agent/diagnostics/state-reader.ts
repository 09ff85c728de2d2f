import { readFile } from 'node:fs/promises';
import type { DestinationStream } from 'pino';
import { nodeFs, type Fs } from '../storage/atomic-write.js';
import { GenerationStore, type Generation } from '../storage/generation-store.js';
import { createLogger, type Logger } from '../logging/logger.js';
import { StatusFileSchema, statusFilePath, type StatusFile } from '../lifecycle/status-file.js';

/*
 * Reading the state directory for `status`, `doctor` and `bootstrap --dry-run` without changing a
 * byte of it. The generation store repairs what it finds damaged (moves it aside, re-points
 * `current`); here every write is refused, so it reports instead, and its warnings are collected.
 */

function refuse(): Promise<never> {
  return Promise.reject(Object.assign(new Error('read-only inspection'), { code: 'EROFS' }));
}

/** node:fs/promises with every write refused (EROFS): what the store reads is real, nothing is changed. */
export const readOnlyFs: Fs = {
  ...nodeFs,
  open: (path, flags, mode) => (flags === 'r' ? nodeFs.open(path, flags, mode) : refuse()),
  rename: refuse,
  unlink: refuse,
  rm: refuse,
  mkdir: refuse,
  chmod: refuse,
  symlink: refuse,
};

/** A logger whose warnings are kept (messages only) instead of printed. */
export function collectingLogger(into: string[]): Logger {
  const destination: DestinationStream = {
    write(line: string) {
      try {
        const entry = JSON.parse(line) as { msg?: string };
        if (entry.msg) into.push(entry.msg);
      } catch {
        /* not a log line */
      }
    },
  };
  return createLogger({ level: 'warn', destination });
}

export interface CurrentGenerationReport {
  generation: Generation | undefined;
  /** What the store found wrong on the way (a damaged generation it would have set aside). */
  warnings: string[];
}

export async function readCurrentGeneration(stateDir: string, keepGenerations: number): Promise<CurrentGenerationReport> {
  const warnings: string[] = [];
  const store = new GenerationStore({ dir: stateDir, keepGenerations, logger: collectingLogger(warnings), fs: readOnlyFs });
  const generation = await store.loadCurrent();
  return { generation, warnings };
}

export type StatusFileRead = { status: StatusFile } | { missing: true } | { problem: string };

export async function readStatusFile(stateDir: string): Promise<StatusFileRead> {
  let text: string;
  try {
    text = await readFile(statusFilePath(stateDir), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { missing: true };
    return { problem: `cannot read ${statusFilePath(stateDir)} (${code ?? 'error'})` };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { problem: `${statusFilePath(stateDir)} is not valid JSON (${text.length} bytes)` };
  }
  const parsed = StatusFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { problem: `${statusFilePath(stateDir)} does not match the expected shape (${issue ? `${issue.path.join('.') || '(root)'}: ${issue.code}` : 'invalid'})` };
  }
  return { status: parsed.data };
}

export type ProcessState = 'running' | 'gone';

/**
 * Whether the agent that wrote the status file still runs. The file outlives reboots, so a live pid
 * must also look like the agent (its command line names our entry point and `run`); a process of
 * another user still counts (EPERM means it exists).
 */
export async function agentProcessState(pid: number, readCmdline = (p: number) => readFile(`/proc/${p}/cmdline`, 'utf8')): Promise<ProcessState> {
  if (pid === process.pid) return 'running';
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return 'gone';
  }
  let cmdline: string;
  try {
    cmdline = await readCmdline(pid);
  } catch {
    return 'running'; // no /proc to ask: trust the pid
  }
  const args = cmdline.split('\0');
  const isAgent = args.some((a) => a.endsWith('cli/main.js') || a.endsWith('mg-device-agent')) && args.includes('run');
  return isAgent ? 'running' : 'gone';
}

/**
 * The pid of another agent running on this state directory, if one is: two would race over its files
 * and take turns throwing each other off the broker (one client ID). A status file that says the
 * agent stopped, or whose pid is gone or no longer the agent, means none.
 */
export async function runningAgentPid(stateDir: string): Promise<number | undefined> {
  const recorded = await readStatusFile(stateDir);
  if (!('status' in recorded) || recorded.status.state === 'stopped' || recorded.status.pid === process.pid) return undefined;
  return (await agentProcessState(recorded.status.pid)) === 'running' ? recorded.status.pid : undefined;
}
