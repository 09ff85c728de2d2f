import { randomBytes } from 'node:crypto';
import * as fsPromises from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { AgentError } from '../errors/agent-error.js';

/**
 * The file-system calls the storage layer makes, narrowed to what it uses so that tests can inject
 * failures (ENOSPC, EROFS, EACCES) at any single step. node:fs/promises satisfies it as it is.
 */
export interface FileHandleLike {
  write(buffer: Uint8Array, offset: number, length: number, position: number | null): Promise<{ bytesWritten: number }>;
  chmod(mode: number): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface StatsLike {
  mode: number;
  size: number;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

export interface Fs {
  open(path: string, flags: string, mode?: number): Promise<FileHandleLike>;
  rename(oldPath: string, newPath: string): Promise<void>;
  unlink(path: string): Promise<void>;
  rm(path: string, options: { recursive: boolean; force: boolean }): Promise<void>;
  mkdir(path: string, options: { recursive: boolean; mode: number }): Promise<string | undefined>;
  stat(path: string): Promise<StatsLike>;
  lstat(path: string): Promise<StatsLike>;
  chmod(path: string, mode: number): Promise<void>;
  readdir(path: string): Promise<string[]>;
  symlink(target: string, path: string): Promise<void>;
  readlink(path: string): Promise<string>;
  readFile(path: string): Promise<Buffer>;
}

export const nodeFs: Fs = fsPromises;

/**
 * Every temporary name the storage layer creates contains this marker, so that start-up can find
 * and remove what an interrupted write (power cut, SIGKILL) left behind.
 */
export const TEMP_MARKER = '.tmp-';

export function isTempName(name: string): boolean {
  return name.startsWith('.') && name.includes(TEMP_MARKER);
}

/** A unique hidden sibling name for `path`: `.<name>.tmp-<random>`. */
export function tempSiblingPath(path: string): string {
  return join(dirname(path), `.${basename(path)}${TEMP_MARKER}${process.pid}-${randomBytes(6).toString('hex')}`);
}

/** The OS error code (ENOSPC, EROFS, EACCES, ...) of a thrown value, or "UNKNOWN". */
export function osErrorCode(error: unknown): string {
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string') return error.code;
  return 'UNKNOWN';
}

export function storageWriteError(action: string, path: string, error: unknown): AgentError {
  if (error instanceof AgentError) return error;
  const osCode = osErrorCode(error);
  return new AgentError('STORAGE_WRITE_FAILED', `could not ${action} ${path}: ${osCode}`, {
    cause: error,
    details: { path, osCode },
  });
}

export interface WriteFileAtomicOptions {
  /** Final permission bits, applied regardless of the process umask. */
  mode: number;
  fs?: Fs;
}

/**
 * Replaces `path` with `data` so that a reader (or a reboot) sees either the old file or the new
 * one, never a mix: write a temporary sibling with the final mode, fsync it, rename it over the
 * target, fsync the directory so that the rename itself survives a power cut.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, options: WriteFileAtomicOptions): Promise<void> {
  const fs = options.fs ?? nodeFs;
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const tempPath = tempSiblingPath(path);
  let handle: FileHandleLike | undefined;
  let tempCreated = false;
  try {
    // wx: never follow or reuse something already sitting at the temporary name.
    handle = await fs.open(tempPath, 'wx', options.mode);
    tempCreated = true;
    // open()'s mode is filtered by the umask; fchmod sets the exact bits.
    await handle.chmod(options.mode);
    let offset = 0;
    while (offset < bytes.length) {
      const { bytesWritten } = await handle.write(bytes, offset, bytes.length - offset, null);
      if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
      offset += bytesWritten;
    }
    await handle.sync();
    const closing = handle;
    handle = undefined;
    await closing.close();
    await fs.rename(tempPath, path);
    tempCreated = false;
    await fsyncDir(dirname(path), fs);
  } catch (error) {
    if (handle) await handle.close().catch(() => undefined);
    if (tempCreated) await fs.unlink(tempPath).catch(() => undefined);
    throw storageWriteError('write', path, error);
  }
}

/** Makes a directory entry change (create, rename, unlink) durable. */
export async function fsyncDir(path: string, fs: Fs = nodeFs): Promise<void> {
  let handle: FileHandleLike | undefined;
  try {
    handle = await fs.open(path, 'r');
    await handle.sync();
  } catch (error) {
    throw storageWriteError('fsync directory', path, error);
  } finally {
    if (handle) await handle.close().catch(() => undefined);
  }
}

export interface EnsureDirResult {
  created: boolean;
  /** Set when an existing directory was more open than `mode` and was tightened; the caller logs it. */
  modeFixedFrom?: number;
}

/**
 * Creates `path` (and missing parents) with exactly `mode`, or tightens an existing directory whose
 * permissions are more open than `mode`. A directory that is already stricter is left alone.
 */
export async function ensureDir(path: string, mode = 0o700, fs: Fs = nodeFs): Promise<EnsureDirResult> {
  try {
    let existing: StatsLike | undefined;
    try {
      existing = await fs.stat(path);
    } catch (error) {
      if (osErrorCode(error) !== 'ENOENT') throw error;
    }
    if (existing) {
      if (!existing.isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
      const current = existing.mode & 0o777;
      if ((current & ~mode) === 0) return { created: false };
      await fs.chmod(path, mode);
      return { created: false, modeFixedFrom: current };
    }
    try {
      await fs.mkdir(path, { recursive: true, mode });
    } catch (error) {
      // A recursive mkdir on a read-only file system can report ENOENT; the plain mkdir of the last
      // component tells the real reason (EROFS, EACCES) that the operator has to fix.
      if (osErrorCode(error) !== 'ENOENT') throw error;
      await fs.mkdir(path, { recursive: false, mode });
    }
    // mkdir's mode is filtered by the umask.
    await fs.chmod(path, mode);
    await fsyncDir(dirname(path), fs);
    return { created: true };
  } catch (error) {
    throw storageWriteError('create directory', path, error);
  }
}
