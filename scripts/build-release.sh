#!/usr/bin/env bash
# Builds the architecture-independent release tarball release/mg-device-agent-<version>.tar.gz:
# the agent compiled by tsc and bundled with its production dependencies into dist/cli/ (esbuild,
# plain JavaScript, no node_modules), package.json, the licences of what was bundled, the systemd
# unit and the installer. One tarball serves arm64, armhf and x86_64 alike: a native addon cannot
# get in, as esbuild has no loader for .node files and stops the build.
set -euo pipefail
umask 022

usage() {
  cat <<'EOF'
Usage: scripts/build-release.sh [options]

Options:
  --out DIR      where the tarball goes (default: release/ in the checkout)
  --skip-build   bundle the existing dist/ instead of compiling afresh
  -h, --help     this help

Needs the checkout's dev dependencies (npm ci): the TypeScript compiler and esbuild. It talks to
no registry.
EOF
}

die() {
  echo "build-release.sh: error: $*" >&2
  exit 1
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
OUT_DIR="$REPO/release"
SKIP_BUILD=false

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT_DIR=$2; shift 2 ;;
    --out=*) OUT_DIR=${1#*=}; shift ;;
    --skip-build) SKIP_BUILD=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

cd "$REPO"
VERSION=$(node -p 'require("./package.json").version')
NAME="mg-device-agent-$VERSION"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
TREE="$STAGE/$NAME"
mkdir "$TREE"

# 1. The compiled agent. Same compiler and tsconfig as `npm run build`, but written into the
# staging area: the checkout's dist/ may be in use (tests run against it) and is left alone.
if $SKIP_BUILD; then
  [ -f dist/cli/main.js ] || die "dist/cli/main.js is missing: run npm run build, or drop --skip-build"
  COMPILED="$REPO/dist"
else
  [ -x node_modules/.bin/tsc ] || die "node_modules/.bin/tsc is missing: run npm ci first"
  echo "build-release.sh: compiling (tsc -p tsconfig.json)"
  COMPILED="$STAGE/compiled"
  node_modules/.bin/tsc -p tsconfig.json --outDir "$COMPILED" || die "TypeScript compilation failed"
fi
[ -f "$COMPILED/cli/main.js" ] || die "the build has no cli/main.js"

# 2. One bundle of tsc's output and the production dependencies, split at the CLI's lazy imports so
# `run` loads only what it uses. A few large files instead of ~900 small ones start faster and take
# less memory on a Pi (npm run bench measures both), and only reachable code ships. Identifiers are
# not minified, so stack traces stay readable. The development stack stays out: the CLI imports it
# lazily and says so when it is missing. undici is replaced by the part of it the agent uses
# (scripts/release-shims/undici.mjs). NODE_PATH lets esbuild find the checkout's node_modules from the
# staging area.
[ -x node_modules/.bin/esbuild ] || die "node_modules/.bin/esbuild is missing: run npm ci first"
echo "build-release.sh: bundling (esbuild)"
mkdir -p "$TREE/dist/cli"
NODE_PATH="$REPO/node_modules" node_modules/.bin/esbuild "$COMPILED/cli/main.js" \
  --bundle --splitting --format=esm --platform=node --target=node20.19 \
  --outdir="$TREE/dist/cli" --chunk-names='[name]-[hash]' \
  --external:../devstack/main.js --alias:undici=./scripts/release-shims/undici.mjs \
  --minify-whitespace --minify-syntax --legal-comments=none \
  --banner:js="import { createRequire as __bundleCreateRequire } from 'node:module'; const require = __bundleCreateRequire(import.meta.url);" \
  --metafile="$STAGE/bundle-meta.json" --log-level=warning ||
  die "bundling failed"
cp package.json "$TREE/"

# The licences of every bundled package travel with it (MIT and the like require their notice), by
# name and version; a bundled package without a licence file stops the build.
node - "$STAGE/bundle-meta.json" "$TREE/THIRD_PARTY_LICENSES" <<'EOF' || die "collecting the licences of the bundled packages failed"
const { readFileSync, readdirSync, writeFileSync } = require('node:fs');
const { join, resolve } = require('node:path');
const [metaPath, outPath] = process.argv.slice(2);
const meta = JSON.parse(readFileSync(metaPath, 'utf8'));
const packageDirs = new Set();
for (const input of Object.keys(meta.inputs)) {
  const match = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (match) packageDirs.add(resolve(match[1]));
}
const sections = [];
const missing = [];
for (const dir of [...packageDirs].sort()) {
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  const licenceFile = readdirSync(dir).find((n) => /^(licen[cs]e|copying)(\.|-|$)/i.test(n));
  if (!licenceFile) {
    missing.push(`${pkg.name}@${pkg.version}`);
    continue;
  }
  sections.push(`${pkg.name}@${pkg.version} (${pkg.license ?? 'licence below'})\n\n${readFileSync(join(dir, licenceFile), 'utf8').trim()}\n`);
}
if (missing.length > 0) {
  console.error(`bundled packages without a licence file: ${missing.join(', ')}`);
  process.exit(1);
}
const header = 'mg-device-agent bundles these packages into dist/cli/; their licences follow.\n';
writeFileSync(outPath, [header, ...sections].join(`\n${'-'.repeat(78)}\n\n`));
console.log(`build-release.sh: bundled ${sections.length} packages: ${sections.map((s) => s.split(' ')[0]).join(', ')}`);
EOF

# 3. What installs and runs it.
mkdir "$TREE/systemd" "$TREE/scripts"
cp systemd/mg-device-agent.service systemd/mg-device-agent.sysusers "$TREE/systemd/"
cp scripts/install.sh "$TREE/scripts/install.sh"
chmod 0755 "$TREE/scripts/install.sh"
if [ -f config/agent.example.json ]; then
  mkdir "$TREE/config"
  cp config/agent.example.json "$TREE/config/"
fi
for doc in README.md LICENSE; do
  if [ -f "$doc" ]; then cp "$doc" "$TREE/"; fi
done
echo "mg-device-agent $VERSION" >"$TREE/RELEASE"

# 4. The tarball: root-owned entries, sorted, no timestamps in the gzip header.
chmod -R u=rwX,go=rX "$TREE"
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd -P)
TARBALL="$OUT_DIR/$NAME.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$STAGE" -cf - "$NAME" | gzip -n -9 >"$TARBALL.tmp"
mv "$TARBALL.tmp" "$TARBALL"

packed=$(stat -c %s "$TARBALL")
unpacked=$(du -sb "$TREE" | cut -f1)
files=$(find "$TREE" -type f | wc -l)
echo "build-release.sh: $TARBALL"
echo "build-release.sh: packed $packed bytes ($(numfmt --to=iec "$packed")), unpacked $unpacked bytes ($(numfmt --to=iec "$unpacked")) in $files files"
