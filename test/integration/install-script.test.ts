import { spawnSync } from 'node:child_process';
import type { SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';

/**
 * scripts/install.sh against a staging root (--root), the way an image builder uses it: real files,
 * owners and modes, the real systemd-sysusers and `systemctl --root`. Nothing on the host changes.
 * Needs root (files are installed root-owned) and the Debian package systemd.
 */
const REPO = new URL('../..', import.meta.url).pathname;
const INSTALL_SH = join(REPO, 'scripts/install.sh');
const UNIT = 'etc/systemd/system/mg-device-agent.service';
const WANTS_LINK = 'etc/systemd/system/multi-user.target.wants/mg-device-agent.service';

const isRoot = process.getuid?.() === 0;
const hasTools = ['systemd-sysusers', 'systemctl'].every((tool) => spawnSync(tool, ['--version']).status === 0);
const onCi = process.env.CI === 'true';
const runnable = isRoot && hasTools;
if (!runnable && !onCi) {
  console.warn(
    `\n!!! SKIPPING install.sh tests: they need root (${isRoot ? 'ok' : 'missing'}) and systemd-sysusers + systemctl (${hasTools ? 'ok' : 'missing'}). !!!\n`,
  );
}

const t = useTeardown();

/** A release tree as scripts/build-release.sh lays it out, with a stand-in program. */
function fakeRelease(): string {
  const dir = join(tempWorkDir(t, 'mgda-release-'), 'mg-device-agent-0.1.0');
  mkdirSync(join(dir, 'dist/cli'), { recursive: true });
  mkdirSync(join(dir, 'dist/devstack'), { recursive: true });
  mkdirSync(join(dir, 'config'), { recursive: true });
  writeFileSync(join(dir, 'dist/cli/main.js'), 'console.log("0.1.0");\n');
  writeFileSync(join(dir, 'dist/devstack/demo.js'), '// development only\n');
  writeFileSync(join(dir, 'THIRD_PARTY_LICENSES'), 'zod@4.6.7 (MIT)\n');
  // Written 0600 as under a umask of 077: the installer must still make it readable to the service.
  writeFileSync(join(dir, 'package.json'), '{"name":"mg-device-agent","version":"0.1.0"}\n', { mode: 0o600 });
  writeFileSync(join(dir, 'config/agent.example.json'), '{ "bootstrap": {} }\n');
  writeFileSync(join(dir, 'RELEASE'), 'mg-device-agent 0.1.0\n');
  cpSync(join(REPO, 'systemd'), join(dir, 'systemd'), { recursive: true });
  mkdirSync(join(dir, 'scripts'));
  cpSync(INSTALL_SH, join(dir, 'scripts/install.sh'));
  return dir;
}

function run(args: string[]): SpawnSyncReturns<string> {
  return spawnSync('bash', [INSTALL_SH, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function runOk(args: string[]): string {
  const result = run(args);
  expect(result.status, `install.sh ${args.join(' ')}\n${result.stdout}\n${result.stderr}`).toBe(0);
  return result.stdout;
}

interface Entry {
  type: 'dir' | 'file' | 'link';
  mode: string;
  owner: string;
  target?: string;
  sha256?: string;
}

/** Every path under the root with its type, mode, owner and content hash (or link target). */
function snapshot(root: string): Map<string, Entry> {
  const entries = new Map<string, Entry>();
  const walk = (relative: string): void => {
    for (const name of readdirSync(join(root, relative))) {
      const path = relative === '' ? name : `${relative}/${name}`;
      const info = lstatSync(join(root, path));
      const base = { mode: (info.mode & 0o7777).toString(8).padStart(4, '0'), owner: `${info.uid}:${info.gid}` };
      if (info.isSymbolicLink()) entries.set(path, { type: 'link', ...base, target: readlinkSync(join(root, path)) });
      else if (info.isDirectory()) {
        entries.set(path, { type: 'dir', ...base });
        walk(path);
      } else {
        const sha256 = createHash('sha256').update(readFileSync(join(root, path))).digest('hex');
        entries.set(path, { type: 'file', ...base, sha256 });
      }
    }
  };
  walk('');
  return entries;
}

function passwdEntry(root: string, file: 'passwd' | 'group', name: string): string[] | undefined {
  const line = readFileSync(join(root, 'etc', file), 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  return line?.split(':');
}

describe.skipIf(!runnable && !onCi)('scripts/install.sh into a staging root', () => {
  it('has what it needs: root and systemd tools (required under CI)', () => {
    expect(isRoot, 'run the install tests as root').toBe(true);
    expect(hasTools, 'install the Debian package systemd').toBe(true);
  });

  it('installs every path with the right owner and mode, and a second run changes nothing', () => {
    const release = fakeRelease();
    const root = tempWorkDir(t, 'mgda-root-');

    const output = runOk(['--root', root, '--source', release, '--node', process.execPath]);
    expect(output).toContain('mg-device-agent.service is enabled');
    const first = snapshot(root);

    const expectEntry = (path: string, type: Entry['type'], mode: string, owner = '0:0'): Entry => {
      const entry = first.get(path);
      expect(entry, path).toBeDefined();
      expect({ path, type: entry?.type, mode: entry?.mode, owner: entry?.owner }).toEqual({ path, type, mode, owner });
      return entry as Entry;
    };
    expectEntry('opt/mg-device-agent', 'dir', '0755');
    expectEntry('opt/mg-device-agent/dist/cli/main.js', 'file', '0644');
    expectEntry('opt/mg-device-agent/package.json', 'file', '0644');
    expectEntry('opt/mg-device-agent/THIRD_PARTY_LICENSES', 'file', '0644');
    expect(first.has('opt/mg-device-agent/node_modules')).toBe(false); // the release is one bundle
    expect(first.has('opt/mg-device-agent/dist/devstack')).toBe(false);
    expect(first.has('opt/mg-device-agent/RELEASE')).toBe(false);
    expectEntry('usr/local/bin/mg-device-agent', 'file', '0755');
    expect(readFileSync(join(root, 'usr/local/bin/mg-device-agent'), 'utf8')).toContain(
      'exec node /opt/mg-device-agent/dist/cli/main.js "$@"',
    );
    expectEntry('etc/mg-device-agent', 'dir', '0755');
    expectEntry('etc/mg-device-agent/credentials', 'dir', '0700');
    expectEntry('etc/mg-device-agent/agent.example.json', 'file', '0644');
    expect(first.has('etc/mg-device-agent/agent.json')).toBe(false);
    expectEntry(UNIT, 'file', '0644');
    expect(readFileSync(join(root, UNIT), 'utf8')).toBe(readFileSync(join(REPO, 'systemd/mg-device-agent.service'), 'utf8'));
    expect(expectEntry(WANTS_LINK, 'link', '0777').target).toBe('/etc/systemd/system/mg-device-agent.service');
    expectEntry('etc/sysusers.d/mg-device-agent.conf', 'file', '0644');
    expectEntry('etc/credstore', 'dir', '0700');
    expect(expectEntry('etc/credstore/mg-device-agent.encrypt_key', 'link', '0777').target).toBe('/etc/mg-device-agent/credentials/encrypt_key');
    expect(expectEntry('etc/credstore/mg-device-agent.control_secret', 'link', '0777').target).toBe('/etc/mg-device-agent/credentials/control_secret');
    // The state directory is systemd's to create (StateDirectory=, 0700, owned by the user).
    expect(first.has('var/lib/mg-device-agent')).toBe(false);
    // Nothing of the installer's own working files left behind.
    expect([...first.keys()].filter((p) => p.endsWith('.new') || p.endsWith('.old'))).toEqual([]);

    const user = passwdEntry(root, 'passwd', 'mg-device-agent');
    expect(user).toBeDefined();
    const [, , uid, gid, , home, shell] = user ?? [];
    expect(Number(uid)).toBeGreaterThan(0);
    expect(Number(uid)).toBeLessThan(1000);
    expect(passwdEntry(root, 'group', 'mg-device-agent')?.[2]).toBe(gid);
    expect(home).toBe('/var/lib/mg-device-agent');
    expect(shell).toBe('/usr/sbin/nologin');

    runOk(['--root', root, '--source', release, '--node', process.execPath]);
    expect(snapshot(root)).toEqual(first);
  });

  it('installs the same from a release tarball', () => {
    const release = fakeRelease();
    const tarball = join(tempWorkDir(t, 'mgda-tar-'), 'mg-device-agent-0.1.0.tar.gz');
    const packed = spawnSync('tar', ['-czf', tarball, '-C', join(release, '..'), 'mg-device-agent-0.1.0']);
    expect(packed.status).toBe(0);
    const fromTree = tempWorkDir(t, 'mgda-root-');
    const fromTarball = tempWorkDir(t, 'mgda-root-');

    runOk(['--root', fromTree, '--source', release]);
    runOk(['--root', fromTarball, '--source', tarball]);

    const strip = (entries: Map<string, Entry>): Map<string, Entry> => {
      // sysusers stamps the day into shadow; everything else must match byte for byte.
      entries.delete('etc/shadow');
      return entries;
    };
    expect(strip(snapshot(fromTarball))).toEqual(strip(snapshot(fromTree)));
  });

  it('installs from a built source checkout with production dependencies only', () => {
    const checkout = tempWorkDir(t, 'mgda-checkout-');
    for (const file of ['package.json', 'package-lock.json']) cpSync(join(REPO, file), join(checkout, file));
    for (const dir of ['systemd', 'scripts']) cpSync(join(REPO, dir), join(checkout, dir), { recursive: true });
    mkdirSync(join(checkout, 'dist/cli'), { recursive: true });
    mkdirSync(join(checkout, 'dist/devstack'), { recursive: true });
    writeFileSync(join(checkout, 'dist/cli/main.js'), 'console.log("checkout build");\n');
    writeFileSync(join(checkout, 'dist/devstack/demo.js'), '// development only\n');
    // The checkout's own node_modules holds dev tools; they must not reach the device.
    mkdirSync(join(checkout, 'node_modules/vitest'), { recursive: true });
    writeFileSync(join(checkout, 'node_modules/vitest/package.json'), '{"name":"vitest","version":"0.0.0"}\n');
    const root = tempWorkDir(t, 'mgda-root-');

    // Offline: the npm cache that installed this checkout has every locked package.
    const result = spawnSync('bash', [join(checkout, 'scripts/install.sh'), '--root', root], {
      encoding: 'utf8',
      env: { ...process.env, npm_config_offline: 'true' },
    });
    expect(result.status, `${result.stdout}${result.stderr}`).toBe(0);

    const installed = join(root, 'opt/mg-device-agent');
    const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    for (const [dep, version] of Object.entries(pkg.dependencies)) {
      expect(JSON.parse(readFileSync(join(installed, 'node_modules', dep, 'package.json'), 'utf8')).version, dep).toBe(version);
    }
    for (const dev of ['vitest', 'aedes', 'typescript', 'nock']) expect(existsSync(join(installed, 'node_modules', dev)), dev).toBe(false);
    expect(readFileSync(join(installed, 'dist/cli/main.js'), 'utf8')).toContain('checkout build');
    expect(existsSync(join(installed, 'dist/devstack'))).toBe(false);
    expect(existsSync(join(installed, 'package-lock.json'))).toBe(false);
  });

  it('leaves the operator\'s configuration and credentials alone on reinstall and uninstall; purge removes them', () => {
    const release = fakeRelease();
    const root = tempWorkDir(t, 'mgda-root-');
    runOk(['--root', root, '--source', release]);

    const externalKey = join(root, 'etc/mg-device-agent/credentials/external_key');
    const config = join(root, 'etc/mg-device-agent/agent.json');
    const stateFile = join(root, 'var/lib/mg-device-agent/current/config.json');
    writeFileSync(externalKey, 'device-external-key\n', { mode: 0o600 });
    writeFileSync(config, '{ "bootstrap": { "url": "http://127.0.0.1:9013" } }\n', { mode: 0o644 });
    mkdirSync(join(root, 'var/lib/mg-device-agent/current'), { recursive: true, mode: 0o700 });
    writeFileSync(stateFile, '{}\n');

    runOk(['--root', root, '--source', release]);
    expect(readFileSync(externalKey, 'utf8')).toBe('device-external-key\n');
    expect(lstatSync(externalKey).mode & 0o777).toBe(0o600);
    expect(readFileSync(config, 'utf8')).toContain('127.0.0.1:9013');

    runOk(['--root', root, '--uninstall']);
    for (const gone of ['opt/mg-device-agent', 'usr/local/bin/mg-device-agent', UNIT, WANTS_LINK, 'etc/sysusers.d/mg-device-agent.conf', 'etc/credstore/mg-device-agent.encrypt_key', 'etc/credstore/mg-device-agent.control_secret']) {
      expect(lstatSync(join(root, gone), { throwIfNoEntry: false }), gone).toBeUndefined();
    }
    expect(readFileSync(externalKey, 'utf8')).toBe('device-external-key\n');
    expect(readFileSync(config, 'utf8')).toContain('127.0.0.1:9013');
    expect(existsSync(stateFile)).toBe(true);
    expect(passwdEntry(root, 'passwd', 'mg-device-agent')).toBeDefined();

    runOk(['--root', root, '--uninstall', '--purge']);
    expect(existsSync(join(root, 'etc/mg-device-agent'))).toBe(false);
    expect(existsSync(join(root, 'var/lib/mg-device-agent'))).toBe(false);
    // Kept on purpose: a reused UID would own whatever the old one left behind.
    expect(passwdEntry(root, 'passwd', 'mg-device-agent')).toBeDefined();
  });

  it('never replaces an encryption key put straight into the credential store; purge removes it', () => {
    const release = fakeRelease();
    const root = tempWorkDir(t, 'mgda-root-');
    const storeKey = join(root, 'etc/credstore/mg-device-agent.encrypt_key');
    mkdirSync(join(root, 'etc/credstore'), { recursive: true, mode: 0o700 });
    writeFileSync(storeKey, 'sixteen byte key\n', { mode: 0o600 });

    runOk(['--root', root, '--source', release]);
    runOk(['--root', root, '--source', release]);
    expect(lstatSync(storeKey).isFile()).toBe(true);
    expect(readFileSync(storeKey, 'utf8')).toBe('sixteen byte key\n');

    runOk(['--root', root, '--uninstall']);
    expect(readFileSync(storeKey, 'utf8')).toBe('sixteen byte key\n');
    runOk(['--root', root, '--purge']);
    expect(lstatSync(storeKey, { throwIfNoEntry: false })).toBeUndefined();
  });

  it('refuses a Node.js older than 20.19 with a clear message, before touching anything', () => {
    const release = fakeRelease();
    const bin = tempWorkDir(t, 'mgda-node-');
    const fakeNode = (version: string): string => {
      const path = join(bin, `node-${version}`);
      writeFileSync(path, `#!/bin/sh\necho v${version}\n`);
      chmodSync(path, 0o755);
      return path;
    };

    for (const old of ['18.19.0', '20.18.3']) {
      const root = tempWorkDir(t, 'mgda-root-');
      const result = run(['--root', root, '--source', release, '--node', fakeNode(old)]);
      expect(result.status).not.toBe(0);
      expect(result.stderr).toContain(`Node.js v${old} is too old`);
      expect(result.stderr).toContain('20.19 or newer');
      expect(readdirSync(root)).toEqual([]);
    }
    for (const recent of ['20.19.0', '22.3.1']) {
      const root = tempWorkDir(t, 'mgda-root-');
      runOk(['--root', root, '--source', release, '--node', fakeNode(recent)]);
      expect(existsSync(join(root, 'opt/mg-device-agent/dist/cli/main.js'))).toBe(true);
    }
  });

  it('explains itself with --help and rejects what it does not know', () => {
    const help = run(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('Usage: install.sh');
    expect(help.stdout).toContain('--purge');

    const unknown = run(['--frobnicate']);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toContain('unknown option: --frobnicate');

    const root = tempWorkDir(t, 'mgda-root-');
    const now = run(['--root', root, '--now', '--source', fakeRelease()]);
    expect(now.status).not.toBe(0);
    expect(now.stderr).toContain('nothing is started in a staging root');
  });
});
