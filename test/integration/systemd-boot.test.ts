import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/temp-dir.js';

/**
 * The unit under a real systemd: PID 1 of private PID, mount, network, UTS, IPC and cgroup
 * namespaces, with overlays on /etc, /var/lib, /opt and /usr/local so the host is left as it was.
 * scripts/install.sh installs a release-shaped tree there the way it does on a device (live mode:
 * sysusers, daemon-reload, enable, start), and the service is the real
 * systemd/mg-device-agent.service with its full hardening. Its program is a small Node script
 * that uses the real notifier (agent/systemd/notify.ts) and reports what it can and cannot do.
 * This is what proves that systemd accepts the helper's READY=1 and WATCHDOG=1, that the
 * credentials arrive, and that the sandbox leaves Node, systeminformation and `ip` working.
 *
 * Needs root, util-linux (unshare, nsenter), systemd, and a kernel with overlayfs and cgroup2.
 */
const REPO = new URL('../..', import.meta.url).pathname;
const SYSTEMD = '/lib/systemd/systemd';
const UNIT = 'mg-device-agent.service';
const DROP_IN_DIR = `/run/systemd/system/${UNIT}.d`;

function cgroup2Mount(): string | undefined {
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => / - cgroup2 /.test(l));
  return line?.split(' ')[4];
}

const filesystems = existsSync('/proc/filesystems') ? readFileSync('/proc/filesystems', 'utf8') : '';
const requirements: Record<string, boolean> = {
  root: process.getuid?.() === 0,
  systemd: existsSync(SYSTEMD),
  unshare: spawnSync('unshare', ['--version']).status === 0,
  nsenter: spawnSync('nsenter', ['--version']).status === 0,
  overlayfs: /\toverlay\n/.test(filesystems),
  cgroup2: /\tcgroup2\n/.test(filesystems) && cgroup2Mount() !== undefined,
  node: existsSync('/usr/bin/node') || existsSync('/usr/local/bin/node'),
};
const missing = Object.entries(requirements)
  .filter(([, ok]) => !ok)
  .map(([name]) => name);
const onCi = process.env.CI === 'true';
if (missing.length > 0 && !onCi) {
  console.warn(`\n!!! SKIPPING the real-systemd unit test: missing ${missing.join(', ')}. Under CI=true this is a failure. !!!\n`);
}

/** Installed as dist/cli/main.js, so the unit's ExecStart runs it through install.sh's wrapper. */
const CHECK_PROGRAM = String.raw`
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import si from 'systeminformation';
import { createSystemdNotifier } from '../systemd/notify.js';

const report = {};
const attempt = async (name, fn) => {
  try { report[name] = await fn(); } catch (e) { report[name] = { error: e.code ?? 'ERR' }; }
};
const credential = (name) => {
  const path = process.env.CREDENTIALS_DIRECTORY + '/' + name;
  const data = fs.readFileSync(path);
  const st = fs.statSync(path);
  return { sha256: createHash('sha256').update(data).digest('hex'), bytes: data.length, mode: (st.mode & 0o777).toString(8), uid: st.uid };
};
await attempt('pid', () => process.pid);
await attempt('user', () => os.userInfo().username);
await attempt('externalKey', () => credential('external_key'));
await attempt('encryptKey', () => credential('encrypt_key'));
await attempt('osInterfaces', () => Object.keys(os.networkInterfaces()));
await attempt('siInterfaces', async () => (await si.networkInterfaces()).map((i) => i.iface));
await attempt('siMemory', async () => (await si.mem()).total > 0);
await attempt('ipLink', () => execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' }));
await attempt('stateFile', () => {
  fs.writeFileSync(process.env.STATE_DIRECTORY + '/probe', 'x');
  const dir = fs.statSync(process.env.STATE_DIRECTORY);
  const file = fs.statSync(process.env.STATE_DIRECTORY + '/probe');
  return { dirMode: (dir.mode & 0o777).toString(8), dirUid: dir.uid, fileMode: (file.mode & 0o777).toString(8) };
});
await attempt('writeEtc', () => { fs.writeFileSync('/etc/mg-device-agent/probe', 'x'); return 'written'; });
await attempt('writeOpt', () => { fs.writeFileSync('/opt/mg-device-agent/probe', 'x'); return 'written'; });
await attempt('readCredentialsSource', () => fs.readdirSync('/etc/mg-device-agent/credentials'));
await attempt('chown', () => { fs.chownSync(process.env.STATE_DIRECTORY + '/probe', 0, 0); return 'changed'; });
console.log('REPORT ' + JSON.stringify(report));

const logger = {
  warn: (fields, msg) => console.log('WARN ' + JSON.stringify({ ...fields, msg })),
  debug: () => {},
};
const notifier = createSystemdNotifier({ logger });
notifier.startWatchdog(() => true);
notifier.ready('connected (check)');
process.on('SIGHUP', () => {
  notifier.reloading('reloading');
  setTimeout(() => notifier.ready('reloaded'), 100);
});
process.on('SIGTERM', async () => {
  notifier.stopping('stopping');
  notifier.stop();
  await notifier.flush();
  process.exit(0);
});
setInterval(() => {}, 60_000);
`;

function innerScript(base: string): string {
  return `#!/bin/bash
set -euo pipefail
B=${base}
# Everything below happens in this namespace's own copy of the mount tree.
mount --make-rprivate /
for d in etc var/lib opt usr/local; do
  mkdir -p "$B/overlay/$d/upper" "$B/overlay/$d/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$B/overlay/$d/upper,workdir=$B/overlay/$d/work" "/$d"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p ${DROP_IN_DIR} /run/check
umount -R /sys/fs/cgroup 2>/dev/null || true
mount -t cgroup2 cgroup2 /sys/fs/cgroup

# What the operator provides: the external key, root-only.
install -d -m 0755 /etc/mg-device-agent
install -d -m 0700 /etc/mg-device-agent/credentials
install -m 0600 "$B/external_key" /etc/mg-device-agent/credentials/external_key

# Only what the test is about: no sysinit.target, output to a file instead of the journal.
cat > ${DROP_IN_DIR}/00-test.conf <<'EOF'
[Unit]
DefaultDependencies=no
[Service]
StandardOutput=file:/run/check/output
StandardError=file:/run/check/output
EOF
cat > /run/systemd/system/check.target <<'EOF'
[Unit]
DefaultDependencies=no
EOF
export container=mg-device-agent-test
# A container's PID 1 leaves propagation alone, but its credential set-up mounts in a helper's
# namespace and relies on the mount propagating back.
mount --make-rshared /
exec ${SYSTEMD} --system --unit=check.target --log-level=warning
`;
}

interface Booted {
  pid1: number;
  release: string;
  unshare: ChildProcess;
  cleanup: () => Promise<void>;
}

let booted: Booted | undefined;
let externalKey = '';

function inNamespace(command: string): { status: number | null; stdout: string; stderr: string } {
  if (booted === undefined) throw new Error('systemd is not running');
  const result = spawnSync('nsenter', ['-t', String(booted.pid1), '-a', 'bash', '-c', command], { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function show(...properties: string[]): Record<string, string> {
  const result = inNamespace(`systemctl show ${UNIT} ${properties.map((p) => `-p ${p}`).join(' ')}`);
  return Object.fromEntries(
    result.stdout
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
}

async function waitFor(what: string, predicate: () => boolean, deadlineMs = 20_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; unit: ${JSON.stringify(show('ActiveState', 'SubState', 'Result', 'NRestarts', 'StatusText'))}`);
    await sleep(100);
  }
}

function report(): Record<string, unknown> {
  const line = inNamespace('cat /run/check/output').stdout
    .split('\n')
    .find((l) => l.startsWith('REPORT '));
  expect(line, 'the check program printed no report').toBeDefined();
  return JSON.parse(line?.slice('REPORT '.length) ?? '{}') as Record<string, unknown>;
}

/** Replaces the test case's drop-in (none when undefined), reloads, and clears the failed state. */
function configure(dropIn: string | undefined): void {
  const write = dropIn === undefined ? '' : `echo ${Buffer.from(`${dropIn}\n`).toString('base64')} | base64 -d > ${DROP_IN_DIR}/50-case.conf;`;
  const result = inNamespace(`rm -f ${DROP_IN_DIR}/50-case.conf; ${write} systemctl daemon-reload; systemctl reset-failed ${UNIT} 2>/dev/null; true`);
  expect(result.status, result.stderr).toBe(0);
}

async function restartAndWaitRunning(): Promise<void> {
  inNamespace(`: > /run/check/output; systemctl restart ${UNIT}`);
  await waitFor('the unit to be running', () => show('SubState').SubState === 'running');
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

describe.skipIf(missing.length > 0 && !onCi)('the unit under a real systemd (PID 1 in private namespaces)', () => {
  beforeAll(async () => {
    expect(missing, 'requirements for running systemd in namespaces').toEqual([]);
    const temp = makeTempDir('mgda-systemd-');
    const base = temp.dir;

    // A release-shaped tree: the check program as the CLI, bundled by esbuild with the agent's own
    // notifier and systeminformation as the release is (no node_modules: the unit's PrivateTmp
    // hides /tmp, where a CI checkout may well live), the real unit, sysusers file and installer.
    const release = join(base, 'release');
    const checkSource = join(base, 'check-program.mjs');
    writeFileSync(checkSource, CHECK_PROGRAM.replace("'../systemd/notify.js'", JSON.stringify(join(REPO, 'agent/systemd/notify.ts'))));
    const bundled = spawnSync(
      join(REPO, 'node_modules/.bin/esbuild'),
      [checkSource, '--bundle', '--format=esm', '--platform=node', '--target=node20.19', `--outfile=${join(release, 'dist/cli/main.js')}`, '--log-level=warning',
        "--banner:js=import { createRequire as __bundleCreateRequire } from 'node:module'; const require = __bundleCreateRequire(import.meta.url);"],
      { encoding: 'utf8', env: { ...process.env, NODE_PATH: join(REPO, 'node_modules') } },
    );
    expect(bundled.status, bundled.stderr).toBe(0);
    writeFileSync(join(release, 'package.json'), '{ "name": "mg-device-agent", "version": "0.0.0-test", "type": "module" }\n');
    writeFileSync(join(release, 'RELEASE'), 'mg-device-agent 0.0.0-test\n');
    writeFileSync(join(release, 'THIRD_PARTY_LICENSES'), 'systeminformation (MIT)\n');
    cpSync(join(REPO, 'systemd'), join(release, 'systemd'), { recursive: true });
    mkdirSync(join(release, 'scripts'));
    cpSync(join(REPO, 'scripts/install.sh'), join(release, 'scripts/install.sh'));
    externalKey = `external-key-${randomBytes(8).toString('hex')}`;
    writeFileSync(join(base, 'external_key'), `${externalKey}\n`, { mode: 0o600 });
    writeFileSync(join(base, 'inner.sh'), innerScript(base), { mode: 0o755 });

    const cgroupRoot = join(cgroup2Mount() ?? '/sys/fs/cgroup', readFileSync('/proc/self/cgroup', 'utf8').match(/^0::(.*)$/m)?.[1] ?? '/');
    const cgroupsBefore = new Set(readdirSync(cgroupRoot));
    const unshare = spawn('unshare', ['--pid', '--fork', '--mount', '--mount-proc', '--net', '--uts', '--ipc', '--cgroup', join(base, 'inner.sh')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<void>((resolve) => unshare.once('exit', () => resolve()));
    let output = '';
    unshare.stdout?.on('data', (c: Buffer) => (output += c.toString()));
    unshare.stderr?.on('data', (c: Buffer) => (output += c.toString()));

    booted = {
      pid1: 0,
      release,
      unshare,
      cleanup: async () => {
        // Killing a PID namespace's init kills everything in it; the overlays go with the mount namespace.
        if (booted !== undefined && booted.pid1 > 0) spawnSync('kill', ['-KILL', String(booted.pid1)]);
        unshare.kill('SIGKILL');
        await Promise.race([exited, sleep(10_000)]);
        // systemd's cgroups (init.scope, system.slice...) live in the host's cgroup2 tree: remove them
        // once their last process is gone.
        const created = readdirSync(cgroupRoot).filter((name) => !cgroupsBefore.has(name) && /\.(scope|slice)$/.test(name));
        for (let attempt = 0; attempt < 50 && created.some((name) => existsSync(join(cgroupRoot, name))); attempt++) {
          for (const name of created) {
            spawnSync('find', [join(cgroupRoot, name), '-depth', '-type', 'd', '-exec', 'rmdir', '{}', '+'], { stdio: 'ignore' });
          }
          await sleep(100);
        }
        temp.cleanup();
      },
    };

    await waitFor('systemd to start', () => {
      const children = existsSync(`/proc/${unshare.pid}/task/${unshare.pid}/children`)
        ? readFileSync(`/proc/${unshare.pid}/task/${unshare.pid}/children`, 'utf8').trim()
        : '';
      const pid = Number(children.split(' ')[0]);
      if (!(pid > 0) || !readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith(SYSTEMD)) return false;
      if (booted !== undefined) booted.pid1 = pid;
      return true;
    }, 30_000).catch((error: unknown) => {
      throw new Error(`${String(error)}\n${output}`);
    });
    await waitFor('systemd to answer', () => inNamespace('systemctl is-system-running').stdout.trim() !== '', 30_000);

    const install = inNamespace(`bash ${join(release, 'scripts/install.sh')} --now`);
    expect(install.status, `${install.stdout}${install.stderr}`).toBe(0);
    await waitFor('the unit to be running', () => show('SubState').SubState === 'running', 30_000);
  }, 90_000);

  afterAll(async () => {
    await booted?.cleanup();
    booted = undefined;
  }, 30_000);

  it('is installed, enabled and started by install.sh, and active only through the READY=1 the notifier sends', () => {
    const state = show('Type', 'NotifyAccess', 'ActiveState', 'SubState', 'StatusText', 'MainPID', 'UnitFileState', 'FragmentPath');
    expect(state).toMatchObject({
      Type: 'notify',
      NotifyAccess: 'all',
      ActiveState: 'active',
      SubState: 'running',
      StatusText: 'connected (check)',
      UnitFileState: 'enabled',
      FragmentPath: '/etc/systemd/system/mg-device-agent.service',
    });
    const checked = report();
    // The PID in the service's own PID namespace is the one systemd tracks: the wrapper exec'd node.
    expect(String(checked.pid)).toBe(state.MainPID);
    expect(checked.user).toBe('mg-device-agent');
  });

  it('hands over the external key, and no encrypt_key while its file is absent', () => {
    const checked = report();
    expect(checked.externalKey).toMatchObject({ sha256: sha256(`${externalKey}\n`), mode: '400' });
    expect(checked.encryptKey).toEqual({ error: 'ENOENT' });
    // The source files stay root-only: only systemd's copy is readable.
    expect(checked.readCredentialsSource).toEqual({ error: 'EACCES' });
  });

  it('leaves Node, systeminformation and ip working inside the sandbox, and nothing more', () => {
    const checked = report();
    expect(checked.osInterfaces).toContain('lo');
    expect(checked.siInterfaces).toContain('lo');
    expect(checked.siMemory).toBe(true);
    expect(checked.ipLink).toMatch(/\blo\b/);
    expect(checked.stateFile).toMatchObject({ dirMode: '700', fileMode: '600' });
    expect(checked.writeEtc).toEqual({ error: 'EACCES' });
    expect(checked.writeOpt).toEqual({ error: 'EROFS' });
    // A filtered system call fails with EPERM; the process is not killed.
    expect(checked.chown).toEqual({ error: 'EPERM' });
  });

  it('hands over the encryption key when its file exists', async () => {
    const key = randomBytes(16).toString('hex');
    inNamespace(`printf '%s\\n' ${key} > /etc/mg-device-agent/credentials/encrypt_key; chmod 600 /etc/mg-device-agent/credentials/encrypt_key`);
    await restartAndWaitRunning();
    expect(report().encryptKey).toMatchObject({ sha256: sha256(`${key}\n`), mode: '400' });
    inNamespace('rm /etc/mg-device-agent/credentials/encrypt_key');
  });

  it('is kept alive by the watchdog pings (a 3 s watchdog, watched for 8 s)', async () => {
    configure('[Service]\nWatchdogSec=3s');
    await restartAndWaitRunning();
    const { MainPID } = show('MainPID');
    await sleep(8_000);
    // Unattributed pings would have had it killed (SIGABRT) and restarted with a new PID.
    expect(show('ActiveState', 'SubState', 'MainPID', 'NRestarts')).toEqual({ ActiveState: 'active', SubState: 'running', MainPID, NRestarts: '0' });
    configure(undefined);
  });

  it('reloads on systemctl reload: RELOADING=1, then READY=1', async () => {
    await restartAndWaitRunning();
    const reload = inNamespace(`systemctl reload ${UNIT}`);
    expect(reload.status, reload.stderr).toBe(0);
    await waitFor('the reloaded status', () => show('StatusText').StatusText === 'reloaded');
    expect(show('ActiveState', 'SubState')).toEqual({ ActiveState: 'active', SubState: 'running' });
  });

  it('stops cleanly on systemctl stop', () => {
    const stop = inNamespace(`systemctl stop ${UNIT}`);
    expect(stop.status, stop.stderr).toBe(0);
    expect(show('ActiveState', 'Result', 'ExecMainStatus')).toEqual({ ActiveState: 'inactive', Result: 'success', ExecMainStatus: '0' });
  });

  it('does not restart after a configuration error (exit 78)', async () => {
    configure('[Service]\nRestartSec=1s\nExecStart=\nExecStart=/bin/sh -c "exit 78"');
    inNamespace(`systemctl start ${UNIT}`);
    await waitFor('the failure', () => show('ActiveState').ActiveState === 'failed');
    await sleep(3_000);
    expect(show('ActiveState', 'ExecMainStatus', 'NRestarts')).toEqual({ ActiveState: 'failed', ExecMainStatus: '78', NRestarts: '0' });
  });

  it('does not restart when the external key file is missing (243, CREDENTIALS)', async () => {
    configure('[Service]\nRestartSec=1s');
    inNamespace('mv /etc/mg-device-agent/credentials/external_key /etc/mg-device-agent/external_key.moved');
    inNamespace(`systemctl start ${UNIT}`);
    await waitFor('the failure', () => show('ActiveState').ActiveState === 'failed');
    await sleep(3_000);
    expect(show('ActiveState', 'ExecMainStatus', 'NRestarts')).toEqual({ ActiveState: 'failed', ExecMainStatus: '243', NRestarts: '0' });
    inNamespace('mv /etc/mg-device-agent/external_key.moved /etc/mg-device-agent/credentials/external_key');
  });

  it('restarts after any other failure', async () => {
    configure('[Service]\nRestartSec=1s\nExecStart=\nExecStart=/bin/sh -c "exit 1"');
    inNamespace(`systemctl start ${UNIT}`);
    await waitFor('two automatic restarts', () => Number(show('NRestarts').NRestarts) >= 2);
    configure(undefined);
    inNamespace(`systemctl stop ${UNIT}`);
  });

  it('is stopped and removed by install.sh --purge, credentials and state included', async () => {
    await restartAndWaitRunning();
    const purge = inNamespace(`bash ${join(booted?.release ?? '', 'scripts/install.sh')} --purge`);
    expect(purge.status, `${purge.stdout}${purge.stderr}`).toBe(0);
    expect(show('LoadState', 'ActiveState')).toEqual({ LoadState: 'not-found', ActiveState: 'inactive' });
    const left = inNamespace('ls -d /opt/mg-device-agent /usr/local/bin/mg-device-agent /etc/mg-device-agent /var/lib/mg-device-agent 2>/dev/null; true');
    expect(left.stdout.trim()).toBe('');
  });
});
