import { lstatSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ReleaseBundle } from './release-bundle.js';

/**
 * Footprint of the release artefact: the tarball scripts/build-release.sh made for this bench run
 * (the agent bundled with its production dependencies into dist/cli/, licences, unit, installer;
 * no node_modules), unpacked. Besides the total it names the largest files of the bundle, since
 * those are what a smaller release has to shrink.
 */

export interface FootprintResult {
  agent: 'release bundle';
  tarballBytes: number;
  /** Sum of file sizes as unpacked. */
  unpackedBytes: number;
  /** Disk blocks used (du), which counts every small file as at least one block. */
  diskBytes: number;
  files: number;
  /** dist/cli/: the entry point and its chunks. */
  bundleBytes: number;
  bundleFiles: number;
  largestBundleFiles: { name: string; bytes: number }[];
  /** Packages esbuild pulled into the bundle, as build-release.sh reported them; undefined when it did not. */
  bundledPackages: string[] | undefined;
  /** The Node.js binary that runs it, for scale (the same in every run). */
  nodeBinaryBytes: number;
}

interface Walk {
  bytes: number;
  disk: number;
  /** Size per file, by path relative to the walked directory. */
  files: Map<string, number>;
}

function walk(root: string): Walk {
  const result: Walk = { bytes: 0, disk: 0, files: new Map() };
  const visit = (dir: string, prefix: string) => {
    for (const name of readdirSync(dir)) {
      const full = join(dir, name);
      const st = lstatSync(full);
      result.disk += st.blocks * 512;
      if (st.isDirectory()) {
        visit(full, `${prefix}${name}/`);
        continue;
      }
      result.bytes += st.size;
      result.files.set(`${prefix}${name}`, st.size);
    }
  };
  visit(root, '');
  return result;
}

const LARGEST = 6;

export function measureFootprint(release: ReleaseBundle): FootprintResult {
  const all = walk(release.tree);
  const bundle = walk(join(release.tree, 'dist', 'cli'));
  return {
    agent: 'release bundle',
    tarballBytes: release.tarballBytes,
    unpackedBytes: all.bytes,
    diskBytes: all.disk,
    files: all.files.size,
    bundleBytes: bundle.bytes,
    bundleFiles: bundle.files.size,
    largestBundleFiles: [...bundle.files.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, LARGEST)
      .map(([name, bytes]) => ({ name, bytes })),
    bundledPackages: release.bundledPackages,
    nodeBinaryBytes: statSync(process.execPath).size,
  };
}
