import { spawnSync } from 'node:child_process';
import type { SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { registerDevice, writeDeviceFiles } from '../../agent/devstack/scenario.js';
import {
  K32_ENCRYPT_KEY,
  createDevChannel,
  expectNoSecretsIn,
  onlineWith,
  pemBodyLines,
  randomExternalId,
  runAgentProcess,
  startStack,
  tempWorkDir,
  usePki,
  useTeardown,
} from '../helpers/agent-harness.js';
import { runCli } from '../helpers/run-cli.js';

/**
 * scripts/build-release.sh for real: compiles, bundles with esbuild, packs; the tarball is then
 * unpacked and the bundle does a device's whole job against the dev stack, as shipped.
 */
const REPO = new URL('../..', import.meta.url).pathname;
const BUILD_SH = join(REPO, 'scripts/build-release.sh');
const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as {
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
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
const each = useTeardown();
const pki = usePki('mgda-release-pki-');

function buildRelease(scriptPath: string, args: string[]): SpawnSyncReturns<string> {
  return spawnSync('bash', [scriptPath, ...args], { encoding: 'utf8', timeout: BUILD_TIMEOUT_MS });
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

  it('holds the bundled agent, the licences of what it bundles, the unit and the installer, all root-owned under one directory', () => {
    for (const path of [
      'dist/cli/main.js',
      'package.json',
      'THIRD_PARTY_LICENSES',
      'RELEASE',
      'systemd/mg-device-agent.service',
      'systemd/mg-device-agent.sysusers',
      'scripts/install.sh',
    ]) {
      expect(has(path), path).toBe(true);
    }
    // Every production dependency is in the bundle at its locked version, licence included.
    const licences = readFileSync(join(unpacked, NAME, 'THIRD_PARTY_LICENSES'), 'utf8');
    for (const [dep, version] of Object.entries(pkg.dependencies)) {
      expect(licences, dep).toMatch(new RegExp(`^${dep.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}@${version.replace(/\./g, '\\.')} \\(`, 'm'));
    }
    expect(licences).toContain('Permission is hereby granted'); // the MIT notice itself, not just names
    expect(listing.every((e) => e.path === NAME || e.path.startsWith(`${NAME}/`))).toBe(true);
    expect(listing.every((e) => e.owner === '0/0')).toBe(true);
    expect(listing.find((e) => e.path === `${NAME}/scripts/install.sh`)?.mode).toBe('-rwxr-xr-x');
  });

  it('leaves out node_modules, the development stack and every dev dependency', () => {
    expect(listing.filter((e) => e.path.includes('node_modules'))).toEqual([]);
    expect(listing.filter((e) => e.path.startsWith(`${NAME}/dist/devstack`))).toEqual([]);
    const licences = readFileSync(join(unpacked, NAME, 'THIRD_PARTY_LICENSES'), 'utf8');
    for (const dev of Object.keys(pkg.devDependencies)) expect(licences, dev).not.toMatch(new RegExp(`^${dev}@`, 'm'));
    expect(listing.filter((e) => e.path.endsWith('.node'))).toEqual([]);
    const devStack = spawnSync(process.execPath, [join(unpacked, NAME, 'dist/cli/main.js'), 'dev-stack'], { encoding: 'utf8' });
    expect(devStack.status).toBe(64);
    expect(devStack.stderr).toContain('only available in a source checkout');
  });

  it('derives the external ID from the MAC address exactly as the tsc build does (systeminformation inside the bundle)', async () => {
    const dir = tempWorkDir(each, 'mgda-release-identity-');
    const keyFile = join(dir, 'external_key');
    writeFileSync(keyFile, 'k\n', { mode: 0o600 });
    const config = join(dir, 'agent.json');
    writeFileSync(config, JSON.stringify({ bootstrap: { url: 'http://127.0.0.1:9' }, identity: { externalKeyFile: keyFile }, state: { dir: join(dir, 'state') } }));
    const fromDist = await runCli(['identity', '--config', config]);
    const fromBundle = await runCli(['identity', '--config', config], { entry: join(unpacked, NAME, 'dist/cli/main.js') });
    expect(fromDist.code, fromDist.stderr).toBe(0); // this machine has a usable interface (the demo needs one too)
    expect(fromDist.stdout).toContain('source: interface');
    expect({ code: fromBundle.code, stdout: fromBundle.stdout, stderr: fromBundle.stderr }).toEqual(fromDist);
  });

  it('does the whole job as shipped: secure bootstrap, certificates on disk, mutual TLS, subscribed; provision; --version from package.json', async () => {
    const entry = join(unpacked, NAME, 'dist/cli/main.js');
    const version = spawnSync(process.execPath, [entry, '--version'], { encoding: 'utf8', cwd: unpacked });
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout.trim()).toContain(pkg.version);

    const stack = await startStack(each, { tls: { key: pki.serverKey, cert: pki.serverCert, ca: pki.caCert, requestCert: true } });
    const content = JSON.stringify({ agent: { mqtt: { url: stack.mqttUrl } }, domain_id: stack.domainId, release: 'bundle' });
    const device = await registerDevice(stack, {
      externalId: randomExternalId(),
      content,
      channelNames: ['commands', 'telemetry'],
      certs: { clientCert: pki.clientCert, clientKey: pki.clientKey, caCert: pki.caCert },
    });
    await device.operator.setState(device.clientId, 1);
    const files = writeDeviceFiles(tempWorkDir(each, 'mgda-release-device-'), {
      externalId: device.externalId,
      bootstrapUrl: stack.bootstrapUrl,
      externalKey: device.externalKey,
      encryptKey: K32_ENCRYPT_KEY,
    });
    const agent = runAgentProcess(each, ['run', '--config', files.configFile], { entry });
    await agent.waitFor(onlineWith(2), 20_000, 'online with 2 of 2 channels');
    expect(stack.bootstrap.requests.filter((r) => r.endpoint === 'secure').map((r) => r.status)).toEqual([200]);
    expect(readFileSync(join(files.stateDir, 'current', 'content'), 'utf8')).toBe(content);
    expect(readFileSync(join(files.stateDir, 'current', 'certs', 'client.key'), 'utf8')).toContain('PRIVATE KEY-----');
    await agent.stop(5_000);
    expect((await agent.exited).code).toBe(0);
    expectNoSecretsIn(agent.output, [device.externalKey, K32_ENCRYPT_KEY, pemBodyLines(pki.clientKey)[0] ?? 'missing']);

    // The operator's side ships too: provision talks to the management API through the bundle.
    const dir = tempWorkDir(each, 'mgda-release-operator-');
    const tokenFile = join(dir, 'user-token');
    writeFileSync(tokenFile, stack.userToken, { mode: 0o600 });
    const externalId = randomExternalId('release');
    const channel = await createDevChannel(stack, 'release-channel');
    const provisioned = await runCli(
      ['provision', '--bootstrap-url', stack.bootstrapUrl, '--domain', stack.domainId, '--token-file', tokenFile, '--external-id', externalId, '--channel', channel, '--out', join(dir, 'out')],
      { entry },
    );
    expect(provisioned.code, provisioned.stderr).toBe(0);
    expect(stack.registry.findConfigByExternalId(externalId)?.channels).toEqual([channel]);
    expectNoSecretsIn(provisioned.stdout + provisioned.stderr, [stack.userToken, readFileSync(join(dir, 'out', 'external_key'), 'utf8').trim()]);
  });

  it.skipIf(!canInstall && !onCi)('installs with its own install.sh into a staging root, and the installed agent runs', () => {
    expect(canInstall, 'needs root and systemd-sysusers').toBe(true);
    const root = tempWorkDir(t, 'mgda-release-root-');
    const install = spawnSync('bash', [join(unpacked, NAME, 'scripts/install.sh'), '--root', root, '--node', process.execPath], {
      encoding: 'utf8',
    });
    expect(install.status, `${install.stdout}${install.stderr}`).toBe(0);
    expect(existsSync(join(root, 'opt/mg-device-agent/node_modules'))).toBe(false);
    expect(existsSync(join(root, 'opt/mg-device-agent/THIRD_PARTY_LICENSES'))).toBe(true);
    expect(existsSync(join(root, 'opt/mg-device-agent/RELEASE'))).toBe(false);
    const version = spawnSync(process.execPath, [join(root, 'opt/mg-device-agent/dist/cli/main.js'), '--version'], { encoding: 'utf8' });
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout.trim()).toContain(pkg.version);
  });
});

describe('build-release.sh architecture guard', () => {
  it('refuses a native addon: one tarball must run on arm64, armhf and x86_64', () => {
    // A scratch checkout with a prebuilt dist/ (--skip-build) whose program loads a .node file.
    const checkout = tempWorkDir(t, 'mgda-scratch-checkout-');
    for (const file of ['package.json', 'package-lock.json']) cpSync(join(REPO, file), join(checkout, file));
    for (const dir of ['scripts', 'systemd']) cpSync(join(REPO, dir), join(checkout, dir), { recursive: true });
    symlinkSync(join(REPO, 'node_modules'), join(checkout, 'node_modules'));
    mkdirSync(join(checkout, 'dist/cli/native'), { recursive: true });
    writeFileSync(join(checkout, 'dist/cli/main.js'), "import binding from './native/binding.node';\nconsole.log(binding);\n");
    writeFileSync(join(checkout, 'dist/cli/native/binding.node'), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]));
    const out = tempWorkDir(t, 'mgda-release-out-');
    const result = buildRelease(join(checkout, 'scripts/build-release.sh'), ['--skip-build', '--out', out]);
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain('binding.node');
    expect(result.stderr).toContain('bundling failed');
    expect(existsSync(join(out, `${NAME}.tar.gz`))).toBe(false);
  }, BUILD_TIMEOUT_MS);
});
