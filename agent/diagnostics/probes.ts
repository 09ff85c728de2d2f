import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { access, lstat, readdir, statfs } from 'node:fs/promises';
import { connect, isIP } from 'node:net';
import { join, relative } from 'node:path';

/*
 * The I/O half of `doctor`: each probe asks the system one question, bounded in time, and returns
 * plain facts (never throws); the pure checks in checks.ts turn the facts into PASS/FAIL lines.
 */

export interface TreeEntry {
  /** Path relative to the walked root ("" for the root itself). */
  path: string;
  kind: 'dir' | 'file' | 'symlink' | 'other';
  uid: number;
  gid: number;
  mode: number;
}

/** Every entry under `root` (lstat: symlinks are not followed), at most `limit` of them. */
export async function walkTree(root: string, limit = 5_000): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  const pending = [root];
  while (pending.length > 0 && entries.length < limit) {
    const path = pending.shift() as string;
    const info = await lstat(path);
    const kind = info.isDirectory() ? 'dir' : info.isFile() ? 'file' : info.isSymbolicLink() ? 'symlink' : 'other';
    entries.push({ path: relative(root, path), kind, uid: info.uid, gid: info.gid, mode: info.mode & 0o7777 });
    if (kind === 'dir') for (const name of (await readdir(path)).sort()) pending.push(join(path, name));
  }
  return entries;
}

export interface DiskSpace {
  freeBytes: number;
  totalBytes: number;
}

export async function diskSpace(path: string): Promise<DiskSpace> {
  const info = await statfs(path);
  // bavail: what an unprivileged writer (the agent's user) can still use, without root's reserve.
  return { freeBytes: info.bavail * info.bsize, totalBytes: info.blocks * info.bsize };
}

export type ClockSync = { synchronized: boolean; source: string } | { synchronized: 'unknown'; source: string };

const TIMESYNC_FLAG = '/run/systemd/timesync/synchronized';

/** NTP state: timedatectl (no shell), else systemd-timesyncd's flag file, else unknown. */
export async function clockSync(options: { timeoutMs?: number; flagFile?: string } = {}): Promise<ClockSync> {
  const answer = await new Promise<string | undefined>((resolve) => {
    execFile('timedatectl', ['show', '-p', 'NTPSynchronized', '--value'], { timeout: options.timeoutMs ?? 3_000 }, (err, stdout) =>
      resolve(err ? undefined : stdout.trim()),
    );
  });
  if (answer === 'yes' || answer === 'no') return { synchronized: answer === 'yes', source: 'timedatectl' };
  const flag = options.flagFile ?? TIMESYNC_FLAG;
  try {
    await access(flag);
    return { synchronized: true, source: flag };
  } catch {
    return { synchronized: 'unknown', source: 'neither timedatectl nor systemd-timesyncd answered' };
  }
}

export type DnsResult = { ok: true; addresses: string[]; literal: boolean } | { ok: false; code: string };

export async function resolveHost(host: string, timeoutMs = 5_000): Promise<DnsResult> {
  const bare = host.replace(/^\[|\]$/g, '');
  if (isIP(bare)) return { ok: true, addresses: [bare], literal: true };
  let timer: NodeJS.Timeout | undefined;
  try {
    const addresses = await Promise.race([
      lookup(bare, { all: true }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(Object.assign(new Error('timeout'), { code: 'ETIMEOUT' })), timeoutMs);
      }),
    ]);
    return { ok: true, addresses: addresses.map((a) => a.address), literal: false };
  } catch (err) {
    return { ok: false, code: (err as NodeJS.ErrnoException).code ?? 'ERROR' };
  } finally {
    clearTimeout(timer);
  }
}

export type TcpResult = { ok: true; ms: number } | { ok: false; code: string };

/** Opens and closes one TCP connection. */
export function tcpConnect(host: string, port: number, timeoutMs = 5_000): Promise<TcpResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = connect({ host: host.replace(/^\[|\]$/g, ''), port });
    const done = (result: TcpResult) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => done({ ok: false, code: 'ETIMEDOUT' }), timeoutMs);
    socket.once('connect', () => done({ ok: true, ms: Date.now() - started }));
    socket.once('error', (err: NodeJS.ErrnoException) => done({ ok: false, code: err.code ?? 'ERROR' }));
  });
}

/** host and port of a URL, with the scheme's default port. */
export function endpointOf(url: string): { host: string; port: number } | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  const defaults: Record<string, number> = {
    'http:': 80,
    'https:': 443,
    'mqtt:': 1883,
    'tcp:': 1883,
    'mqtts:': 8883,
    'ssl:': 8883,
    'tls:': 8883,
    'ws:': 80,
    'wss:': 443,
  };
  const port = parsed.port ? Number(parsed.port) : defaults[parsed.protocol];
  if (!parsed.hostname || port === undefined) return undefined;
  return { host: parsed.hostname, port };
}
