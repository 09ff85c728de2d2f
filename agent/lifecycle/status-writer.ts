import { isAgentError } from '../errors/agent-error.js';
import type { Logger } from '../logging/logger.js';
import { nodeFs, osErrorCode, writeFileAtomic, type Fs } from '../storage/atomic-write.js';
import { StatusFileSchema, statusFilePath, type StatusFile } from './status-file.js';
import type { RuntimeStatus } from './agent-runtime.js';

/*
 * Writes the runtime's snapshots to `<stateDir>/status.json` (schema in status-file.ts): atomically,
 * mode 0644 (no secrets in it), at most once per minIntervalMs however often the state changes, and
 * always the newest snapshot last. The trailing write's timer is owned here and cleared by stop(),
 * which writes the final snapshot.
 */

export interface StatusFileWriterOptions {
  stateDir: string;
  logger: Logger;
  /** Minimum time between two writes (the SD card is not a log). */
  minIntervalMs?: number;
  pid?: number;
  fs?: Fs;
  now?: () => Date;
  monotonicNow?: () => number;
}

export class StatusFileWriter {
  readonly path: string;
  private readonly log: Logger;
  private readonly minIntervalMs: number;
  private readonly pid: number;
  private readonly fs: Fs;
  private readonly now: () => Date;
  private readonly monotonicNow: () => number;
  private latest: RuntimeStatus | undefined;
  private dirty = false;
  private lastWriteAt: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private stopped = false;
  private failureLogged = false;

  constructor(options: StatusFileWriterOptions) {
    this.path = statusFilePath(options.stateDir);
    this.log = options.logger;
    this.minIntervalMs = options.minIntervalMs ?? 1_000;
    this.pid = options.pid ?? process.pid;
    this.fs = options.fs ?? nodeFs;
    this.now = options.now ?? (() => new Date());
    this.monotonicNow = options.monotonicNow ?? (() => performance.now());
  }

  /** Records the newest snapshot; it reaches the disk now or, when the last write was recent, a little later. */
  update(status: RuntimeStatus): void {
    if (this.stopped) return;
    this.latest = status;
    this.dirty = true;
    this.schedule();
  }

  /** Writes the newest snapshot (if not yet written) and stops writing. Never throws. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.writing;
    if (this.dirty) await this.write();
  }

  private schedule(): void {
    if (this.writing || this.timer !== undefined) return; // the running write or the timer picks it up
    const sinceLast = this.lastWriteAt === undefined ? Infinity : this.monotonicNow() - this.lastWriteAt;
    if (sinceLast >= this.minIntervalMs) {
      void this.write();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.stopped) void this.write();
    }, this.minIntervalMs - sinceLast);
  }

  private write(): Promise<void> {
    const status = this.latest;
    if (!status || !this.dirty) return Promise.resolve();
    this.dirty = false;
    this.lastWriteAt = this.monotonicNow();
    const run = (async () => {
      try {
        const file: StatusFile = StatusFileSchema.parse({ pid: this.pid, ...status, updatedAt: this.now().toISOString() });
        await writeFileAtomic(this.path, `${JSON.stringify(file, null, 2)}\n`, { mode: 0o644, fs: this.fs });
      } catch (error) {
        this.reportFailure(error);
      }
    })();
    this.writing = run;
    return run.finally(() => {
      this.writing = undefined;
      if (this.dirty && !this.stopped) this.schedule();
    });
  }

  private reportFailure(error: unknown): void {
    const osCode = isAgentError(error) ? String(error.details['osCode'] ?? error.code) : osErrorCode(error);
    const fields = { code: 'STORAGE_WRITE_FAILED', path: this.path, osCode };
    if (!this.failureLogged) {
      this.failureLogged = true;
      this.log.warn(fields, `cannot write ${this.path} (${osCode}); later failures are logged at debug level`);
    } else {
      this.log.debug(fields, 'cannot write the status file');
    }
  }
}
