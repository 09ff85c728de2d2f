import { nodeFs, type FileHandleLike, type Fs } from '../../agent/storage/atomic-write.js';

/** One file-system step the storage layer takes; `path` is the file or directory it acts on. */
export type FsOperation =
  | 'open'
  | 'write'
  | 'fchmod'
  | 'fsync'
  | 'rename'
  | 'unlink'
  | 'rm'
  | 'mkdir'
  | 'chmod'
  | 'symlink'
  | 'readFile';

/** Returns an errno code (ENOSPC, EROFS, EACCES, EIO...) to make that step fail, undefined to let it run. */
export type FaultRule = (operation: FsOperation, path: string) => string | undefined;

export interface FaultyFsOptions {
  /** Write at most this many bytes per write() call, to exercise short writes. */
  maxWriteBytes?: number;
}

function errnoError(code: string, operation: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: injected failure, ${operation} '${path}'`), { code, syscall: operation, path });
}

/**
 * The real node:fs/promises with failures injected where `rule` says: the disk filling up half-way
 * through a file, a file system remounted read-only, a rename refused. Everything else really happens.
 */
export function faultyFs(rule: FaultRule, options: FaultyFsOptions = {}): Fs {
  const check = (operation: FsOperation, path: string) => {
    const code = rule(operation, path);
    if (code) throw errnoError(code, operation, path);
  };
  return {
    ...nodeFs,
    async open(path, flags, mode) {
      check('open', path);
      const handle = await nodeFs.open(path, flags, mode);
      const wrapped: FileHandleLike = {
        async write(buffer, offset, length, position) {
          check('write', path);
          return handle.write(buffer, offset, Math.min(length, options.maxWriteBytes ?? length), position);
        },
        async chmod(fileMode) {
          check('fchmod', path);
          return handle.chmod(fileMode);
        },
        async sync() {
          check('fsync', path);
          return handle.sync();
        },
        close: () => handle.close(),
      };
      return wrapped;
    },
    async rename(oldPath, newPath) {
      check('rename', newPath);
      return nodeFs.rename(oldPath, newPath);
    },
    async unlink(path) {
      check('unlink', path);
      return nodeFs.unlink(path);
    },
    async rm(path, rmOptions) {
      check('rm', path);
      return nodeFs.rm(path, rmOptions);
    },
    async mkdir(path, mkdirOptions) {
      check('mkdir', path);
      return nodeFs.mkdir(path, mkdirOptions);
    },
    async chmod(path, mode) {
      check('chmod', path);
      return nodeFs.chmod(path, mode);
    },
    async symlink(target, path) {
      check('symlink', path);
      return nodeFs.symlink(target, path);
    },
    async readFile(path) {
      check('readFile', path);
      return nodeFs.readFile(path);
    },
  };
}
