import { describe, expect, it } from 'vitest';
import {
  checkCertificateValidity,
  checkClockPlausible,
  checkClockSync,
  checkDisk,
  checkDns,
  checkStateTree,
  checkTcp,
  doctorExitCode,
  failedWith,
  formatCheck,
  pass,
  warning,
} from '../../agent/diagnostics/checks.js';
import type { TreeEntry } from '../../agent/diagnostics/probes.js';
import { endpointOf } from '../../agent/diagnostics/probes.js';

const MiB = 1024 * 1024;

describe('doctor checks (pure)', () => {
  it('formats PASS lines alone and FAIL/WARN lines with their hint', () => {
    expect(formatCheck(pass('identity', 'external ID x'))).toBe('PASS identity: external ID x');
    expect(formatCheck(failedWith('bootstrap authentication', { code: 'BOOTSTRAP_NOT_FOUND', message: 'GET ... answered 404' }))).toBe(
      'FAIL bootstrap authentication: BOOTSTRAP_NOT_FOUND: GET ... answered 404\n     hint: the server has no bootstrap config for this external ID: compare "mg-device-agent identity" with the external_id the operator created (exact text, MAC format included)',
    );
    expect(formatCheck(warning('x', 'y', 'z'))).toBe('WARN x: y\n     hint: z');
  });

  it('exit code: 1 when anything failed, 0 when everything passed or only warned', () => {
    expect(doctorExitCode([pass('a', ''), warning('b', '')])).toBe(0);
    expect(doctorExitCode([pass('a', ''), failedWith('c', { code: 'INTERNAL', message: '' })])).toBe(1);
  });

  it('clock: synchronised passes, not synchronised or unknown warns; a clock before the build date fails', () => {
    expect(checkClockSync({ synchronized: true, source: 'timedatectl' }).status).toBe('PASS');
    expect(checkClockSync({ synchronized: false, source: 'timedatectl' })).toMatchObject({ status: 'WARN', detail: 'no (timedatectl)' });
    expect(checkClockSync({ synchronized: 'unknown', source: 'nothing answered' }).status).toBe('WARN');
    const built = new Date('2025-06-01T00:00:00Z');
    expect(checkClockPlausible(new Date('1970-01-01T00:01:00Z'), built)).toMatchObject({ status: 'FAIL', detail: expect.stringContaining('1970-01-01') });
    expect(checkClockPlausible(new Date('2025-06-02T00:00:00Z'), built).status).toBe('PASS');
  });

  it('DNS and TCP name the host, port and OS code, with a hint per failure', () => {
    expect(checkDns('broker DNS', 'mqtt.example', { ok: true, addresses: ['10.0.0.1'], literal: false }).detail).toBe('mqtt.example -> 10.0.0.1');
    expect(checkDns('broker DNS', 'nope.invalid', { ok: false, code: 'ENOTFOUND' })).toMatchObject({ status: 'FAIL', detail: 'cannot resolve nope.invalid (ENOTFOUND)' });
    expect(checkTcp('broker TCP', 'h', 1883, { ok: false, code: 'ECONNREFUSED' })).toMatchObject({ status: 'FAIL', detail: 'h:1883 ECONNREFUSED', hint: expect.stringContaining('nothing listens') });
    expect(checkTcp('broker TCP', 'h', 1883, { ok: false, code: 'ETIMEDOUT' }).hint).toContain('firewall');
  });

  it('certificates: not yet valid and expired fail, under 30 days warns, otherwise passes', () => {
    const cert = { subject: 'CN=dev', issuer: 'CN=ca', validFrom: '2025-01-01T00:00:00.000Z', validTo: '2025-12-31T00:00:00.000Z', fingerprint256: 'AA' };
    expect(checkCertificateValidity('client certificate', cert, new Date('2024-12-31T00:00:00Z')).status).toBe('FAIL');
    expect(checkCertificateValidity('client certificate', cert, new Date('2026-01-01T00:00:00Z'))).toMatchObject({ status: 'FAIL', detail: 'CN=dev expired on 2025-12-31T00:00:00.000Z' });
    expect(checkCertificateValidity('client certificate', cert, new Date('2025-12-11T00:00:00Z'))).toMatchObject({ status: 'WARN', detail: expect.stringContaining('(in 20 days)') });
    expect(checkCertificateValidity('client certificate', cert, new Date('2025-06-01T00:00:00Z'))).toMatchObject({ status: 'PASS', detail: expect.stringContaining('(213 days)') });
  });

  it('state directory: one owner, 0700 directories, 0600 secrets, nothing writable by others', () => {
    const entry = (path: string, kind: TreeEntry['kind'], mode: number, uid = 998): TreeEntry => ({ path, kind, mode, uid, gid: uid });
    const healthy = [
      entry('', 'dir', 0o700),
      entry('current', 'symlink', 0o777),
      entry('generations', 'dir', 0o700),
      entry('generations/000001', 'dir', 0o700),
      entry('generations/000001/config.json', 'file', 0o600),
      entry('generations/000001/certs', 'dir', 0o700),
      entry('generations/000001/certs/client.key', 'file', 0o600),
      entry('generations/000001/certs/ca.crt', 'file', 0o644),
      entry('status.json', 'file', 0o644),
    ];
    expect(checkStateTree('/var/lib/x', healthy)).toMatchObject({ status: 'PASS', detail: '/var/lib/x: 9 entries owned by 998:998, modes safe' });

    const rootLeftovers = [...healthy.slice(0, 4), entry('generations/000002', 'dir', 0o700, 0), entry('generations/000002/config.json', 'file', 0o600, 0)];
    const owned = checkStateTree('/var/lib/x', rootLeftovers);
    expect(owned.status).toBe('FAIL');
    expect(owned.detail).toContain('2 entries not owned by 998:998: generations/000002 (0:0), generations/000002/config.json (0:0)');
    expect(owned.hint).toContain('chown -R 998:998 /var/lib/x');

    const loose = checkStateTree('/var/lib/x', [entry('', 'dir', 0o755), entry('identity.json', 'file', 0o644), entry('status.json', 'file', 0o666)]);
    expect(loose.detail).toBe('/var/lib/x is 0755 (want 0700); identity.json is 0644 (want 0600); status.json is 0666 (writable by group or others)');
    expect(checkStateTree('/nope', []).status).toBe('FAIL');
  });

  it('disk: under 10 MiB fails, under 100 MiB warns', () => {
    expect(checkDisk('/s', { freeBytes: 5 * MiB, totalBytes: 1000 * MiB })).toMatchObject({ status: 'FAIL', detail: '5.0 MiB free of 1000.0 MiB on /s' });
    expect(checkDisk('/s', { freeBytes: 50 * MiB, totalBytes: 1000 * MiB }).status).toBe('WARN');
    expect(checkDisk('/s', { freeBytes: 500 * MiB, totalBytes: 1000 * MiB }).status).toBe('PASS');
  });

  it('endpoints: scheme default ports, IPv6 literals', () => {
    expect(endpointOf('mqtts://broker.example')).toEqual({ host: 'broker.example', port: 8883 });
    expect(endpointOf('mqtt://[::1]:1884')).toEqual({ host: '[::1]', port: 1884 });
    expect(endpointOf('http://bootstrap.example:9013/base')).toEqual({ host: 'bootstrap.example', port: 9013 });
    expect(endpointOf('not a url')).toBeUndefined();
  });
});
