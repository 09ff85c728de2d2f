import { nodeFs, type FileHandleLike, type Fs } from '../../storage/atomic-write.js';

/**
 * The real file system with a fault that can be switched on and off while an agent runs: a disk
 * that fills up (ENOSPC on every write) or a state directory remounted read-only (EROFS on every
 * change). Reads always work, as they do on a full or read-only disk.
 *
 * (test/helpers/faulty-fs.ts injects per-operation rules for unit tests; this one lives here
 * because the torture harness runs from dist/ and must not import test code.)
 */

export type DiskFault = 'ENOSPC' | 'EROFS';

export interface SwitchableFs {
  fs: Fs;
  /** Turns the fault on (or off with undefined) for every later call. */
  set(fault: DiskFault | undefined): void;
  /** How many calls failed because of the fault. */
  readonly injected: number;
}

function errno(code: string, syscall: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: injected (torture), ${syscall} '${path}'`), { code, syscall, path });
}

export function switchableFs(): SwitchableFs {
  let fault: DiskFault | undefined;
  let injected = 0;
  /** ENOSPC hits only what consumes space; EROFS hits every change. */
  const refuse = (kind: 'space' | 'change', syscall: string, path: string): void => {
    if (fault === undefined || (fault === 'ENOSPC' && kind !== 'space')) return;
    injected++;
    throw errno(fault, syscall, path);
  };
  const fs: Fs = {
    ...nodeFs,
    async open(path, flags, mode) {
      const writing = flags !== 'r';
      if (writing) refuse('space', 'open', path);
      const handle = await nodeFs.open(path, flags, mode);
      const wrapped: FileHandleLike = {
        async write(buffer, offset, length, position) {
          refuse('space', 'write', path);
          return handle.write(buffer, offset, length, position);
        },
        async chmod(fileMode) {
          refuse('change', 'fchmod', path);
          return handle.chmod(fileMode);
        },
        // fsync of a directory opened read-only is how renames are made durable: EROFS refuses nothing there.
        sync: () => handle.sync(),
        close: () => handle.close(),
      };
      return wrapped;
    },
    async rename(oldPath, newPath) {
      refuse('change', 'rename', newPath);
      return nodeFs.rename(oldPath, newPath);
    },
    async unlink(path) {
      refuse('change', 'unlink', path);
      return nodeFs.unlink(path);
    },
    async rm(path, options) {
      refuse('change', 'rm', path);
      return nodeFs.rm(path, options);
    },
    async mkdir(path, options) {
      refuse('space', 'mkdir', path);
      return nodeFs.mkdir(path, options);
    },
    async chmod(path, mode) {
      refuse('change', 'chmod', path);
      return nodeFs.chmod(path, mode);
    },
    async symlink(target, path) {
      refuse('space', 'symlink', path);
      return nodeFs.symlink(target, path);
    },
  };
  return {
    fs,
    set(next) {
      fault = next;
    },
    get injected() {
      return injected;
    },
  };
}
