import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/**
 * What the kernel says about a process, from /proc (Linux only): resident memory, CPU time and
 * open file descriptors. Used to measure the agent from the outside, exactly as it runs.
 */

/** Resident set size in bytes (VmRSS), or undefined when the process is gone. */
export function residentBytes(pid: number): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ: 100 on every Linux architecture a gateway runs

/** User + system CPU time in milliseconds (10 ms resolution), or undefined when the process is gone. */
export function cpuTimeMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
    return ((utime + stime) * 1000) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** Open file descriptors by kind (socket, pipe, eventfd, file...), or undefined when the process is gone. */
export function openDescriptors(pid: number): { total: number; byKind: Record<string, number> } | undefined {
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return undefined;
  }
  const byKind: Record<string, number> = {};
  for (const name of names) {
    let kind = 'closed';
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${name}`);
      const match = /^(socket|pipe|anon_inode):\[?([^\]]*)/.exec(target);
      kind = match ? (match[1] === 'anon_inode' ? (match[2] as string) : (match[1] as string)) : 'file';
    } catch {
      // closed between readdir and readlink
    }
    byKind[kind] = (byKind[kind] ?? 0) + 1;
  }
  return { total: names.length, byKind };
}
