import type { ClockSync, DiskSpace, DnsResult, TcpResult, TreeEntry } from './probes.js';
import type { CertificateSummary } from './redact.js';
import { hintFor } from './hints.js';

/*
 * The pure half of `doctor`: facts in, one verdict line out. No I/O and no clock of its own (`now`
 * is passed in), so every rule here is unit-tested with plain values.
 */

export type CheckStatus = 'PASS' | 'FAIL' | 'WARN';

export interface CheckResult {
  status: CheckStatus;
  name: string;
  detail: string;
  /** What to do about a FAIL or WARN. */
  hint?: string;
}

const DAY_MS = 24 * 3600 * 1000;
export const CERT_EXPIRY_WARN_DAYS = 30;
export const DISK_FAIL_BYTES = 10 * 1024 * 1024;
export const DISK_WARN_BYTES = 100 * 1024 * 1024;

/** Files in the state directory whose contents are secret: no group or other bits at all. */
const SECRET_FILE_NAMES = new Set(['config.json', 'content', 'client.key', 'identity.json']);

export function pass(name: string, detail: string): CheckResult {
  return { status: 'PASS', name, detail };
}

export function failure(name: string, detail: string, hint?: string): CheckResult {
  return { status: 'FAIL', name, detail, ...(hint ? { hint } : {}) };
}

export function warning(name: string, detail: string, hint?: string): CheckResult {
  return { status: 'WARN', name, detail, ...(hint ? { hint } : {}) };
}

/** A FAIL for an AgentError-like failure, with the code's hint. */
export function failedWith(name: string, error: { code: string; message: string }): CheckResult {
  return failure(name, `${error.code}: ${error.message}`, hintFor(error.code));
}

/** `PASS name: detail`, and on FAIL/WARN an indented hint line. */
export function formatCheck(result: CheckResult): string {
  const line = `${result.status} ${result.name}: ${result.detail}`;
  return result.hint && result.status !== 'PASS' ? `${line}\n     hint: ${result.hint}` : line;
}

export function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

export function checkClockSync(sync: ClockSync): CheckResult {
  if (sync.synchronized === true) return pass('clock synchronised', `yes (${sync.source})`);
  if (sync.synchronized === false) {
    return warning('clock synchronised', `no (${sync.source})`, 'enable NTP (timedatectl set-ntp true) and check that UDP 123 or the NTP server is reachable');
  }
  return warning('clock synchronised', `unknown: ${sync.source}`, 'check the time source this system uses; TLS needs a correct clock');
}

/** A clock before the agent's own build date is certainly wrong (a Pi without RTC boots in the past). */
export function checkClockPlausible(now: Date, buildDate: Date): CheckResult {
  if (now.getTime() < buildDate.getTime()) {
    return failure(
      'clock plausible',
      `the clock says ${now.toISOString()}, before this agent was built (${buildDate.toISOString()})`,
      'set the time (NTP, or an RTC); certificates cannot be verified with a clock in the past',
    );
  }
  return pass('clock plausible', `${now.toISOString()} (after the build date ${buildDate.toISOString().slice(0, 10)})`);
}

export function checkDns(name: string, host: string, result: DnsResult): CheckResult {
  if (result.ok) return pass(name, result.literal ? `${host} is an IP address` : `${host} -> ${result.addresses.join(', ')}`);
  return failure(name, `cannot resolve ${host} (${result.code})`, 'check /etc/resolv.conf, the DNS server and the host name in the URL');
}

export function checkTcp(name: string, host: string, port: number, result: TcpResult): CheckResult {
  if (result.ok) return pass(name, `${host}:${port} accepts connections`);
  const why: Record<string, string> = {
    ECONNREFUSED: 'nothing listens on that port (service down, or wrong port)',
    ETIMEDOUT: 'no answer (a firewall dropping packets, or no route)',
    EHOSTUNREACH: 'no route to the host',
    ENETUNREACH: 'no network route',
  };
  return failure(name, `${host}:${port} ${result.code}`, why[result.code] ?? 'check the network path to this host and port');
}

export function checkCertificateValidity(name: string, cert: CertificateSummary, now: Date): CheckResult {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  const subject = cert.subject || '(no subject)';
  if (now < from) {
    return failure(name, `${subject} is not valid before ${cert.validFrom}`, 'the clock is behind, or the certificate was issued for the future: fix the clock first');
  }
  if (now > to) {
    return failure(name, `${subject} expired on ${cert.validTo}`, 'issue a new certificate and update the bootstrap config (PATCH .../configs/certs/{clientId}); the agent picks it up on its next check');
  }
  const days = Math.floor((to.getTime() - now.getTime()) / DAY_MS);
  if (days < CERT_EXPIRY_WARN_DAYS) {
    return warning(name, `${subject} expires on ${cert.validTo} (in ${days} day${days === 1 ? '' : 's'})`, 'renew it soon and update the bootstrap config');
  }
  return pass(name, `${subject}, valid until ${cert.validTo} (${days} days)`);
}

/**
 * Owner and modes of the state directory: everything owned by the directory's owner (a file left by
 * root is unreadable to the agent's user), directories 0700, secret files without group/other bits,
 * other files without group/other write.
 */
export function checkStateTree(dir: string, entries: TreeEntry[]): CheckResult {
  const name = 'state directory';
  const root = entries.find((e) => e.path === '');
  if (!root) return failure(name, `${dir} does not exist`, 'the agent creates it on first start; check state.dir');
  if (root.kind !== 'dir') return failure(name, `${dir} is not a directory`, 'move it away; the agent creates the directory itself');
  const problems: string[] = [];
  const foreign = entries.filter((e) => e.uid !== root.uid || e.gid !== root.gid);
  if (foreign.length > 0) {
    const list = foreign.slice(0, 3).map((e) => `${e.path || '.'} (${e.uid}:${e.gid})`).join(', ');
    problems.push(`${foreign.length} entr${foreign.length === 1 ? 'y' : 'ies'} not owned by ${root.uid}:${root.gid}: ${list}`);
  }
  for (const entry of entries) {
    const label = entry.path || dir;
    if (entry.kind === 'dir' && (entry.mode & 0o077) !== 0) problems.push(`${label} is ${octal(entry.mode)} (want 0700)`);
    if (entry.kind !== 'file') continue;
    const base = entry.path.split('/').pop() ?? entry.path;
    if (SECRET_FILE_NAMES.has(base) && (entry.mode & 0o077) !== 0) problems.push(`${label} is ${octal(entry.mode)} (want 0600)`);
    else if ((entry.mode & 0o022) !== 0) problems.push(`${label} is ${octal(entry.mode)} (writable by group or others)`);
  }
  if (problems.length > 0) {
    return failure(name, problems.slice(0, 5).join('; '), `chown -R ${root.uid}:${root.gid} ${dir} && chmod -R go-rwx ${dir} (the agent's user must own everything in it)`);
  }
  return pass(name, `${dir}: ${entries.length} entries owned by ${root.uid}:${root.gid}, modes safe`);
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

export function checkDisk(dir: string, space: DiskSpace): CheckResult {
  const detail = `${mib(space.freeBytes)} free of ${mib(space.totalBytes)} on ${dir}`;
  const hint = 'free some space (logs, journald: journalctl --vacuum-size=50M); a full disk stops configuration updates';
  if (space.freeBytes < DISK_FAIL_BYTES) return failure('free disk space', detail, hint);
  if (space.freeBytes < DISK_WARN_BYTES) return warning('free disk space', detail, hint);
  return pass('free disk space', detail);
}

/** 0 when every check passed or only warned, 1 when any failed. */
export function doctorExitCode(results: CheckResult[]): 0 | 1 {
  return results.some((r) => r.status === 'FAIL') ? 1 : 0;
}
