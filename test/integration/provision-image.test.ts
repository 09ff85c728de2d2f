import { spawnSync } from 'node:child_process';
import type { SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { AgentConfigSchema } from '../../agent/config/schema.js';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';

/**
 * scripts/provision-image.sh against a small synthetic Raspberry-Pi-like disk image (MBR, FAT32
 * "bootfs" + ext4 "rootfs", built without mounting), read back with debugfs and mtools: what a
 * production line relies on is the bytes, modes and owners inside the image, and keys never printed.
 * Needs the Debian packages fdisk, dosfstools, mtools, e2fsprogs, jq (and coreutils, tar).
 */
const REPO = new URL('../..', import.meta.url).pathname;
const SCRIPT = join(REPO, 'scripts/provision-image.sh');
const IMPORTER_SOURCE = join(REPO, 'scripts/mg-device-agent-import-bundle.sh');
const REPO_UNIT = join(REPO, 'systemd/mg-device-agent.service');

const CONFIG = '/etc/mg-device-agent/agent.json';
const AGENT_DIR = '/etc/mg-device-agent';
const CREDENTIALS_DIR = '/etc/mg-device-agent/credentials';
const EXTERNAL_KEY = '/etc/mg-device-agent/credentials/external_key';
const ENCRYPT_KEY = '/etc/mg-device-agent/credentials/encrypt_key';
const UNIT = '/etc/systemd/system/mg-device-agent.service';
const UNIT_LINK = '/etc/systemd/system/multi-user.target.wants/mg-device-agent.service';
const IMPORTER = '/usr/local/sbin/mg-device-agent-import-bundle';
const IMPORT_UNIT = '/etc/systemd/system/mg-device-agent-import-bundle.service';
const IMPORT_UNIT_LINK = '/etc/systemd/system/multi-user.target.wants/mg-device-agent-import-bundle.service';
const BUNDLE_ON_BOOT = 'mg-device-agent-bundle.tar';

// Distinctive values, so "never printed" is checked against the real key text.
const EXTERNAL_KEY_TEXT = 'ext-key-7f3c9a1e-SECRET-d41d8cd9';
const ENCRYPT_KEY_TEXT = 'enc-key-32-bytes-SECRET-0123456a'; // 32 bytes: AES-256

const TOOL_ENV = { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin`, DEBUGFS_PAGER: '__none__', MTOOLS_SKIP_CHECK: '1', LC_ALL: 'C' };
const REQUIRED_TOOLS = ['sfdisk', 'mkfs.vfat', 'mkfs.ext4', 'debugfs', 'e2fsck', 'mcopy', 'mdir', 'mtype', 'jq', 'tar', 'sha256sum'];
const missingTools = REQUIRED_TOOLS.filter((tool) => spawnSync('sh', ['-c', `command -v ${tool}`], { env: TOOL_ENV }).status !== 0);
const onCi = process.env.CI === 'true';
if (missingTools.length > 0 && !onCi) {
  console.warn(
    `\n!!! SKIPPING provision-image tests: missing ${missingTools.join(', ')}. ` +
      'Install the Debian packages fdisk dosfstools mtools e2fsprogs jq. !!!\n',
  );
}
const isRoot = process.getuid?.() === 0;
/** nobody: lets a root test run see what an unprivileged user gets. */
const NOBODY = 65534;
if (!isRoot && missingTools.length === 0) {
  console.warn('\n!!! provision-image: not root, so the --rootfs tests that need root-owned files are skipped. !!!\n');
}

// ---------------------------------------------------------------------------------------------
// Tools

function sh(command: string, args: string[], options: { cwd?: string; input?: string } = {}): SpawnSyncReturns<Buffer> {
  const result = spawnSync(command, args, { env: TOOL_ENV, cwd: options.cwd, input: options.input, maxBuffer: 256 * 1024 * 1024 });
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.status}: ${result.stderr.toString()}`);
  }
  return result;
}

interface ScriptRun {
  status: number | null;
  stdout: string;
  stderr: string;
  /** stdout and stderr together: what an operator (or a CI log) sees. */
  output: string;
}

function runScript(args: string[], options: { asUser?: number } = {}): ScriptRun {
  const script = options.asUser === undefined ? SCRIPT : scriptCopyReadableByAll();
  const result = spawnSync('bash', [script, ...args], {
    env: { ...process.env },
    encoding: 'utf8',
    timeout: 120_000,
    ...(options.asUser === undefined ? {} : { uid: options.asUser, gid: options.asUser }),
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr, output: result.stdout + result.stderr };
}

/**
 * The checkout may sit where another user cannot reach it (a clone under /root or a 0700 mktemp
 * directory), so a run as another user gets its own copy of the script and the files it reads.
 */
function scriptCopyReadableByAll(): string {
  const copy = tempWorkDir(t, 'mgda-script-copy-');
  chmodSync(copy, 0o755);
  for (const [dir, source] of [['scripts', SCRIPT], ['scripts', IMPORTER_SOURCE], ['systemd', REPO_UNIT]] as const) {
    mkdirSync(join(copy, dir), { recursive: true, mode: 0o755 });
    chmodSync(join(copy, dir), 0o755);
    const target = join(copy, dir, source.split('/').pop() as string);
    copyFileSync(source, target);
    chmodSync(target, 0o755);
  }
  return join(copy, 'scripts/provision-image.sh');
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

const t = useTeardown();

function writePrivate(path: string, content: string | Buffer, mode = 0o600): string {
  writeFileSync(path, content, { mode });
  chmodSync(path, mode);
  return path;
}

// ---------------------------------------------------------------------------------------------
// A Raspberry-Pi-like image: MBR, partition 1 FAT32 (type c) "bootfs", partition 2 ext4 "rootfs".

const MIB = 1024 * 1024;
const SECTOR = 512;
// FAT32 needs at least 65525 clusters, so 36 MiB with 512-byte clusters; the file stays sparse.
const BOOT_START_SECTOR = 2048;
const BOOT_SECTORS = (36 * MIB) / SECTOR;
const IMAGE_BYTES = 64 * MIB;

interface RootFile {
  content: string;
  mode: number;
}

interface ImageSpec {
  /** Extra files in the root file system (path relative to /), created with these modes. */
  rootFiles?: Record<string, RootFile>;
  /** Extra directories with their modes. */
  rootDirs?: Record<string, number>;
  /** Leave the agent program and its user out, as in an image where the agent was never installed. */
  withoutAgent?: boolean;
}

function buildPiImage(path: string, spec: ImageSpec = {}): void {
  const tree = tempWorkDir(t, 'mgda-rootfs-tree-');
  const mkdir = (relative: string, mode = 0o755) => {
    mkdirSync(join(tree, relative), { recursive: true });
    chmodSync(join(tree, relative), mode);
  };
  const file = (relative: string, content: string, mode = 0o644) => {
    mkdirSync(join(tree, relative, '..'), { recursive: true });
    writeFileSync(join(tree, relative), content);
    chmodSync(join(tree, relative), mode);
  };
  mkdir('etc');
  mkdir('etc/systemd/system/multi-user.target.wants');
  file('etc/hostname', 'raspberrypi\n');
  file('etc/passwd', 'root:x:0:0:root:/root:/bin/bash\n' + (spec.withoutAgent ? '' : 'mg-device-agent:x:998:998::/var/lib/mg-device-agent:/usr/sbin/nologin\n'));
  symlinkSync('/lib/systemd/system/ssh.service', join(tree, 'etc/systemd/system/multi-user.target.wants/ssh.service'));
  if (!spec.withoutAgent) file('usr/local/bin/mg-device-agent', '#!/bin/sh\nexec node /opt/mg-device-agent/dist/cli/main.js "$@"\n', 0o755);
  for (const [relative, mode] of Object.entries(spec.rootDirs ?? {})) mkdir(relative, mode);
  for (const [relative, { content, mode }] of Object.entries(spec.rootFiles ?? {})) file(relative, content, mode);

  writeFileSync(path, '');
  truncateSync(path, IMAGE_BYTES);
  sh('sfdisk', ['--quiet', path], { input: `label: dos\nstart=${BOOT_START_SECTOR}, size=${BOOT_SECTORS}, type=c\ntype=83\n` });
  const [boot, root] = partitions(path);
  if (!boot || !root) throw new Error('sfdisk did not create two partitions');
  sh('mkfs.vfat', ['-F', '32', '-s', '1', '-n', 'bootfs', '--offset', String(boot.start / SECTOR), path, String(boot.size / 1024)]);
  const bootFiles = tempWorkDir(t, 'mgda-bootfs-');
  writeFileSync(join(bootFiles, 'cmdline.txt'), 'console=serial0,115200 root=LABEL=rootfs rootwait\n');
  writeFileSync(join(bootFiles, 'config.txt'), '[all]\nenable_uart=1\n');
  sh('mcopy', ['-i', `${path}@@${boot.start}`, join(bootFiles, 'cmdline.txt'), join(bootFiles, 'config.txt'), '::']);
  // The image's root directory is root-owned whoever runs the test (as root, so is everything).
  sh('mkfs.ext4', ['-q', '-F', '-L', 'rootfs', '-E', `offset=${root.start},root_owner=0:0`, '-d', tree, path, `${root.size / 1024}k`]);
}

interface Partition {
  start: number;
  size: number;
  type: string;
}

/** Partition byte ranges, read independently of the script under test. */
function partitions(image: string): Partition[] {
  const table = JSON.parse(sh('sfdisk', ['--json', image]).stdout.toString()) as {
    partitiontable: { sectorsize?: number; partitions: Array<{ start: number; size: number; type: string }> };
  };
  const sectorSize = table.partitiontable.sectorsize ?? SECTOR;
  return table.partitiontable.partitions.map((p) => ({ start: p.start * sectorSize, size: p.size * sectorSize, type: p.type }));
}

/** Byte offsets of the boot partition (the first) and the root partition (the second, unless told). */
function partitionOffsets(image: string, rootIndex = 1): { boot: number; root: number } {
  const all = partitions(image);
  const boot = all[0];
  const root = all[rootIndex];
  if (!boot || !root) throw new Error(`${image} lacks partitions 1 and ${rootIndex + 1}`);
  return { boot: boot.start, root: root.start };
}

// ---------------------------------------------------------------------------------------------
// Reading an image back: debugfs for ext4, mtools for FAT.

interface Ext4Stat {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  linkTarget: string | undefined;
}

function ext4Stat(image: string, path: string, rootIndex = 1): Ext4Stat | undefined {
  const spec = `${image}?offset=${partitionOffsets(image, rootIndex).root}`;
  const result = spawnSync('debugfs', ['-R', `stat "${path}"`, spec], { env: TOOL_ENV, encoding: 'utf8' });
  if (/File not found by ext2_lookup/.test(result.stderr)) return undefined;
  const type = /Type: (\w+)/.exec(result.stdout)?.[1];
  const mode = /Mode:\s+([0-7]+)/.exec(result.stdout)?.[1];
  const owner = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(result.stdout);
  if (!type || !mode || !owner) throw new Error(`cannot parse debugfs stat ${path}: ${result.stdout}${result.stderr}`);
  return {
    type,
    mode: Number.parseInt(mode, 8),
    uid: Number(owner[1]),
    gid: Number(owner[2]),
    linkTarget: /Fast link dest: "(.*)"/.exec(result.stdout)?.[1],
  };
}

function ext4Read(image: string, path: string, rootIndex = 1): Buffer {
  const spec = `${image}?offset=${partitionOffsets(image, rootIndex).root}`;
  const result = spawnSync('debugfs', ['-R', `cat "${path}"`, spec], { env: TOOL_ENV, maxBuffer: 64 * MIB });
  const errors = result.stderr.toString().split('\n').filter((line) => line !== '' && !/^debugfs [0-9.]+ \(/.test(line));
  if (errors.length > 0) throw new Error(`debugfs cat ${path}: ${errors.join('; ')}`);
  return result.stdout;
}

function ext4ReadJson(image: string, path: string): unknown {
  return JSON.parse(ext4Read(image, path).toString('utf8'));
}

function ext4Names(image: string, directory: string): string[] {
  const spec = `${image}?offset=${partitionOffsets(image).root}`;
  const result = sh('debugfs', ['-R', `ls -l "${directory}"`, spec]);
  return result.stdout
    .toString()
    .split('\n')
    .map((line) => line.trim().split(/\s+/).at(-1) ?? '')
    .filter((name) => name !== '' && name !== '.' && name !== '..');
}

/** e2fsck -fn: 0 when the root file system is consistent. */
function ext4Fsck(image: string): number | null {
  return spawnSync('e2fsck', ['-fn', `${image}?offset=${partitionOffsets(image).root}`], { env: TOOL_ENV }).status;
}

function fatNames(image: string): string[] {
  const result = sh('mdir', ['-b', '-i', `${image}@@${partitionOffsets(image).boot}`, '::']);
  return result.stdout
    .toString()
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => line.replace(/^::\//, ''))
    .sort();
}

function fatRead(image: string, name: string): Buffer {
  return sh('mtype', ['-i', `${image}@@${partitionOffsets(image).boot}`, `::${name}`]).stdout;
}

function readRange(path: string, start: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, length, start);
  } finally {
    closeSync(fd);
  }
  return buffer;
}

function expectFile(image: string, path: string, content: string | Buffer, mode: number, rootIndex = 1): void {
  expect(ext4Stat(image, path, rootIndex), path).toEqual({ type: 'regular', mode, uid: 0, gid: 0, linkTarget: undefined });
  expect(ext4Read(image, path, rootIndex).equals(Buffer.from(content)), `${path} content`).toBe(true);
}

function expectNoSecretsIn(text: string, ...secrets: string[]): void {
  for (const secret of secrets) expect(text).not.toContain(secret);
}

function tarListing(tarFile: string): string[] {
  return sh('tar', ['--list', '--verbose', '--numeric-owner', '--file', tarFile])
    .stdout.toString()
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      const fields = line.split(/\s+/);
      return `${fields[0]} ${fields[1]} ${fields.at(-1)}`;
    })
    .sort();
}

function tarMember(tarFile: string, name: string): Buffer {
  return sh('tar', ['--extract', '--to-stdout', '--file', tarFile, name]).stdout;
}

// ---------------------------------------------------------------------------------------------

describe.skipIf(missingTools.length > 0 && !onCi)('scripts/provision-image.sh', () => {
  const suite = useTeardown('all');
  let suiteDir = '';
  let baseImage = '';
  let baseImageHash = '';
  let externalKeyFile = '';
  let encryptKeyFile = '';

  beforeAll(async () => {
    if (missingTools.length > 0) {
      throw new Error(`provision-image tests need ${missingTools.join(', ')} (Debian: fdisk dosfstools mtools e2fsprogs jq)`);
    }
    suiteDir = tempWorkDir(suite, 'mgda-provision-');
    baseImage = join(suiteDir, 'base.img');
    buildPiImage(baseImage);
    // The file-system trees buildPiImage made are no longer needed.
    await t.run();
    baseImageHash = sha256(baseImage);
    // With a trailing newline, as `echo key > file` writes it: the image must hold the bare key.
    externalKeyFile = writePrivate(join(suiteDir, 'external_key'), `${EXTERNAL_KEY_TEXT}\n`);
    encryptKeyFile = writePrivate(join(suiteDir, 'encrypt_key'), ENCRYPT_KEY_TEXT);
  });

  it('--help lists every option and exits 0', () => {
    const run = runScript(['--help']);
    expect(run.status).toBe(0);
    for (const option of [
      '--image', '--output', '--in-place', '--rootfs', '--bootstrap-url', '--external-key-file', '--encrypt-key-file',
      '--external-id', '--mode', '--batch', '--out-dir', '--bundles', '--install-bundle', '--unit-file', '--force',
    ]) {
      expect(run.stdout).toContain(option);
    }
  });

  it('writes config, keys, unit and enable link into a copy of the image, with root-only modes', () => {
    const dir = tempWorkDir(t, 'mgda-single-');
    const output = join(dir, 'device.img');
    const run = runScript([
      '--image', baseImage, '--output', output,
      '--bootstrap-url', 'http://bootstrap.example.com:9013/',
      '--external-key-file', externalKeyFile, '--encrypt-key-file', encryptKeyFile,
      '--external-id', 'dc:a6:32:01:02:03',
    ]);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expectNoSecretsIn(run.output, EXTERNAL_KEY_TEXT, ENCRYPT_KEY_TEXT);

    // The input is untouched; the output holds keys, so only its owner may read it.
    expect(sha256(baseImage)).toBe(baseImageHash);
    expect(statSync(output).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['device.img']);

    const config = ext4ReadJson(output, CONFIG);
    expect(config).toEqual({
      bootstrap: {
        url: 'http://bootstrap.example.com:9013',
        mode: 'secure',
        encryptKeyFile: ENCRYPT_KEY,
      },
      identity: { externalKeyFile: EXTERNAL_KEY, externalId: 'dc:a6:32:01:02:03' },
    });
    // The agent accepts it as it is.
    expect(AgentConfigSchema.safeParse(config).success).toBe(true);
    expect(ext4Stat(output, CONFIG)).toMatchObject({ type: 'regular', mode: 0o644, uid: 0, gid: 0 });

    expectFile(output, EXTERNAL_KEY, EXTERNAL_KEY_TEXT, 0o600);
    expectFile(output, ENCRYPT_KEY, ENCRYPT_KEY_TEXT, 0o600);
    expect(ext4Stat(output, CREDENTIALS_DIR)).toEqual({ type: 'directory', mode: 0o700, uid: 0, gid: 0, linkTarget: undefined });
    expect(ext4Stat(output, AGENT_DIR)).toMatchObject({ type: 'directory', mode: 0o755, uid: 0, gid: 0 });
    expectFile(output, UNIT, readFileSync(REPO_UNIT), 0o644);
    expect(ext4Stat(output, UNIT_LINK)).toMatchObject({ type: 'symlink', linkTarget: UNIT, uid: 0, gid: 0 });
    // What was there before is still there.
    expect(ext4Stat(output, '/etc/systemd/system/multi-user.target.wants/ssh.service')?.linkTarget).toBe('/lib/systemd/system/ssh.service');
    expect(ext4Read(output, '/etc/hostname').toString()).toBe('raspberrypi\n');
    // No first-boot importer in a per-device image: nothing needs importing.
    expect(ext4Stat(output, IMPORTER)).toBeUndefined();

    expect(ext4Fsck(output)).toBe(0);
    // The boot partition is byte for byte the original.
    const { boot } = partitionOffsets(output);
    expect(readRange(output, boot, BOOT_SECTORS * SECTOR).equals(readRange(baseImage, boot, BOOT_SECTORS * SECTOR))).toBe(true);
    expect(fatNames(output)).toEqual(['cmdline.txt', 'config.txt']);
  });

  it('--in-place keeps the other keys of an existing agent.json, replaces old credentials and tightens their modes', () => {
    const dir = tempWorkDir(t, 'mgda-inplace-');
    const image = join(dir, 'staged.img');
    buildPiImage(image, {
      rootDirs: { 'etc/mg-device-agent': 0o755, 'etc/mg-device-agent/credentials': 0o755 },
      rootFiles: {
        'etc/mg-device-agent/agent.json': {
          content: JSON.stringify({
            bootstrap: { url: 'http://old.example.com:9013', timeoutMs: 20000, mode: 'secure' },
            identity: { externalId: 'old-id', macFormat: 'upper-dash' },
            mqtt: { topicScheme: 'legacy' },
          }),
          mode: 0o644,
        },
        'etc/mg-device-agent/credentials/external_key': { content: 'old-key', mode: 0o644 },
      },
    });
    const unit = writePrivate(join(dir, 'custom.service'), '[Service]\nExecStart=/usr/local/bin/mg-device-agent run\n', 0o644);

    const run = runScript([
      '--image', image, '--in-place', '--mode', 'plain', '--unit-file', unit,
      '--bootstrap-url', 'https://bootstrap.example.com', '--external-key-file', externalKeyFile,
    ]);
    expect(run.status).toBe(0);
    expectNoSecretsIn(run.output, EXTERNAL_KEY_TEXT);

    const config = ext4ReadJson(image, CONFIG);
    // No --external-id: the agent derives it from the MAC, so the old fixed one must go.
    expect(config).toEqual({
      bootstrap: { url: 'https://bootstrap.example.com', timeoutMs: 20000, mode: 'plain' },
      identity: { macFormat: 'upper-dash', externalKeyFile: EXTERNAL_KEY },
      mqtt: { topicScheme: 'legacy' },
    });
    expect(AgentConfigSchema.safeParse(config).success).toBe(true);
    expectFile(image, EXTERNAL_KEY, EXTERNAL_KEY_TEXT, 0o600);
    expect(ext4Stat(image, CREDENTIALS_DIR)).toMatchObject({ type: 'directory', mode: 0o700, uid: 0, gid: 0 });
    expect(ext4Stat(image, ENCRYPT_KEY)).toBeUndefined();
    expectFile(image, UNIT, readFileSync(unit), 0o644);
    expect(ext4Fsck(image)).toBe(0);
  });

  it('finds the root among several ext4 partitions by its /etc, leaving the data partition alone', () => {
    const dir = tempWorkDir(t, 'mgda-threeparts-');
    const image = join(dir, 'three.img');
    writeFileSync(image, '');
    truncateSync(image, IMAGE_BYTES);
    const dataSectors = (8 * MIB) / SECTOR;
    sh('sfdisk', ['--quiet', image], {
      input: `label: dos\nstart=${BOOT_START_SECTOR}, size=${BOOT_SECTORS}, type=c\nsize=${dataSectors}, type=83\ntype=83\n`,
    });
    const [boot, data, root] = partitions(image);
    if (!boot || !data || !root) throw new Error('sfdisk did not create three partitions');
    sh('mkfs.vfat', ['-F', '32', '-s', '1', '--offset', String(boot.start / SECTOR), image, String(boot.size / 1024)]);
    const dataTree = tempWorkDir(t, 'mgda-datatree-');
    writeFileSync(join(dataTree, 'readings.csv'), 't,v\n');
    sh('mkfs.ext4', ['-q', '-F', '-L', 'data', '-E', `offset=${data.start}`, '-d', dataTree, image, `${data.size / 1024}k`]);
    const rootTree = tempWorkDir(t, 'mgda-roottree-');
    mkdirSync(join(rootTree, 'etc'));
    sh('mkfs.ext4', ['-q', '-F', '-L', 'rootfs', '-E', `offset=${root.start}`, '-d', rootTree, image, `${root.size / 1024}k`]);
    const dataBefore = readRange(image, data.start, data.size);

    const run = runScript(['--image', image, '--in-place', '--bootstrap-url', 'http://bs:9013', '--external-key-file', externalKeyFile]);
    expect(run.status).toBe(0);
    expectFile(image, EXTERNAL_KEY, EXTERNAL_KEY_TEXT, 0o600, 2);
    expect(readRange(image, data.start, data.size).equals(dataBefore)).toBe(true);
  });

  it('warns when the image has no agent installed, and still writes the credentials', () => {
    const dir = tempWorkDir(t, 'mgda-noagent-');
    const image = join(dir, 'bare.img');
    buildPiImage(image, { withoutAgent: true });
    const run = runScript(['--image', image, '--in-place', '--bootstrap-url', 'http://bs:9013', '--external-key-file', externalKeyFile]);
    expect(run.status).toBe(0);
    expect(run.stderr).toContain('no /usr/local/bin/mg-device-agent');
    expect(run.stderr).toContain('no user mg-device-agent');
    expectFile(image, EXTERNAL_KEY, EXTERNAL_KEY_TEXT, 0o600);
  });

  describe('refuses bad input, writes nothing and never echoes the key', () => {
    interface BadCase {
      name: string;
      /** Arguments; IMAGE, OUT, KEY and ENC are replaced by paths. */
      args: string[];
      setup?: (dir: string) => { image?: string; key?: string; enc?: string };
      message: RegExp;
    }
    const defaults = ['--bootstrap-url', 'http://bs:9013', '--external-key-file', 'KEY'];
    const cases: BadCase[] = [
      {
        name: 'a group-readable external key file',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => ({ key: writePrivate(join(dir, 'key'), EXTERNAL_KEY_TEXT, 0o640) }),
        message: /external key file .* is accessible by group or others \(mode 640\)/,
      },
      {
        name: 'an other-readable encryption key file',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults, '--encrypt-key-file', 'ENC'],
        setup: (dir) => ({ enc: writePrivate(join(dir, 'enc'), ENCRYPT_KEY_TEXT, 0o604) }),
        message: /encryption key file .* is accessible by group or others/,
      },
      {
        name: 'an empty external key (just a newline)',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => ({ key: writePrivate(join(dir, 'key'), '\n') }),
        message: /external key in .* is empty/,
      },
      {
        name: 'an external key with a line break inside',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => ({ key: writePrivate(join(dir, 'key'), `${EXTERNAL_KEY_TEXT}\n${EXTERNAL_KEY_TEXT}\n`) }),
        message: /external key in .* contains control characters/,
      },
      {
        name: 'a non-ASCII external key in plain mode',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => ({ key: writePrivate(join(dir, 'key'), `${EXTERNAL_KEY_TEXT}-é`) }),
        message: /non-ASCII .* use --mode secure/,
      },
      {
        name: 'an encryption key of 20 bytes',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults, '--encrypt-key-file', 'ENC'],
        setup: (dir) => ({ enc: writePrivate(join(dir, 'enc'), `${ENCRYPT_KEY_TEXT.slice(0, 20)}\n`) }),
        message: /must be 16, 24 or 32 bytes .*found 20 bytes/,
      },
      {
        name: 'secure mode without an encryption key',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults, '--mode', 'secure'],
        message: /--mode secure needs --encrypt-key-file/,
      },
      {
        name: 'an encryption key in plain mode',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults, '--mode', 'plain', '--encrypt-key-file', 'ENC'],
        message: /would be unused/,
      },
      {
        name: 'an external ID with a slash',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults, '--external-id', 'dev/1'],
        message: /--external-id must be 1-128 characters/,
      },
      {
        name: 'a bootstrap URL with the endpoint path',
        args: ['--image', 'IMAGE', '--output', 'OUT', '--bootstrap-url', 'http://bs:9013/clients/bootstrap', '--external-key-file', 'KEY'],
        message: /leave out the \/clients\/bootstrap path/,
      },
      {
        name: '--image without --output or --in-place',
        args: ['--image', 'IMAGE', ...defaults],
        message: /give --output FILE, or --in-place/,
      },
      {
        name: 'an image without a partition table',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => {
          const image = join(dir, 'blank.img');
          writeFileSync(image, '');
          truncateSync(image, 8 * MIB);
          return { image };
        },
        message: /has no partition table; expected a disk image with a FAT boot partition and an ext4 root partition/,
      },
      {
        name: 'an image with a FAT partition only',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => {
          const image = join(dir, 'fat-only.img');
          writeFileSync(image, '');
          truncateSync(image, 40 * MIB);
          sh('sfdisk', ['--quiet', image], { input: `label: dos\nstart=${BOOT_START_SECTOR}, size=${BOOT_SECTORS}, type=c\n` });
          sh('mkfs.vfat', ['-F', '32', '-s', '1', '--offset', String(BOOT_START_SECTOR), image, String((BOOT_SECTORS * SECTOR) / 1024)]);
          return { image };
        },
        message: /has no ext2\/3\/4 partition \(1 partition\(s\), 1 FAT\)/,
      },
      {
        name: 'a truncated image',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => {
          const image = join(dir, 'truncated.img');
          copyFileSync(baseImage, image);
          truncateSync(image, 50 * MIB);
          return { image };
        },
        message: /partition 2 of .* ends beyond the end of the image/,
      },
      {
        name: 'a still-compressed image',
        args: ['--image', 'IMAGE', '--output', 'OUT', ...defaults],
        setup: (dir) => {
          const image = join(dir, 'raspios.img.xz');
          writeFileSync(image, Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00, 0x04]));
          return { image };
        },
        message: /is xz-compressed; decompress it first/,
      },
    ];

    it.each(cases)('$name', ({ args, setup, message }) => {
      const dir = tempWorkDir(t, 'mgda-bad-');
      const prepared = setup?.(dir) ?? {};
      const output = join(dir, 'out.img');
      const substitutions: Record<string, string> = {
        IMAGE: prepared.image ?? baseImage,
        OUT: output,
        KEY: prepared.key ?? externalKeyFile,
        ENC: prepared.enc ?? encryptKeyFile,
      };
      const run = runScript(args.map((arg) => substitutions[arg] ?? arg));
      expect(run.status).toBe(2);
      expect(run.stderr).toMatch(message);
      expectNoSecretsIn(run.output, EXTERNAL_KEY_TEXT, ENCRYPT_KEY_TEXT, ENCRYPT_KEY_TEXT.slice(0, 20));
      expect(existsSync(output)).toBe(false);
      expect(readdirSync(dir).filter((name) => name.includes('partial'))).toEqual([]);
      expect(sha256(baseImage)).toBe(baseImageHash);
    });
  });

  describe('--rootfs (a staging root directory)', () => {
    function stagingRoot(): string {
      const root = tempWorkDir(t, 'mgda-staging-');
      mkdirSync(join(root, 'etc/systemd/system'), { recursive: true });
      return root;
    }

    it.runIf(isRoot)('writes the same layout with plain file operations, and a second run replaces the key', () => {
      const root = stagingRoot();
      const args = ['--rootfs', root, '--bootstrap-url', 'http://bs.example:9013', '--external-key-file', externalKeyFile, '--encrypt-key-file', encryptKeyFile, '--external-id', 'gw-17'];
      const first = runScript(args);
      expect(first.status).toBe(0);
      expectNoSecretsIn(first.output, EXTERNAL_KEY_TEXT, ENCRYPT_KEY_TEXT);

      const mode = (relative: string) => lstatSync(join(root, relative)).mode & 0o7777;
      const owner = (relative: string) => `${lstatSync(join(root, relative)).uid}:${lstatSync(join(root, relative)).gid}`;
      const config = JSON.parse(readFileSync(join(root, CONFIG), 'utf8')) as unknown;
      expect(config).toEqual({
        bootstrap: { url: 'http://bs.example:9013', mode: 'secure', encryptKeyFile: ENCRYPT_KEY },
        identity: { externalKeyFile: EXTERNAL_KEY, externalId: 'gw-17' },
      });
      expect(AgentConfigSchema.safeParse(config).success).toBe(true);
      expect(readFileSync(join(root, EXTERNAL_KEY), 'utf8')).toBe(EXTERNAL_KEY_TEXT);
      expect(readFileSync(join(root, ENCRYPT_KEY), 'utf8')).toBe(ENCRYPT_KEY_TEXT);
      expect([mode(EXTERNAL_KEY), owner(EXTERNAL_KEY)]).toEqual([0o600, '0:0']);
      expect([mode(ENCRYPT_KEY), owner(ENCRYPT_KEY)]).toEqual([0o600, '0:0']);
      expect([mode(CREDENTIALS_DIR), owner(CREDENTIALS_DIR)]).toEqual([0o700, '0:0']);
      expect([mode(CONFIG), owner(CONFIG)]).toEqual([0o644, '0:0']);
      expect(readFileSync(join(root, UNIT)).equals(readFileSync(REPO_UNIT))).toBe(true);
      expect(readlinkSync(join(root, UNIT_LINK))).toBe(UNIT);

      const newKey = writePrivate(join(tempWorkDir(t, 'mgda-newkey-'), 'key'), 'second-key-SECRET-99');
      const second = runScript(args.map((arg) => (arg === externalKeyFile ? newKey : arg)));
      expect(second.status).toBe(0);
      expectNoSecretsIn(second.output, 'second-key-SECRET-99');
      expect(readFileSync(join(root, EXTERNAL_KEY), 'utf8')).toBe('second-key-SECRET-99');
      expect(mode(EXTERNAL_KEY)).toBe(0o600);
      // Staged copies are renamed into place, none left behind.
      expect(readdirSync(join(root, CREDENTIALS_DIR)).sort()).toEqual(['encrypt_key', 'external_key']);
      expect(readdirSync(join(root, AGENT_DIR)).sort()).toEqual(['agent.json', 'credentials']);
    });

    it.runIf(isRoot)('refuses to write through a symlinked directory in the staging root', () => {
      const root = stagingRoot();
      const elsewhere = tempWorkDir(t, 'mgda-elsewhere-');
      symlinkSync(elsewhere, join(root, 'etc/mg-device-agent'));
      const run = runScript(['--rootfs', root, '--bootstrap-url', 'http://bs:9013', '--external-key-file', externalKeyFile]);
      expect(run.status).toBe(2);
      expect(run.stderr).toContain('/etc/mg-device-agent in the target is a symlink');
      expect(readdirSync(elsewhere)).toEqual([]);
      expectNoSecretsIn(run.output, EXTERNAL_KEY_TEXT);
    });

    it('refuses to run without root, since the files must be root-owned', () => {
      const root = stagingRoot();
      // As root, the script runs as nobody, who must be able to reach the staging root.
      chmodSync(root, 0o755);
      const run = runScript(['--rootfs', root, '--bootstrap-url', 'http://bs:9013', '--external-key-file', externalKeyFile], isRoot ? { asUser: NOBODY } : {});
      expect(run.status).toBe(2);
      expect(run.stderr).toContain('--rootfs needs root');
      expect(existsSync(join(root, AGENT_DIR))).toBe(false);
    });
  });

  describe('--batch', () => {
    const deviceKeys = {
      'dev-a': 'batch-key-A-SECRET-1111',
      mac: 'batch-key-B-SECRET-2222',
      'dev-c': 'batch-key-C-SECRET-3333',
    };

    function writeCsv(dir: string, lines: string[], mode = 0o600, eol = '\n'): string {
      return writePrivate(join(dir, 'devices.csv'), lines.join(eol) + eol, mode);
    }

    it('makes one image per device with its own key; "mac" rows get no externalId and a row-numbered name', () => {
      const dir = tempWorkDir(t, 'mgda-batch-');
      const outDir = join(dir, 'out');
      // Saved from a spreadsheet: CRLF line endings.
      const csv = writeCsv(dir, ['external_id,external_key', `dev-a,${deviceKeys['dev-a']}`, `mac,${deviceKeys.mac}`, `dev-c,${deviceKeys['dev-c']}`], 0o600, '\r\n');
      const run = runScript(['--batch', csv, '--image', baseImage, '--out-dir', outDir, '--bootstrap-url', 'http://bs:9013', '--encrypt-key-file', encryptKeyFile]);
      expect(run.stderr).toBe('');
      expect(run.status).toBe(0);
      expectNoSecretsIn(run.output, ...Object.values(deviceKeys), ENCRYPT_KEY_TEXT);

      expect(readdirSync(outDir).sort()).toEqual(['dev-a.img', 'dev-c.img', 'manifest.csv', 'row-2.img']);
      expect(statSync(outDir).mode & 0o777).toBe(0o700);
      const expected: Array<[string, string, string | undefined]> = [
        ['dev-a.img', deviceKeys['dev-a'], 'dev-a'],
        ['row-2.img', deviceKeys.mac, undefined],
        ['dev-c.img', deviceKeys['dev-c'], 'dev-c'],
      ];
      for (const [name, key, externalId] of expected) {
        const image = join(outDir, name);
        expect(statSync(image).mode & 0o777, name).toBe(0o600);
        expectFile(image, EXTERNAL_KEY, key, 0o600);
        expectFile(image, ENCRYPT_KEY, ENCRYPT_KEY_TEXT, 0o600);
        const config = ext4ReadJson(image, CONFIG) as { identity: Record<string, unknown> };
        expect(config.identity.externalId, name).toBe(externalId);
        expect(AgentConfigSchema.safeParse(config).success).toBe(true);
        expect(ext4Stat(image, UNIT_LINK)?.linkTarget).toBe(UNIT);
        expect(ext4Fsck(image)).toBe(0);
      }
      expect(readFileSync(join(outDir, 'manifest.csv'), 'utf8')).toBe(
        'row,line,external_id,file\n1,2,dev-a,dev-a.img\n2,3,mac,row-2.img\n3,4,dev-c,dev-c.img\n',
      );
      expect(sha256(baseImage)).toBe(baseImageHash);
    });

    it('validates every row before writing: a bad CSV reports each problem by line and writes nothing', () => {
      const dir = tempWorkDir(t, 'mgda-badcsv-');
      const outDir = join(dir, 'out');
      const secrets = ['good-key-SECRET-0001', 'dup-id-key-SECRET-0002', 'quoted-SECRET-0003', 'spaced-SECRET-0004', 'shared-SECRET-0005', 'badid-key-SECRET-0006', 'three-SECRET-0007'];
      const csv = writeCsv(dir, [
        'external_id,external_key',
        `dev-1,${secrets[0]}`, // line 2: fine
        `dev-1,${secrets[1]}`, // line 3: duplicate ID
        'dev-3,', // line 4: empty key
        `dev-4,"${secrets[2]}"`, // line 5: quoting
        `dev-5, ${secrets[3]}`, // line 6: leading space
        `dev-6,${secrets[4]}`, // line 7: fine
        `dev-7,${secrets[4]}`, // line 8: same key as line 7
        `dev/8,${secrets[5]}`, // line 9: bad character in the ID
        `dev-9,${secrets[6]},extra`, // line 10: three fields
      ]);
      const run = runScript(['--batch', csv, '--image', baseImage, '--out-dir', outDir, '--bootstrap-url', 'http://bs:9013']);
      expect(run.status).toBe(2);
      expectNoSecretsIn(run.output, ...secrets);
      const expectedProblems = [
        'line 3: external_id is the same as on line 2',
        'line 4: external_key is empty',
        'line 5: quotes are not supported',
        'line 6: external_key starts or ends with a space',
        'line 8: external_key is the same as on line 7',
        'line 9: external_id must be 1-128 characters',
        'line 10: expected 2 fields (external_id,external_key), found 3',
      ];
      for (const problem of expectedProblems) expect(run.stderr).toContain(problem);
      expect(run.stderr).not.toMatch(/line (2|7):/);
      expect(run.stderr).toContain('7 problem(s); nothing was written');
      expect(existsSync(outDir)).toBe(false);
      expect(sha256(baseImage)).toBe(baseImageHash);
    });

    it('refuses a CSV of keys that group or others can read', () => {
      const dir = tempWorkDir(t, 'mgda-csvmode-');
      const outDir = join(dir, 'out');
      const csv = writeCsv(dir, ['external_id,external_key', `dev-a,${deviceKeys['dev-a']}`], 0o644);
      const run = runScript(['--batch', csv, '--image', baseImage, '--out-dir', outDir, '--bootstrap-url', 'http://bs:9013']);
      expect(run.status).toBe(2);
      expect(run.stderr).toMatch(/CSV .* is accessible by group or others \(mode 644\)/);
      expect(existsSync(outDir)).toBe(false);
    });

    it('does not overwrite earlier output unless --force', () => {
      const dir = tempWorkDir(t, 'mgda-rerun-');
      const outDir = join(dir, 'out');
      const csv = writeCsv(dir, ['external_id,external_key', `dev-a,${deviceKeys['dev-a']}`]);
      const args = ['--batch', csv, '--image', baseImage, '--out-dir', outDir, '--bootstrap-url', 'http://bs:9013'];
      expect(runScript(args).status).toBe(0);
      const firstHash = sha256(join(outDir, 'dev-a.img'));
      const again = runScript(args);
      expect(again.status).toBe(2);
      expect(again.stderr).toContain('dev-a.img already exists (use --force to overwrite)');
      expect(sha256(join(outDir, 'dev-a.img'))).toBe(firstHash);
      writePrivate(csv, `external_id,external_key\ndev-a,${deviceKeys['dev-c']}\n`);
      expect(runScript([...args, '--force']).status).toBe(0);
      expectFile(join(outDir, 'dev-a.img'), EXTERNAL_KEY, deviceKeys['dev-c'], 0o600);
    });

    it('--bundles: a shared image without secrets, per-device bundles, and a first-boot import from the boot partition', () => {
      const dir = tempWorkDir(t, 'mgda-bundles-');
      const outDir = join(dir, 'out');
      const csv = writeCsv(dir, ['external_id,external_key', `dev-a,${deviceKeys['dev-a']}`, `mac,${deviceKeys.mac}`]);
      const run = runScript(['--batch', csv, '--bundles', '--image', baseImage, '--out-dir', outDir, '--bootstrap-url', 'http://bs:9013', '--encrypt-key-file', encryptKeyFile]);
      expect(run.stderr).toBe('');
      expect(run.status).toBe(0);
      expectNoSecretsIn(run.output, ...Object.values(deviceKeys), ENCRYPT_KEY_TEXT);
      expect(readdirSync(outDir).sort()).toEqual(['bundles', 'manifest.csv', 'shared.img']);
      expect(readdirSync(join(outDir, 'bundles')).sort()).toEqual(['dev-a.tar', 'row-2.tar']);

      // The shared image: config, unit and importer, but no key at all.
      const shared = join(outDir, 'shared.img');
      expect(ext4Names(shared, CREDENTIALS_DIR)).toEqual([]);
      expect(ext4Stat(shared, CREDENTIALS_DIR)).toMatchObject({ type: 'directory', mode: 0o700, uid: 0, gid: 0 });
      const sharedConfig = ext4ReadJson(shared, CONFIG) as { identity: Record<string, unknown> };
      expect(sharedConfig.identity.externalId).toBeUndefined();
      expectFile(shared, IMPORTER, readFileSync(IMPORTER_SOURCE), 0o755);
      expect(ext4Read(shared, IMPORT_UNIT).toString()).toMatch(/Before=mg-device-agent\.service[\s\S]*ExecStart=\/usr\/local\/sbin\/mg-device-agent-import-bundle/);
      expect(ext4Stat(shared, IMPORT_UNIT_LINK)?.linkTarget).toBe(IMPORT_UNIT);
      expect(ext4Stat(shared, UNIT_LINK)?.linkTarget).toBe(UNIT);
      expect(ext4Fsck(shared)).toBe(0);
      const sharedBytes = readFileSync(shared);
      for (const secret of [...Object.values(deviceKeys), ENCRYPT_KEY_TEXT]) expect(sharedBytes.includes(secret)).toBe(false);

      // Bundles: 0600 tars of 0600 files.
      const bundle = join(outDir, 'bundles/dev-a.tar');
      expect(statSync(bundle).mode & 0o777).toBe(0o600);
      expect(tarListing(bundle)).toEqual(['-rw------- 0/0 agent.json', '-rw------- 0/0 encrypt_key', '-rw------- 0/0 external_key']);
      expect(tarMember(bundle, 'external_key').toString()).toBe(deviceKeys['dev-a']);
      expect(tarMember(bundle, 'encrypt_key').toString()).toBe(ENCRYPT_KEY_TEXT);
      const bundleConfig = JSON.parse(tarMember(bundle, 'agent.json').toString()) as { identity: Record<string, unknown> };
      expect(bundleConfig.identity.externalId).toBe('dev-a');
      expect(AgentConfigSchema.safeParse(bundleConfig).success).toBe(true);
      const macConfig = JSON.parse(tarMember(join(outDir, 'bundles/row-2.tar'), 'agent.json').toString()) as { identity: Record<string, unknown> };
      expect(macConfig.identity.externalId).toBeUndefined();
      expect(tarMember(join(outDir, 'bundles/row-2.tar'), 'external_key').toString()).toBe(deviceKeys.mac);

      // The line puts a bundle on the boot partition of a card (here: a copy of the shared image).
      const card = join(dir, 'card.img');
      const install = runScript(['--install-bundle', bundle, '--image', shared, '--output', card]);
      expect(install.status).toBe(0);
      expectNoSecretsIn(install.output, deviceKeys['dev-a']);
      expect(fatNames(card)).toEqual(['cmdline.txt', 'config.txt', BUNDLE_ON_BOOT]);
      expect(fatRead(card, BUNDLE_ON_BOOT).equals(readFileSync(bundle))).toBe(true);
      expect(sha256(shared)).toBe(createHash('sha256').update(sharedBytes).digest('hex'));

      // First boot, simulated: the importer from the card's root file system runs against the boot
      // partition's content and a root directory.
      const bootDir = tempWorkDir(t, 'mgda-boot-');
      const rootDir = tempWorkDir(t, 'mgda-root-');
      mkdirSync(join(rootDir, 'etc'));
      sh('mcopy', ['-i', `${card}@@${partitionOffsets(card).boot}`, `::${BUNDLE_ON_BOOT}`, bootDir]);
      const importer = join(tempWorkDir(t, 'mgda-importer-'), 'mg-device-agent-import-bundle');
      writeFileSync(importer, ext4Read(card, IMPORTER));
      const firstBoot = spawnSync('bash', [importer, '--root', rootDir, '--boot', bootDir], { encoding: 'utf8' });
      expect(firstBoot.status).toBe(0);
      expectNoSecretsIn(firstBoot.stdout + firstBoot.stderr, deviceKeys['dev-a'], ENCRYPT_KEY_TEXT);
      expect(readdirSync(bootDir)).toEqual([]);
      expect(readFileSync(join(rootDir, EXTERNAL_KEY), 'utf8')).toBe(deviceKeys['dev-a']);
      expect(readFileSync(join(rootDir, ENCRYPT_KEY), 'utf8')).toBe(ENCRYPT_KEY_TEXT);
      expect(JSON.parse(readFileSync(join(rootDir, CONFIG), 'utf8'))).toEqual(bundleConfig);
      const mode = (relative: string) => lstatSync(join(rootDir, relative)).mode & 0o7777;
      expect([mode(EXTERNAL_KEY), mode(ENCRYPT_KEY), mode(CREDENTIALS_DIR), mode(CONFIG)]).toEqual([0o600, 0o600, 0o700, 0o644]);
      if (isRoot) expect(lstatSync(join(rootDir, EXTERNAL_KEY)).uid).toBe(0);
      expect(readdirSync(join(rootDir, CREDENTIALS_DIR)).sort()).toEqual(['encrypt_key', 'external_key']);

      // A later boot finds nothing to do and changes nothing.
      const laterBoot = spawnSync('bash', [importer, '--root', rootDir, '--boot', bootDir], { encoding: 'utf8' });
      expect(laterBoot.status).toBe(0);
      expect(readFileSync(join(rootDir, EXTERNAL_KEY), 'utf8')).toBe(deviceKeys['dev-a']);
    });

    it('--install-bundle refuses an image without the first-boot importer', () => {
      const dir = tempWorkDir(t, 'mgda-noimporter-');
      const bundleDir = tempWorkDir(t, 'mgda-bundle-src-');
      writePrivate(join(bundleDir, 'external_key'), deviceKeys['dev-a']);
      writePrivate(join(bundleDir, 'agent.json'), '{}\n');
      const bundle = join(dir, 'b.tar');
      sh('tar', ['--create', '--file', bundle, '--directory', bundleDir, '--owner=0', '--group=0', '--mode=0600', 'external_key', 'agent.json']);
      chmodSync(bundle, 0o600);
      const output = join(dir, 'card.img');
      const run = runScript(['--install-bundle', bundle, '--image', baseImage, '--output', output]);
      expect(run.status).toBe(2);
      expect(run.stderr).toContain('has no first-boot importer');
      expect(existsSync(output)).toBe(false);
    });
  });

  describe('first-boot importer (scripts/mg-device-agent-import-bundle.sh)', () => {
    it('refuses a bundle holding a symlink, leaves the installed key alone and keeps the bundle for inspection', () => {
      const bootDir = tempWorkDir(t, 'mgda-evil-boot-');
      const rootDir = tempWorkDir(t, 'mgda-evil-root-');
      const source = tempWorkDir(t, 'mgda-evil-src-');
      mkdirSync(join(rootDir, 'etc/mg-device-agent/credentials'), { recursive: true });
      writePrivate(join(rootDir, EXTERNAL_KEY), 'installed-key');
      symlinkSync('/etc/shadow', join(source, 'external_key'));
      writeFileSync(join(source, 'agent.json'), '{}\n');
      sh('tar', ['--create', '--file', join(bootDir, BUNDLE_ON_BOOT), '--directory', source, 'external_key', 'agent.json']);

      const run = spawnSync('bash', [IMPORTER_SOURCE, '--root', rootDir, '--boot', bootDir], { encoding: 'utf8' });
      expect(run.status).toBe(1);
      expect(run.stderr).toContain('holds an entry that is not a plain file');
      expect(readFileSync(join(rootDir, EXTERNAL_KEY), 'utf8')).toBe('installed-key');
      expect(existsSync(join(bootDir, BUNDLE_ON_BOOT))).toBe(true);
      expect(readdirSync(join(rootDir, CREDENTIALS_DIR))).toEqual(['external_key']);
    });
  });
});
