import { chmodSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureDir, fsyncDir, isTempName, writeFileAtomic } from '../../agent/storage/atomic-write.js';
import { faultyFs, type FsOperation } from '../helpers/faulty-fs.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { rejectedAgentError } from '../helpers/agent-errors.js';

let dir: string;
let cleanup: () => void;
let savedUmask: number;

beforeEach(() => {
  ({ dir, cleanup } = makeTempDir('mgda-atomic-'));
  savedUmask = process.umask();
});
afterEach(() => {
  process.umask(savedUmask);
  cleanup();
});

function modeOf(path: string): number {
  return statSync(path).mode & 0o777;
}

/** Fails one kind of step on paths containing `needle`. */
function failing(operation: FsOperation, code: string, needle = '') {
  return faultyFs((op, path) => (op === operation && path.includes(needle) ? code : undefined));
}

describe('writeFileAtomic', () => {
  for (const umask of [0o000, 0o077]) {
    it(`gives files exactly the requested mode under umask ${umask.toString(8).padStart(3, '0')}`, async () => {
      process.umask(umask);
      await writeFileAtomic(join(dir, 'client.key'), 'secret key bytes', { mode: 0o600 });
      await writeFileAtomic(join(dir, 'client.crt'), 'public cert bytes', { mode: 0o644 });
      expect(modeOf(join(dir, 'client.key'))).toBe(0o600);
      expect(modeOf(join(dir, 'client.crt'))).toBe(0o644);
    });
  }

  it('writes the bytes exactly: non-ASCII, CRLF, trailing whitespace, NUL, binary', async () => {
    const text = 'température ✓ 温度\r\nline two  \t\n\n  ';
    await writeFileAtomic(join(dir, 'text'), text, { mode: 0o600 });
    expect(readFileSync(join(dir, 'text'))).toEqual(Buffer.from(text, 'utf8'));
    const binary = Buffer.from([0, 255, 13, 10, 0, 128, 1]);
    await writeFileAtomic(join(dir, 'binary'), binary, { mode: 0o600 });
    expect(readFileSync(join(dir, 'binary'))).toEqual(binary);
  });

  it('writes everything even when the kernel accepts only a few bytes per write', async () => {
    const data = Buffer.from('x'.repeat(1000) + 'end');
    await writeFileAtomic(join(dir, 'f'), data, { mode: 0o600, fs: faultyFs(() => undefined, { maxWriteBytes: 7 }) });
    expect(readFileSync(join(dir, 'f'))).toEqual(data);
  });

  it('replaces an existing file whole, including its mode, and leaves no temporary file', async () => {
    const target = join(dir, 'config.json');
    writeFileSync(target, 'a much longer previous content that must not survive in part');
    chmodSync(target, 0o644);
    await writeFileAtomic(target, 'short', { mode: 0o600 });
    expect(readFileSync(target, 'utf8')).toBe('short');
    expect(modeOf(target)).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['config.json']);
  });

  it('writes an empty file', async () => {
    await writeFileAtomic(join(dir, 'empty'), '', { mode: 0o600 });
    expect(readFileSync(join(dir, 'empty')).length).toBe(0);
  });

  const failures: [FsOperation, string][] = [
    ['open', 'EROFS'],
    ['fchmod', 'EPERM'],
    ['write', 'ENOSPC'],
    ['fsync', 'EIO'],
    ['rename', 'EACCES'],
  ];
  for (const [operation, code] of failures) {
    it(`keeps the old file byte for byte and removes the temporary when ${operation} fails with ${code}`, async () => {
      const target = join(dir, 'client.crt');
      writeFileSync(target, 'previous good certificate\n');
      chmodSync(target, 0o644);
      // Fail on the temporary file (or, for rename, on the target), never on the directory.
      const fs = failing(operation, code, operation === 'rename' ? 'client.crt' : '.tmp-');
      const error = await rejectedAgentError(() => writeFileAtomic(target, 'new certificate\n'.repeat(100), { mode: 0o644, fs }));
      expect(error.code).toBe('STORAGE_WRITE_FAILED');
      expect(error.details).toMatchObject({ path: target, osCode: code });
      expect(error.message).toBe(`could not write ${target}: ${code}`);
      expect(readFileSync(target, 'utf8')).toBe('previous good certificate\n');
      expect(modeOf(target)).toBe(0o644);
      expect(readdirSync(dir)).toEqual(['client.crt']);
    });
  }

  it('fails with ENOSPC after a partial write without leaving the partial bytes anywhere', async () => {
    let writes = 0;
    const fs = faultyFs((op) => (op === 'write' && ++writes === 3 ? 'ENOSPC' : undefined), { maxWriteBytes: 10 });
    const target = join(dir, 'content');
    const error = await rejectedAgentError(() => writeFileAtomic(target, 'y'.repeat(100), { mode: 0o600, fs }));
    expect(error.details.osCode).toBe('ENOSPC');
    expect(writes).toBe(3);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('reports a failed directory fsync (the rename may not survive a power cut)', async () => {
    const fs = faultyFs((op, path) => (op === 'fsync' && path === dir ? 'EIO' : undefined));
    const error = await rejectedAgentError(() => writeFileAtomic(join(dir, 'f'), 'data', { mode: 0o600, fs }));
    expect(error.code).toBe('STORAGE_WRITE_FAILED');
    expect(error.details.osCode).toBe('EIO');
    expect(readdirSync(dir).filter(isTempName)).toEqual([]);
  });

  it('reports a missing directory as ENOENT', async () => {
    const target = join(dir, 'missing', 'f');
    const error = await rejectedAgentError(() => writeFileAtomic(target, 'data', { mode: 0o600 }));
    expect(error.code).toBe('STORAGE_WRITE_FAILED');
    expect(error.details).toMatchObject({ path: target, osCode: 'ENOENT' });
  });
});

describe('ensureDir', () => {
  it('creates missing parents and gives the directory exactly 0700 under umask 0', async () => {
    process.umask(0);
    const path = join(dir, 'var', 'lib', 'mg-device-agent');
    expect(await ensureDir(path)).toEqual({ created: true });
    expect(statSync(path).isDirectory()).toBe(true);
    expect(modeOf(path)).toBe(0o700);
    expect(modeOf(join(dir, 'var')) & 0o022).toBe(0);
  });

  it('honours another mode', async () => {
    process.umask(0o077);
    const path = join(dir, 'shared');
    await ensureDir(path, 0o755);
    expect(modeOf(path)).toBe(0o755);
  });

  it('tightens an existing directory that is too open and says so', async () => {
    const path = join(dir, 'state');
    mkdirSync(path);
    chmodSync(path, 0o755);
    expect(await ensureDir(path)).toEqual({ created: false, modeFixedFrom: 0o755 });
    expect(modeOf(path)).toBe(0o700);
    expect(await ensureDir(path)).toEqual({ created: false });
  });

  it('leaves a stricter directory alone', async () => {
    const path = join(dir, 'state');
    mkdirSync(path);
    chmodSync(path, 0o500);
    expect(await ensureDir(path)).toEqual({ created: false });
    expect(modeOf(path)).toBe(0o500);
  });

  it('refuses a path that is a file', async () => {
    const path = join(dir, 'state');
    writeFileSync(path, '');
    const error = await rejectedAgentError(() => ensureDir(path));
    expect(error.code).toBe('STORAGE_WRITE_FAILED');
    expect(error.details).toMatchObject({ path, osCode: 'ENOTDIR' });
  });

  it('reports a read-only file system', async () => {
    const path = join(dir, 'state');
    const error = await rejectedAgentError(() => ensureDir(path, 0o700, failing('mkdir', 'EROFS')));
    expect(error.details).toMatchObject({ path, osCode: 'EROFS' });
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('ensureDir on a read-only file system whose recursive mkdir says ENOENT', () => {
  it('names the real cause (EROFS), found by a plain mkdir of the last component', async () => {
    const path = join(dir, 'state');
    const fs = { ...faultyFs(() => undefined) };
    fs.mkdir = async (_p: string, options: { recursive: boolean; mode: number }) => {
      throw Object.assign(new Error('mkdir failed'), { code: options.recursive ? 'ENOENT' : 'EROFS' });
    };
    const error = await rejectedAgentError(() => ensureDir(path, 0o700, fs));
    expect(error.details).toMatchObject({ path, osCode: 'EROFS' });
    expect(error.message).toContain('EROFS');
  });
});

describe('fsyncDir', () => {
  it('succeeds on a directory and reports a missing one', async () => {
    await fsyncDir(dir);
    const error = await rejectedAgentError(() => fsyncDir(join(dir, 'nope')));
    expect(error.code).toBe('STORAGE_WRITE_FAILED');
    expect(error.details.osCode).toBe('ENOENT');
  });
});
