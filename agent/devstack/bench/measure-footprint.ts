import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { repoRoot } from '../agent-process.js';

/**
 * Footprint of the release artefact, unpacked: the tarball scripts/build-release.sh makes from the
 * current dist/ (compiled agent without the dev stack, production node_modules, unit, installer).
 * Besides the total it says what dominates and how much is not needed at run time (type
 * declarations, source maps, docs), which a pruning step in the release script could drop.
 */

export interface FootprintResult {
  /** How it was measured: the real release tarball, or estimated from package-lock.json. */
  source: 'release-tarball' | 'estimate-from-lockfile';
  tarballBytes?: number;
  /** Sum of file sizes as unpacked. */
  unpackedBytes: number;
  /** Disk blocks used (du), which counts every small file as at least one block. */
  diskBytes: number;
  files: number;
  distBytes: number;
  largestPackages: { name: string; bytes: number }[];
  /** .d.ts/.d.cts/.d.mts, .map, .md/.markdown and @types/ packages: not needed at run time. */
  notNeededAtRuntimeBytes: number;
  /** The Node.js binary that runs it, for scale (the same in every run). */
  nodeBinaryBytes: number;
  note?: string;
}

interface Walk {
  bytes: number;
  disk: number;
  files: number;
  prunable: number;
  byPackage: Map<string, number>;
}

const PRUNABLE = /\.(d\.[cm]?ts|map|md|markdown)$/i;

function walk(root: string): Walk {
  const result: Walk = { bytes: 0, disk: 0, files: 0, prunable: 0, byPackage: new Map() };
  const visit = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const full = join(dir, name);
      const st = lstatSync(full);
      result.disk += st.blocks * 512;
      if (st.isDirectory()) {
        visit(full);
        continue;
      }
      result.files++;
      result.bytes += st.size;
      const rel = relative(root, full);
      const topPackage = /^node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(rel)?.[1];
      if (topPackage) result.byPackage.set(topPackage, (result.byPackage.get(topPackage) ?? 0) + st.size);
      if (PRUNABLE.test(name) || rel.includes('node_modules/@types/')) result.prunable += st.size;
    }
  };
  visit(root);
  return result;
}

function summarise(root: string, distDir: string, source: FootprintResult['source'], extra: Partial<FootprintResult>): FootprintResult {
  const all = walk(root);
  const dist = walk(distDir);
  return {
    source,
    unpackedBytes: all.bytes,
    diskBytes: all.disk,
    files: all.files,
    distBytes: dist.bytes,
    largestPackages: [...all.byPackage.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 6)
      .map(([name, bytes]) => ({ name, bytes })),
    notNeededAtRuntimeBytes: all.prunable,
    nodeBinaryBytes: statSync(process.execPath).size,
    ...extra,
  };
}

export function measureFootprint(log: (line: string) => void): FootprintResult {
  const repo = repoRoot();
  const script = join(repo, 'scripts', 'build-release.sh');
  const scratch = mkdtempSync(join(tmpdir(), 'mgda-footprint-'));
  try {
    if (existsSync(script)) {
      const out = join(scratch, 'out');
      const build = spawnSync('bash', [script, '--offline', '--skip-build', '--out', out], { encoding: 'utf8', timeout: 300_000 });
      const tarball = existsSync(out) ? readdirSync(out).find((n) => n.endsWith('.tar.gz')) : undefined;
      if (build.status === 0 && tarball) {
        const unpacked = join(scratch, 'unpacked');
        const untar = spawnSync('bash', ['-c', `mkdir -p "${unpacked}" && tar -xzf "${join(out, tarball)}" -C "${unpacked}"`], { encoding: 'utf8' });
        if (untar.status === 0) {
          const top = join(unpacked, readdirSync(unpacked)[0] ?? '');
          return summarise(top, join(top, 'dist'), 'release-tarball', { tarballBytes: statSync(join(out, tarball)).size });
        }
      }
      log(`  build-release.sh failed (exit ${build.status}); estimating from package-lock.json instead:\n${(build.stderr ?? '').slice(-600)}`);
    }
    return estimateFromLockfile(repo);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Production packages of package-lock.json as installed in this checkout, plus dist/ without the dev stack. */
function estimateFromLockfile(repo: string): FootprintResult {
  const lock = JSON.parse(readFileSync(join(repo, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  let bytes = 0;
  let disk = 0;
  let files = 0;
  let prunable = 0;
  const byPackage = new Map<string, number>();
  for (const [path, meta] of Object.entries(lock.packages)) {
    if (path === '' || meta.dev) continue;
    const full = join(repo, path);
    if (!existsSync(full)) continue;
    const w = walk(full);
    // Nested node_modules of a package are listed as their own entries: count only this level.
    const nested = existsSync(join(full, 'node_modules')) ? walk(join(full, 'node_modules')) : undefined;
    bytes += w.bytes - (nested?.bytes ?? 0);
    disk += w.disk - (nested?.disk ?? 0);
    files += w.files - (nested?.files ?? 0);
    prunable += w.prunable - (nested?.prunable ?? 0);
    const name = path.replace(/^.*node_modules\//, '');
    byPackage.set(name, w.bytes - (nested?.bytes ?? 0));
  }
  const dist = walk(join(repo, 'dist'));
  const devstack = existsSync(join(repo, 'dist', 'devstack')) ? walk(join(repo, 'dist', 'devstack')) : undefined;
  const distBytes = dist.bytes - (devstack?.bytes ?? 0);
  return {
    source: 'estimate-from-lockfile',
    unpackedBytes: bytes + distBytes,
    diskBytes: disk + dist.disk - (devstack?.disk ?? 0),
    files: files + dist.files - (devstack?.files ?? 0),
    distBytes,
    largestPackages: [...byPackage.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 6)
      .map(([name, b]) => ({ name, bytes: b })),
    notNeededAtRuntimeBytes: prunable,
    nodeBinaryBytes: statSync(process.execPath).size,
    note: 'scripts/build-release.sh did not produce a tarball; estimated from package-lock.json and this checkout',
  };
}
