import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { AgentError } from '../errors/agent-error.js';
import type { Logger } from '../logging/logger.js';
import type { ChangeKind } from './apply-plan.js';

/*
 * The operator's `updates.onApply` command, run after every applied configuration change so that
 * other services on the device can reload. An argv array (no shell); its environment carries the
 * paths of the written files, never their contents, and none of the agent's own settings or
 * systemd plumbing. Its output is logged line by line, truncated. One run at a time: changes that
 * arrive while it runs are merged into a single next run for the newest generation.
 */

export interface AppliedChange {
  generation: number;
  paths: { content?: string; clientCert?: string; clientKey?: string; caCert?: string };
  changes: ChangeKind[];
}

export type SpawnFunction = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

export interface OnApplyRunnerOptions {
  /** argv: program and arguments. */
  command: readonly string[];
  timeoutMs: number;
  logger: Logger;
  /** The environment the command starts from (default process.env, filtered). */
  baseEnv?: NodeJS.ProcessEnv;
  spawn?: SpawnFunction;
  /** After SIGTERM at the timeout (or on stop), SIGKILL follows this much later. */
  killGraceMs?: number;
  /** Per stream; further lines are counted, not logged. */
  maxLogLines?: number;
  maxLineLength?: number;
}

export type OnApplyOutcome = 'ok' | 'failed' | 'timeout' | 'spawn-failed' | 'stopped';

export interface OnApplyResult {
  outcome: OnApplyOutcome;
  generation: number;
  exitCode?: number | null;
  signal?: NodeJS.Signals | null;
  durationMs: number;
}

/**
 * Variables that must not reach the command: the agent's own settings (one of them was the
 * encryption key), systemd's notification and watchdog plumbing (a child must not speak for the
 * agent), socket activation and the credentials directory.
 */
function inheritable(name: string): boolean {
  return !(
    name.startsWith('MG_AGENT_') ||
    name.startsWith('NOTIFY_') ||
    name.startsWith('WATCHDOG_') ||
    name.startsWith('LISTEN_') ||
    name === 'CREDENTIALS_DIRECTORY'
  );
}

/** The command's environment: the filtered base plus MG_AGENT_* paths of the applied generation. */
export function onApplyEnvironment(base: NodeJS.ProcessEnv, change: AppliedChange): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(base)) {
    if (value !== undefined && inheritable(name)) env[name] = value;
  }
  const paths: [string, string | undefined][] = [
    ['MG_AGENT_CONTENT_FILE', change.paths.content],
    ['MG_AGENT_CLIENT_CERT_FILE', change.paths.clientCert],
    ['MG_AGENT_CLIENT_KEY_FILE', change.paths.clientKey],
    ['MG_AGENT_CA_CERT_FILE', change.paths.caCert],
  ];
  for (const [name, path] of paths) {
    if (path !== undefined) env[name] = path;
  }
  env['MG_AGENT_GENERATION'] = String(change.generation);
  env['MG_AGENT_CHANGE'] = change.changes.join(',');
  return env;
}

function mergeChanges(older: AppliedChange, newer: AppliedChange): AppliedChange {
  // The newer generation's files are what is on disk now; the command learns everything that changed since it last ran.
  const changes = [...new Set([...older.changes, ...newer.changes])];
  return { ...newer, changes };
}

interface Running {
  child: ChildProcess;
  done: Promise<void>;
  kill(): void;
}

export class OnApplyRunner {
  private readonly options: Required<Omit<OnApplyRunnerOptions, 'baseEnv' | 'spawn'>> & { baseEnv: NodeJS.ProcessEnv; spawn: SpawnFunction };
  private readonly log: Logger;
  private queued: { change: AppliedChange; waiters: ((r: OnApplyResult) => void)[] } | undefined;
  private running: Running | undefined;
  private draining = false;
  private stopped = false;

  constructor(options: OnApplyRunnerOptions) {
    if (options.command.length === 0 || options.command[0] === '') throw new AgentError('CONFIG_INVALID', 'updates.onApply must name a program');
    this.options = {
      command: options.command,
      timeoutMs: options.timeoutMs,
      logger: options.logger,
      baseEnv: options.baseEnv ?? process.env,
      spawn: options.spawn ?? (nodeSpawn as SpawnFunction),
      killGraceMs: options.killGraceMs ?? 2_000,
      maxLogLines: options.maxLogLines ?? 40,
      maxLineLength: options.maxLineLength ?? 300,
    };
    this.log = options.logger.child({ component: 'onApply' });
  }

  /** Runs the command for this change (after the one running now, merged with others waiting). Never rejects. */
  run(change: AppliedChange): Promise<OnApplyResult> {
    if (this.stopped) return Promise.resolve({ outcome: 'stopped', generation: change.generation, durationMs: 0 });
    return new Promise((resolve) => {
      if (this.queued) {
        this.queued = { change: mergeChanges(this.queued.change, change), waiters: [...this.queued.waiters, resolve] };
      } else {
        this.queued = { change, waiters: [resolve] };
      }
      void this.drain();
    });
  }

  /** Stops a running command (SIGTERM, then SIGKILL) and drops waiting ones. Never throws. */
  async stop(): Promise<void> {
    this.stopped = true;
    const queued = this.queued;
    this.queued = undefined;
    for (const resolve of queued?.waiters ?? []) resolve({ outcome: 'stopped', generation: queued?.change.generation ?? 0, durationMs: 0 });
    const running = this.running;
    if (running) {
      running.kill();
      await running.done;
    }
  }

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.queued && !this.stopped) {
        const { change, waiters } = this.queued;
        this.queued = undefined;
        const result = await this.execute(change);
        for (const resolve of waiters) resolve(result);
      }
    } finally {
      this.draining = false;
    }
  }

  private execute(change: AppliedChange): Promise<OnApplyResult> {
    const { command, timeoutMs, killGraceMs } = this.options;
    const [program, ...args] = command as [string, ...string[]];
    const started = performance.now();
    const fields = { generation: change.generation, change: change.changes.join(','), program };
    this.log.info(fields, `running onApply for generation ${change.generation} (${change.changes.join(', ')})`);

    return new Promise<OnApplyResult>((resolve) => {
      let child: ChildProcess;
      try {
        // Its own process group, so that a timeout also ends whatever the command started.
        child = this.options.spawn(program, args, {
          env: onApplyEnvironment(this.options.baseEnv, change),
          stdio: ['ignore', 'pipe', 'pipe'],
          detached: true,
        });
      } catch (error) {
        this.spawnFailed(fields, error);
        resolve({ outcome: 'spawn-failed', generation: change.generation, durationMs: 0 });
        return;
      }

      let timedOut = false;
      let stoppedByUs = false;
      let killTimer: NodeJS.Timeout | undefined;
      const signalGroup = (signal: NodeJS.Signals): void => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, signal);
        } catch {
          child.kill(signal); // the group is gone already, or was never made
        }
      };
      const terminate = (): void => {
        signalGroup('SIGTERM');
        killTimer ??= setTimeout(() => signalGroup('SIGKILL'), killGraceMs);
      };
      const deadline = setTimeout(() => {
        timedOut = true;
        terminate();
      }, timeoutMs);

      const stdout = this.lineLogger('stdout', fields);
      const stderr = this.lineLogger('stderr', fields);
      child.stdout?.setEncoding('utf8').on('data', stdout.push);
      child.stderr?.setEncoding('utf8').on('data', stderr.push);

      let settled = false;
      const done = new Promise<void>((markDone) => {
        const finish = (result: Omit<OnApplyResult, 'generation' | 'durationMs'>): void => {
          if (settled) return;
          settled = true;
          clearTimeout(deadline);
          if (killTimer !== undefined) clearTimeout(killTimer);
          stdout.end();
          stderr.end();
          this.running = undefined;
          const durationMs = Math.round(performance.now() - started);
          this.report(fields, result, timeoutMs, durationMs);
          resolve({ ...result, generation: change.generation, durationMs });
          markDone();
        };
        child.once('error', (error: NodeJS.ErrnoException) => {
          this.spawnFailed(fields, error);
          finish({ outcome: 'spawn-failed' });
        });
        child.once('close', (exitCode, signal) => {
          const outcome: OnApplyOutcome = stoppedByUs ? 'stopped' : timedOut ? 'timeout' : exitCode === 0 ? 'ok' : 'failed';
          finish({ outcome, exitCode, signal });
        });
      });
      this.running = {
        child,
        done,
        kill: () => {
          stoppedByUs = true;
          terminate();
        },
      };
    });
  }

  private spawnFailed(fields: Record<string, unknown>, error: unknown): void {
    const errno = (error as NodeJS.ErrnoException | undefined)?.code;
    this.log.warn({ ...fields, code: 'ON_APPLY_FAILED', errno }, `onApply could not be started (${errno ?? 'unknown error'})`);
  }

  private report(fields: Record<string, unknown>, result: Omit<OnApplyResult, 'generation' | 'durationMs'>, timeoutMs: number, durationMs: number): void {
    const facts = { ...fields, exitCode: result.exitCode, signal: result.signal, durationMs };
    switch (result.outcome) {
      case 'ok':
        this.log.info(facts, 'onApply finished');
        break;
      case 'timeout':
        this.log.warn({ ...facts, code: 'ON_APPLY_FAILED', timeoutMs }, `onApply did not finish within ${timeoutMs} ms and was stopped`);
        break;
      case 'failed':
        this.log.warn({ ...facts, code: 'ON_APPLY_FAILED' }, `onApply failed (${result.signal ? `signal ${result.signal}` : `exit code ${result.exitCode}`}); the configuration stays applied`);
        break;
      case 'stopped':
        this.log.info(facts, 'onApply stopped: the agent is stopping');
        break;
      default:
        break;
    }
  }

  /** Splits a stream into lines and logs each (truncated), up to maxLogLines; then counts the rest. */
  private lineLogger(stream: 'stdout' | 'stderr', fields: Record<string, unknown>): { push: (chunk: string) => void; end: () => void } {
    const { maxLogLines, maxLineLength } = this.options;
    let partial = '';
    let logged = 0;
    let dropped = 0;
    const emit = (line: string): void => {
      if (line === '') return;
      if (logged >= maxLogLines) {
        dropped++;
        return;
      }
      logged++;
      const text = line.length > maxLineLength ? `${line.slice(0, maxLineLength)}… (${line.length} chars)` : line;
      this.log.info({ generation: fields['generation'], stream }, `onApply ${stream}: ${text}`);
    };
    return {
      push: (chunk) => {
        partial += chunk;
        let newline: number;
        while ((newline = partial.indexOf('\n')) !== -1) {
          emit(partial.slice(0, newline).replace(/\r$/, ''));
          partial = partial.slice(newline + 1);
        }
        // A command that never prints a newline must not grow memory.
        if (partial.length > maxLineLength * 4) {
          emit(partial);
          partial = '';
        }
      },
      end: () => {
        emit(partial);
        partial = '';
        if (dropped > 0) this.log.info({ generation: fields['generation'], stream, dropped }, `onApply ${stream}: ${dropped} more line(s) not logged`);
      },
    };
  }
}
