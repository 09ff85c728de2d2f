import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { repoRoot } from '../agent-process.js';
import { formatMb } from './stats.js';
import type { AgentBuild } from './world.js';

/**
 * The release as shipped: scripts/build-release.sh bundles the checkout's dist/ (which `npm run
 * bench` has just compiled, so the two builds hold the same code) into the release tarball, once per
 * bench run, and the tarball is unpacked the way install.sh unpacks it. Boot, memory and leak
 * figures run the unpacked dist/cli/main.js; the footprint measures the same tarball.
 */

export interface ReleaseBundle {
  agent: AgentBuild;
  tarball: string;
  tarballBytes: number;
  /** The unpacked mg-device-agent-<version>/ directory. */
  tree: string;
  /** "name@version" per bundled package, from build-release.sh's "bundled N packages: ..." line; undefined without that line. */
  bundledPackages: string[] | undefined;
}

/** A release that could not be built carries the reason, so that every figure needing it says why it is missing. */
export type ReleaseBuild = { ok: true; bundle: ReleaseBundle } | { ok: false; error: string; output?: string };

/** Generous: bundling takes seconds, but a Pi under load is slow. */
const BUILD_TIMEOUT_MS = 300_000;

/** Builds and unpacks the release in a scratch directory, runs `use` with it, and removes the directory whatever happens. */
export async function withReleaseBuild<T>(log: (line: string) => void, use: (release: ReleaseBuild) => Promise<T>): Promise<T> {
  const scratch = mkdtempSync(join(tmpdir(), 'mgda-release-'));
  try {
    const release = buildRelease(scratch);
    log(
      release.ok
        ? `  ${basename(release.bundle.tarball)}: ${formatMb(release.bundle.tarballBytes)}, ${release.bundle.bundledPackages?.length ?? '?'} packages bundled`
        : `  RELEASE BUILD FAILED, so the release bundle's figures will not be measured: ${release.error}${release.output ? `\n    ${release.output.replace(/\n/g, '\n    ')}` : ''}`,
    );
    return await use(release);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

function buildRelease(scratch: string): ReleaseBuild {
  const out = join(scratch, 'out');
  const build = spawnSync('bash', [join(repoRoot(), 'scripts', 'build-release.sh'), '--skip-build', '--out', out], {
    cwd: repoRoot(),
    encoding: 'utf8',
    timeout: BUILD_TIMEOUT_MS,
  });
  if (build.error) return failed(`scripts/build-release.sh could not run: ${build.error.message}`, build.stderr);
  if (build.status !== 0) return failed(`scripts/build-release.sh --skip-build exited with ${build.status ?? build.signal}`, build.stderr);
  const tarballName = existsSync(out) ? readdirSync(out).find((name) => name.endsWith('.tar.gz')) : undefined;
  if (tarballName === undefined) return failed(`scripts/build-release.sh succeeded but left no .tar.gz in ${out}`, build.stdout);
  const tarball = join(out, tarballName);
  const unpacked = join(scratch, 'unpacked');
  mkdirSync(unpacked);
  const untar = spawnSync('tar', ['-xzf', tarball, '-C', unpacked], { encoding: 'utf8' });
  if (untar.error || untar.status !== 0) return failed(`tar could not unpack ${tarballName}`, untar.stderr ?? untar.error?.message);
  const tree = join(unpacked, tarballName.replace(/\.tar\.gz$/, ''));
  const entry = join(tree, 'dist', 'cli', 'main.js');
  if (!existsSync(entry)) return failed(`${tarballName} holds no ${relative(unpacked, entry)}`);
  return {
    ok: true,
    bundle: {
      agent: { name: 'release bundle', entry },
      tarball,
      tarballBytes: statSync(tarball).size,
      tree,
      bundledPackages: bundledPackages(build.stdout),
    },
  };
}

/** The reason with the output's last line (build-release.sh ends with its "error: ..." line), and the output's tail. */
function failed(reason: string, output?: string): ReleaseBuild {
  const tail = output?.trim().slice(-1500);
  const lastLine = tail?.split('\n').at(-1);
  return { ok: false, error: lastLine ? `${reason}: ${lastLine}` : reason, ...(tail ? { output: tail } : {}) };
}

/** "build-release.sh: bundled 2 packages: a@1.0.0, b@2.0.0" → ["a@1.0.0", "b@2.0.0"]. */
function bundledPackages(stdout: string): string[] | undefined {
  const list = /bundled \d+ packages: (.*)$/m.exec(stdout)?.[1];
  return list?.split(', ').filter(Boolean);
}
