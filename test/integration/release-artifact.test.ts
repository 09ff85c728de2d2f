import { spawnSync } from 'node:child_process';
import type { SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempWorkDir, useTeardown } from '../helpers/agent-harness.js';

/**
 * scripts/build-release.sh for real: compiles, installs production dependencies from the npm cache
 * (--offline, so the test talks to no registry; the checkout's own `npm ci` filled the cache),
 * packs, and the tarball is then unpacked and run.
 */
const REPO = new URL('../..', import.meta.url).pathname;
const BUILD_SH = join(REPO, 'scripts/build-release.sh');
const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as {
  version: string;
  dependencies: Record<string, string>;
};
const NAME = `mg-device-agent-${pkg.version}`;
const BUILD_TIMEOUT_MS = 240_000;

const isRoot = process.getuid?.() === 0;
const canInstall = isRoot && spawnSync('systemd-sysusers', ['--version']).status === 0;
const onCi = process.env.CI === 'true';
if (!canInstall && !onCi) {
  console.warn('\n!!! SKIPPING the install-from-release test: it needs root and systemd-sysusers. !!!\n');
}

const t = useTeardown('all');

function buildRelease(scriptPath: string, args: string[]): SpawnSyncReturns<string> {
  return spawnSync('bash', [scriptPath, '--offline', ...args], { encoding: 'utf8', timeout: BUILD_TIMEOUT_MS });
}

describe('release tarball from scripts/build-release.sh', () => {
  let tarball = '';
  let buildOutput = '';
  let unpacked = '';
  let listing: Array<{ mode: string; owner: string; path: string }> = [];

  beforeAll(() => {
    const out = tempWorkDir(t, 'mgda-release-out-');
    const result = buildRelease(BUILD_SH, ['--out', out]);
    buildOutput = `${result.stdout}${result.stderr}`;
    expect(result.status, buildOutput).toBe(0);
    tarball = join(out, `${NAME}.tar.gz`);

    const list = spawnSync('tar', ['-tvzf', tarball, '--numeric-owner'], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    expect(list.status).toBe(0);
    listing = list.stdout
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => {
        const [mode = '', owner = '', , , , ...rest] = l.split(/\s+/);
        return { mode, owner, path: rest.join(' ').replace(/\/$/, '') };
      });

    unpacked = tempWorkDir(t, 'mgda-release-unpacked-');
    expect(spawnSync('tar', ['-xzf', tarball, '-C', unpacked]).status).toBe(0);
  }, BUILD_TIMEOUT_MS);

  const has = (path: string): boolean => listing.some((e) => e.path === `${NAME}/${path}`);

  it('prints its packed and unpacked size', () => {
    const match = /packed (\d+) bytes .*unpacked (\d+) bytes/.exec(buildOutput);
    expect(match, buildOutput).not.toBeNull();
    expect(Number(match?.[1])).toBe(statSync(tarball).size);
    expect(Number(match?.[2])).toBeGreaterThan(Number(match?.[1]));
  });

  it('holds the agent, its production dependencies, the unit and the installer, all root-owned under one directory', () => {
    for (const path of [
      'dist/cli/main.js',
      'package.json',
      'RELEASE',
      'systemd/mg-device-agent.service',
      'systemd/mg-device-agent.sysusers',
      'scripts/install.sh',
    ]) {
      expect(has(path), path).toBe(true);
    }
    for (const [dep, version] of Object.entries(pkg.dependencies)) {
      const manifest = join(unpacked, NAME, 'node_modules', dep, 'package.json');
      expect(JSON.parse(readFileSync(manifest, 'utf8')).version, dep).toBe(version);
    }
    expect(listing.every((e) => e.path === NAME || e.path.startsWith(`${NAME}/`))).toBe(true);
    expect(listing.every((e) => e.owner === '0/0')).toBe(true);
    expect(listing.find((e) => e.path === `${NAME}/scripts/install.sh`)?.mode).toBe('-rwxr-xr-x');
  });

  it('leaves out the development stack, the dev dependencies and anything native', () => {
    expect(listing.filter((e) => e.path.startsWith(`${NAME}/dist/devstack`))).toEqual([]);
    for (const dev of ['aedes', 'vitest', 'nock', 'typescript']) expect(has(`node_modules/${dev}`), dev).toBe(false);
    // Everything the lock file needs for development only (@types/node is not: mqtt's types use it).
    const lock = JSON.parse(readFileSync(join(REPO, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    const devOnly = Object.entries(lock.packages).filter(([path, entry]) => path !== '' && entry.dev === true);
    expect(devOnly.length).toBeGreaterThan(0);
    expect(devOnly.map(([path]) => path).filter((path) => has(path))).toEqual([]);
    expect(listing.filter((e) => e.path.endsWith('.node'))).toEqual([]);
  });

  it('runs from the unpacked tree: --version, and every production dependency loads', () => {
    const tree = join(unpacked, NAME);
    const version = spawnSync(process.execPath, [join(tree, 'dist/cli/main.js'), '--version'], { encoding: 'utf8', cwd: unpacked });
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout.trim()).toContain(pkg.version);

    // Resolved from dist/, as the agent's own modules resolve them.
    const probe = join(tree, 'dist/load-dependencies.probe.mjs');
    writeFileSync(
      probe,
      Object.keys(pkg.dependencies)
        .map((dep, i) => `import * as m${i} from '${dep}';`)
        .join('\n') + `\nconsole.log([${Object.keys(pkg.dependencies).map((_, i) => `m${i}`).join(', ')}].length);\n`,
    );
    const loaded = spawnSync(process.execPath, [probe], { encoding: 'utf8', cwd: unpacked });
    expect(loaded.status, loaded.stderr).toBe(0);
    expect(loaded.stdout.trim()).toBe(String(Object.keys(pkg.dependencies).length));
  });

  it.skipIf(!canInstall && !onCi)('installs with its own install.sh into a staging root, and the installed agent runs', () => {
    expect(canInstall, 'needs root and systemd-sysusers').toBe(true);
    const root = tempWorkDir(t, 'mgda-release-root-');
    const install = spawnSync('bash', [join(unpacked, NAME, 'scripts/install.sh'), '--root', root, '--node', process.execPath], {
      encoding: 'utf8',
    });
    expect(install.status, `${install.stdout}${install.stderr}`).toBe(0);
    expect(existsSync(join(root, 'opt/mg-device-agent/node_modules/mqtt/package.json'))).toBe(true);
    expect(existsSync(join(root, 'opt/mg-device-agent/RELEASE'))).toBe(false);
    const version = spawnSync(process.execPath, [join(root, 'opt/mg-device-agent/dist/cli/main.js'), '--version'], { encoding: 'utf8' });
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout.trim()).toContain(pkg.version);
  });
});

describe('build-release.sh architecture guard', () => {
  /** A scratch checkout with a prebuilt dist/ (--skip-build) so only the packaging steps run. */
  function scratchCheckout(extraFile: { path: string; content: Buffer }): string {
    const checkout = tempWorkDir(t, 'mgda-scratch-checkout-');
    for (const file of ['package.json', 'package-lock.json']) cpSync(join(REPO, file), join(checkout, file));
    for (const dir of ['scripts', 'systemd']) cpSync(join(REPO, dir), join(checkout, dir), { recursive: true });
    mkdirSync(join(checkout, 'dist/cli'), { recursive: true });
    writeFileSync(join(checkout, 'dist/cli/main.js'), 'console.log("0.0.0");\n');
    mkdirSync(join(checkout, extraFile.path, '..'), { recursive: true });
    writeFileSync(join(checkout, extraFile.path), extraFile.content);
    return checkout;
  }
  const elfHeader = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]);

  it('refuses a native addon (.node)', () => {
    const checkout = scratchCheckout({ path: 'dist/native/binding.node', content: elfHeader });
    const out = tempWorkDir(t, 'mgda-release-out-');
    const result = buildRelease(join(checkout, 'scripts/build-release.sh'), ['--skip-build', '--out', out]);
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain('native addons');
    expect(result.stderr).toContain('binding.node');
    expect(existsSync(join(out, `${NAME}.tar.gz`))).toBe(false);
  }, BUILD_TIMEOUT_MS);

  it('refuses an executable of any architecture (ELF), whatever its name', () => {
    const checkout = scratchCheckout({ path: 'dist/bin/helper', content: elfHeader });
    const out = tempWorkDir(t, 'mgda-release-out-');
    const result = buildRelease(join(checkout, 'scripts/build-release.sh'), ['--skip-build', '--out', out]);
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain('ELF binaries');
    expect(result.stderr).toContain('dist/bin/helper');
    expect(existsSync(join(out, `${NAME}.tar.gz`))).toBe(false);
  }, BUILD_TIMEOUT_MS);
});
