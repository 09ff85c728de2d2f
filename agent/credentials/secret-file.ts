import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { AgentError } from '../errors/agent-error.js';
import type { ErrorCode } from '../errors/agent-error.js';

/**
 * Reads a small secret from a file the way the agent requires: a regular file that only its owner
 * can read or write. The check is an explicit mode test, not a failed open: the agent often runs as
 * root, which can read anything, and a world-readable key is a leak whoever reads it.
 */
export interface SecretFileCodes {
  missing: ErrorCode;
  insecureMode: ErrorCode;
  empty: ErrorCode;
}

export interface ReadSecretFileOptions {
  /** Human name for messages, e.g. "external key". */
  label: string;
  codes: SecretFileCodes;
}

/** Removes exactly one trailing "\n" or "\r\n" (editors add one; a second one is kept as content). */
export function stripOneTrailingNewline(text: string): string {
  if (text.endsWith('\r\n')) return text.slice(0, -2);
  if (text.endsWith('\n')) return text.slice(0, -1);
  return text;
}

/** e.g. "0640". */
export function formatMode(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/** True when the path names something (following symlinks); false only for "not there". */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    // Anything else (EACCES on a parent...) means it is there but unusable: let the read report it.
    return true;
  }
}

export async function readSecretFile(path: string, options: ReadSecretFileOptions): Promise<string> {
  const { label, codes } = options;
  let handle: FileHandle;
  try {
    // O_NONBLOCK so a FIFO at the path cannot hang start-up; it is then refused as not a regular file.
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    const errno = (error as NodeJS.ErrnoException).code ?? 'unknown';
    const why =
      errno === 'ENOENT' || errno === 'ENOTDIR'
        ? 'does not exist'
        : errno === 'EACCES' || errno === 'EPERM'
          ? 'cannot be opened by the user the agent runs as (permission denied); make that user its owner'
          : `cannot be opened (${errno})`;
    throw new AgentError(codes.missing, `${label} file ${path} ${why}`, { cause: error, details: { path, errno } });
  }
  try {
    // fstat on the open descriptor: the file checked is the file read, even if the path is swapped.
    const info = await handle.stat();
    if (!info.isFile()) {
      throw new AgentError(codes.missing, `${label} file ${path} is not a regular file`, {
        details: { path, reason: 'not-regular-file' },
      });
    }
    if ((info.mode & 0o077) !== 0) {
      const mode = formatMode(info.mode);
      throw new AgentError(
        codes.insecureMode,
        `${label} file ${path} has mode ${mode}, readable or writable by group or others; ` +
          `restrict it to its owner with: chmod 600 ${path}`,
        { details: { path, mode } },
      );
    }
    const value = stripOneTrailingNewline(await handle.readFile({ encoding: 'utf8' }));
    if (value.trim() === '') {
      throw new AgentError(codes.empty, `${label} file ${path} is empty`, { details: { path, reason: 'empty' } });
    }
    return value;
  } finally {
    await handle.close();
  }
}
