import { spawn as nodeSpawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import type { Logger } from '../logging/logger.js';

/**
 * sd_notify(3) for Node, which has no AF_UNIX datagram socket of its own and must not need a
 * compiler on a Raspberry Pi: every message is handed to the `systemd-notify` helper that ships
 * with systemd.
 *
 * The helper is a child process, so the unit needs NotifyAccess=all, and systemd can only attribute
 * a message to the unit while its sender is alive. Without --no-block, systemd-notify (v246+) sends
 * BARRIER=1 after the message and waits until PID 1 has processed both, which closes that race.
 * `--pid=<our pid>` adds MAINPID=<our pid> and, where privileged, sends the message as us.
 *
 * Messages go out one helper at a time, in order. Watchdog pings and status-only updates still
 * waiting are coalesced, so a slow helper never builds up a queue.
 */

export type SpawnFunction = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

export interface SystemdNotifierOptions {
  /** Where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are read; also the helper's environment. */
  env?: NodeJS.ProcessEnv;
  /** Injected for tests; default node:child_process spawn. */
  spawn?: SpawnFunction;
  logger: Pick<Logger, 'warn' | 'debug'>;
  /** The helper; default `systemd-notify` from PATH. */
  command?: string;
  /** The main PID systemd knows us by; default process.pid. */
  pid?: number;
  /** A helper still running after this long is killed (its barrier waits up to 5 s). */
  helperTimeoutMs?: number;
}

export interface SystemdNotifier {
  /** False when NOTIFY_SOCKET is unset: every method is then a no-op. */
  readonly enabled: boolean;
  /** Half of WATCHDOG_USEC, when systemd asked this process for watchdog pings. */
  readonly watchdogIntervalMs: number | undefined;
  ready(status?: string): void;
  status(text: string): void;
  reloading(status?: string): void;
  stopping(status?: string): void;
  /** Pings WATCHDOG=1 now and every watchdogIntervalMs while isHealthy() returns true. */
  startWatchdog(isHealthy: () => boolean): void;
  /** Stops the watchdog and ignores later calls; messages already queued still go out. */
  stop(): void;
  /** Resolves once every queued message has been handed over (or failed); never rejects. */
  flush(): Promise<void>;
}

export interface NotifyEnvironment {
  socket: string | undefined;
  watchdogIntervalMs: number | undefined;
}

const DEFAULT_HELPER_TIMEOUT_MS = 10_000;
/** STATUS= is shown in `systemctl status`; anything longer is truncated. */
const MAX_STATUS_LENGTH = 256;
/** Beyond coalescing, a bound so that a wedged helper cannot grow memory. */
const MAX_QUEUED_MESSAGES = 32;

/** Reads the variables systemd sets for a Type=notify service with WatchdogSec= (sd_watchdog_enabled(3)). */
export function parseNotifyEnvironment(env: NodeJS.ProcessEnv, pid: number): NotifyEnvironment {
  const socket = env.NOTIFY_SOCKET !== undefined && env.NOTIFY_SOCKET !== '' ? env.NOTIFY_SOCKET : undefined;
  if (socket === undefined) return { socket, watchdogIntervalMs: undefined };

  const usecText = env.WATCHDOG_USEC;
  if (usecText === undefined || !/^\d+$/.test(usecText)) return { socket, watchdogIntervalMs: undefined };
  const usec = Number(usecText);
  if (!Number.isSafeInteger(usec) || usec <= 0) return { socket, watchdogIntervalMs: undefined };

  // WATCHDOG_PID names the process the watchdog is meant for; a child that inherited it must not ping.
  const pidText = env.WATCHDOG_PID;
  if (pidText !== undefined && pidText !== '' && Number(pidText) !== pid) return { socket, watchdogIntervalMs: undefined };

  return { socket, watchdogIntervalMs: Math.max(1, Math.floor(usec / 2000)) };
}

/** One line per field, so a newline in free text must not start a new assignment (e.g. "READY=1"). */
export function sanitizeStatus(text: string): string {
  const oneLine = text.replace(/[\r\n]+/g, ' ').replace(/[\u0000-\u001f\u007f]/g, '');
  return oneLine.length > MAX_STATUS_LENGTH ? `${oneLine.slice(0, MAX_STATUS_LENGTH - 1)}…` : oneLine;
}

/** Microseconds on CLOCK_MONOTONIC, as Type=notify-reload wants with RELOADING=1 (libuv's hrtime is that clock). */
export function monotonicUsec(): string {
  return (process.hrtime.bigint() / 1000n).toString();
}

type MessageKind = 'watchdog' | 'status' | 'state';

interface QueuedMessage {
  kind: MessageKind;
  fields: string[];
}

export function createSystemdNotifier(options: SystemdNotifierOptions): SystemdNotifier {
  const env = options.env ?? process.env;
  const pid = options.pid ?? process.pid;
  const spawnHelper = options.spawn ?? (nodeSpawn as SpawnFunction);
  const command = options.command ?? 'systemd-notify';
  const helperTimeoutMs = options.helperTimeoutMs ?? DEFAULT_HELPER_TIMEOUT_MS;
  const { logger } = options;
  const { socket, watchdogIntervalMs } = parseNotifyEnvironment(env, pid);
  const enabled = socket !== undefined;

  const queue: QueuedMessage[] = [];
  let sending = false;
  let stopped = false;
  let failureLogged = false;
  let watchdogTimer: NodeJS.Timeout | undefined;
  let drainWaiters: Array<() => void> = [];

  function reportFailure(reason: string, extra: Record<string, unknown> = {}): void {
    // Once at warn: a broken helper would otherwise log on every watchdog ping for years.
    if (!failureLogged) {
      failureLogged = true;
      logger.warn({ helper: command, reason, ...extra }, 'systemd notification failed; later failures are logged at debug level');
    } else {
      logger.debug({ helper: command, reason, ...extra }, 'systemd notification failed');
    }
  }

  function enqueue(kind: MessageKind, fields: string[]): void {
    if (!enabled || stopped) return;
    if (kind !== 'state') {
      // A ping or status update still waiting says the same as a new one: keep only the newest.
      const waiting = queue.findIndex((m) => m.kind === kind);
      if (waiting !== -1) queue.splice(waiting, 1);
    }
    if (queue.length >= MAX_QUEUED_MESSAGES) {
      const droppable = queue.findIndex((m) => m.kind !== 'state');
      queue.splice(droppable === -1 ? 0 : droppable, 1);
      reportFailure('queue-full');
    }
    queue.push({ kind, fields });
    pump();
  }

  function pump(): void {
    if (sending) return;
    const next = queue.shift();
    if (next === undefined) {
      const waiters = drainWaiters;
      drainWaiters = [];
      for (const resolve of waiters) resolve();
      return;
    }
    sending = true;
    send(next.fields, () => {
      sending = false;
      pump();
    });
  }

  function send(fields: string[], done: () => void): void {
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    let stderr = '';
    const finish = (): void => {
      if (finished) return;
      finished = true;
      if (timer !== undefined) clearTimeout(timer);
      done();
    };

    let child: ChildProcess;
    try {
      child = spawnHelper(command, [`--pid=${pid}`, ...fields], {
        env,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    } catch (error) {
      reportFailure('spawn-failed', { errno: (error as NodeJS.ErrnoException).code });
      // Asynchronously, so that a synchronous spawn failure cannot recurse through pump().
      setImmediate(finish);
      return;
    }

    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      if (stderr.length < 512) stderr += chunk;
    });
    child.on('error', (error: NodeJS.ErrnoException) => {
      reportFailure('spawn-failed', { errno: error.code });
      finish();
    });
    child.on('close', (exitCode, signal) => {
      if (finished) return;
      if (exitCode !== 0) reportFailure('helper-failed', { exitCode, signal, stderr: stderr.trim().slice(0, 200) });
      finish();
    });
    timer = setTimeout(() => {
      reportFailure('helper-timeout', { timeoutMs: helperTimeoutMs });
      child.kill('SIGKILL');
      finish();
    }, helperTimeoutMs);
    timer.unref();
  }

  function withStatus(fields: string[], status: string | undefined): string[] {
    return status === undefined ? fields : [...fields, `STATUS=${sanitizeStatus(status)}`];
  }

  function stopWatchdog(): void {
    if (watchdogTimer !== undefined) clearInterval(watchdogTimer);
    watchdogTimer = undefined;
  }

  let healthCheckFailureLogged = false;
  function pingIfHealthy(isHealthy: () => boolean): void {
    let healthy: boolean;
    try {
      healthy = isHealthy();
    } catch (error) {
      // A throwing check counts as unhealthy: a missed ping is what the watchdog is for.
      if (!healthCheckFailureLogged) {
        healthCheckFailureLogged = true;
        logger.warn({ error: error instanceof Error ? error.message : String(error) }, 'watchdog health check threw');
      }
      healthy = false;
    }
    if (healthy) enqueue('watchdog', ['WATCHDOG=1']);
  }

  return {
    enabled,
    watchdogIntervalMs: enabled ? watchdogIntervalMs : undefined,
    ready(status) {
      enqueue('state', withStatus(['READY=1'], status));
    },
    status(text) {
      enqueue('status', [`STATUS=${sanitizeStatus(text)}`]);
    },
    reloading(status) {
      enqueue('state', withStatus(['RELOADING=1', `MONOTONIC_USEC=${monotonicUsec()}`], status));
    },
    stopping(status) {
      enqueue('state', withStatus(['STOPPING=1'], status));
    },
    startWatchdog(isHealthy) {
      if (!enabled || stopped || watchdogIntervalMs === undefined) return;
      stopWatchdog();
      pingIfHealthy(isHealthy);
      watchdogTimer = setInterval(() => pingIfHealthy(isHealthy), watchdogIntervalMs);
      watchdogTimer.unref();
    },
    stop() {
      stopped = true;
      stopWatchdog();
    },
    flush() {
      if (!sending && queue.length === 0) return Promise.resolve();
      return new Promise<void>((resolve) => drainWaiters.push(resolve));
    },
  };
}
