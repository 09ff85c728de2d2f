import { join } from 'node:path';
import { z } from 'zod';
import { isAgentError } from '../errors/agent-error.js';
import type { Logger } from '../logging/logger.js';
import { fsyncDir, nodeFs, osErrorCode, writeFileAtomic, type Fs } from '../storage/atomic-write.js';
import type { FailureClass } from './failure-policy.js';

/*
 * `<stateDir>/backoff.json`: the failure counts the retry policy is at, so that a restart (a crash
 * loop under systemd, a watchdog kill, a reboot in the middle of an outage) resumes the backoff
 * instead of starting again from the first, shortest step. Written once per failed attempt and
 * removed on success; a damaged file only costs the history, never the start.
 */

export const BACKOFF_STATE_FILE = 'backoff.json';

const FAILURE_CLASSES = ['transient', 'auth', 'operator', 'invalid', 'fatal'] as const satisfies readonly FailureClass[];

export interface BackoffAttempts {
  /** Consecutive failures per class since the last success. */
  counts: Partial<Record<FailureClass, number>>;
  /** The class of the latest failure: the backoff window a restarted agent resumes. */
  last?: FailureClass;
}

/** What the runtime needs; tests pass an in-memory one. */
export interface AttemptStorePort {
  load(): Promise<BackoffAttempts>;
  /** Never throws: a read-only disk must not stop the agent from retrying. */
  save(attempts: BackoffAttempts): Promise<void>;
}

const count = z.number().int().min(0).max(1_000_000);
const BackoffFileSchema = z.looseObject({
  version: z.literal(1),
  counts: z.looseObject(Object.fromEntries(FAILURE_CLASSES.map((c) => [c, count.optional()]))),
  last: z.enum(FAILURE_CLASSES).optional(),
  updatedAt: z.string().optional(),
});

export function isEmptyAttempts(attempts: BackoffAttempts): boolean {
  return Object.values(attempts.counts).every((n) => !n);
}

export interface BackoffStateFileOptions {
  stateDir: string;
  logger: Logger;
  fs?: Fs;
  now?: () => Date;
}

export class BackoffStateFile implements AttemptStorePort {
  readonly path: string;
  private readonly dir: string;
  private readonly log: Logger;
  private readonly fs: Fs;
  private readonly now: () => Date;
  private onDisk = false;
  private writeFailureLogged = false;

  constructor(options: BackoffStateFileOptions) {
    this.dir = options.stateDir;
    this.path = join(options.stateDir, BACKOFF_STATE_FILE);
    this.log = options.logger;
    this.fs = options.fs ?? nodeFs;
    this.now = options.now ?? (() => new Date());
  }

  async load(): Promise<BackoffAttempts> {
    let bytes: Buffer;
    try {
      bytes = await this.fs.readFile(this.path);
    } catch (error) {
      if (osErrorCode(error) !== 'ENOENT') {
        this.log.warn({ path: this.path, osCode: osErrorCode(error) }, `cannot read ${this.path}; backoff starts from the first step`);
      }
      return { counts: {} };
    }
    this.onDisk = true;
    let parsed: z.infer<typeof BackoffFileSchema> | undefined;
    try {
      const result = BackoffFileSchema.safeParse(JSON.parse(bytes.toString('utf8')));
      parsed = result.success ? result.data : undefined;
    } catch {
      parsed = undefined;
    }
    if (!parsed) {
      // Torn by a power cut (empty or zero-filled) or edited by hand: the history is lost, nothing else.
      this.log.warn(
        { code: 'STORAGE_CORRUPT', path: this.path, bytes: bytes.length },
        `${this.path} is unreadable (${bytes.length} bytes); backoff starts from the first step`,
      );
      return { counts: {} };
    }
    const counts: BackoffAttempts['counts'] = {};
    for (const failureClass of FAILURE_CLASSES) {
      const n = parsed.counts[failureClass];
      if (typeof n === 'number' && n > 0) counts[failureClass] = n;
    }
    return { counts, ...(parsed.last !== undefined && counts[parsed.last] ? { last: parsed.last } : {}) };
  }

  async save(attempts: BackoffAttempts): Promise<void> {
    try {
      if (isEmptyAttempts(attempts)) {
        if (!this.onDisk) return; // nothing to reset: no write at all on the healthy path
        await this.fs.unlink(this.path).catch((error: unknown) => {
          if (osErrorCode(error) !== 'ENOENT') throw error;
        });
        await fsyncDir(this.dir, this.fs);
        this.onDisk = false;
        return;
      }
      const body = { version: 1, counts: attempts.counts, ...(attempts.last ? { last: attempts.last } : {}), updatedAt: this.now().toISOString() };
      await writeFileAtomic(this.path, `${JSON.stringify(body)}\n`, { mode: 0o600, fs: this.fs });
      this.onDisk = true;
    } catch (error) {
      const osCode = isAgentError(error) ? String(error.details['osCode'] ?? error.code) : osErrorCode(error);
      const fields = { code: 'STORAGE_WRITE_FAILED', path: this.path, osCode };
      if (!this.writeFailureLogged) {
        this.writeFailureLogged = true;
        this.log.warn(fields, `cannot record the backoff state in ${this.path} (${osCode}); a restart would start from the first step`);
      } else {
        this.log.debug(fields, 'cannot record the backoff state');
      }
    }
  }
}
