#!/usr/bin/env bash
# Installs mg-device-agent as a systemd service on Debian / Raspberry Pi OS (arm64, armhf, x86_64),
# from a release tarball, an unpacked release, or a built source checkout. Safe to run again: a
# second run upgrades in place and leaves configuration and credentials alone.
set -euo pipefail
# Directories this creates on the way (/opt, /usr/local/bin...) must be traversable by the service user.
umask 022

readonly SERVICE=mg-device-agent
readonly SERVICE_USER=mg-device-agent
readonly INSTALL_DIR=/opt/mg-device-agent
readonly WRAPPER_PATH=/usr/local/bin/mg-device-agent
readonly UNIT_PATH=/etc/systemd/system/mg-device-agent.service
readonly SYSUSERS_PATH=/etc/sysusers.d/mg-device-agent.conf
readonly CONFIG_DIR=/etc/mg-device-agent
readonly CREDENTIALS_DIR=/etc/mg-device-agent/credentials
readonly STATE_DIR=/var/lib/mg-device-agent
# The unit finds the optional credentials (encryption key, remote-control secret) by name in
# systemd's credential store: /etc/credstore/mg-device-agent.<name> -> $CREDENTIALS_DIR/<name>.
readonly CREDSTORE_DIR=/etc/credstore
readonly OPTIONAL_CREDENTIALS=(encrypt_key control_secret)
credstore_link() { printf '%s/mg-device-agent.%s' "$CREDSTORE_DIR" "$1"; }
readonly NODE_MIN_MAJOR=20
readonly NODE_MIN_MINOR=19

usage() {
  cat <<EOF
Usage: install.sh [options]

Installs mg-device-agent under ${INSTALL_DIR}, the command ${WRAPPER_PATH}, the system user
${SERVICE_USER} and the systemd unit ${UNIT_PATH} (enabled, not started unless --now).

Options:
  --source PATH   release tarball (.tar.gz), unpacked release, or built source checkout
                  (default: the tree this script belongs to)
  --root DIR      install into a staging root (an image being built): users are written into
                  DIR/etc, the unit is enabled with systemctl --root, nothing is started and no
                  package is installed
  --node PATH     Node.js binary whose version to check (default: node on PATH; with --root the
                  version is only checked when --node is given)
  --now           start the service after installing (restarted anyway if it was running)
  --uninstall     remove the program, command, unit and service; keep ${CONFIG_DIR}
                  (configuration and credentials) and ${STATE_DIR}
  --purge         remove everything --uninstall does, plus configuration, credentials and state
  -h, --help      this help

After installing, put the external key in ${CREDENTIALS_DIR}/external_key (and, for secure
bootstrap, the encryption key in ${CREDENTIALS_DIR}/encrypt_key), both root-owned mode 0600,
write ${CONFIG_DIR}/agent.json (see agent.example.json there), then: systemctl start ${SERVICE}
The system user is kept on uninstall and purge, so its UID is never reused for left-over files.
EOF
}

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}

info() {
  echo "install.sh: $*"
}

ROOT=""
SOURCE=""
NODE_BIN=""
START_NOW=false
ACTION=install

while [ $# -gt 0 ]; do
  case "$1" in
    --source) [ $# -ge 2 ] || die "--source needs a path"; SOURCE=$2; shift 2 ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --node) [ $# -ge 2 ] || die "--node needs a path"; NODE_BIN=$2; shift 2 ;;
    --node=*) NODE_BIN=${1#*=}; shift ;;
    --now) START_NOW=true; shift ;;
    --uninstall) [ "$ACTION" = purge ] || ACTION=uninstall; shift ;;
    --purge) ACTION=purge; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (files are installed root-owned)"

if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
  ROOT=$(cd "$ROOT" && pwd -P)
  [ "$ROOT" != / ] || die "--root / is the running system: leave --root out"
  if $START_NOW; then die "--now cannot be used with --root (nothing is started in a staging root)"; fi
fi

# A running systemd (not a chroot, container build or staging root) is what daemon-reload and
# start talk to.
systemd_running() {
  [ -z "$ROOT" ] && [ -d /run/systemd/system ]
}

systemctl_offline() {
  if [ -n "$ROOT" ]; then
    systemctl --root="$ROOT" "$@"
  else
    systemctl "$@"
  fi
}

# --- Node.js ----------------------------------------------------------------------------------

# True when a version such as 20.19.2, v22.1.0 or 1:20.19.2+dfsg-1 is at least 20.19.
version_ok() {
  local version=${1#v}
  version=${version#*:}
  local major=${version%%.*}
  local rest=${version#*.}
  local minor=${rest%%.*}
  minor=${minor%%[!0-9]*}
  case "$major$minor" in '' | *[!0-9]*) return 1 ;; esac
  [ "$major" -gt "$NODE_MIN_MAJOR" ] || { [ "$major" -eq "$NODE_MIN_MAJOR" ] && [ "$minor" -ge "$NODE_MIN_MINOR" ]; }
}

node_too_old() {
  die "Node.js $1 is too old: mg-device-agent needs ${NODE_MIN_MAJOR}.${NODE_MIN_MINOR} or newer.
  Debian 12 (bookworm) and Raspberry Pi OS bookworm ship nodejs 18; Debian 13 (trixie) ships 20.19.
  Install Node.js ${NODE_MIN_MAJOR}.${NODE_MIN_MINOR}+ for $(uname -m) as /usr/bin/node (or /usr/local/bin/node), then run this again."
}

check_node() {
  local version
  if [ -n "$NODE_BIN" ]; then
    [ -x "$NODE_BIN" ] || die "--node $NODE_BIN is not an executable"
    version=$("$NODE_BIN" --version) || die "$NODE_BIN --version failed"
    version_ok "$version" || node_too_old "$version"
    info "Node.js $version ($NODE_BIN)"
    return
  fi
  if [ -n "$ROOT" ]; then
    info "not checking Node.js inside the staging root (pass --node to check one)"
    return
  fi
  if command -v node >/dev/null 2>&1; then
    version=$(node --version) || die "node --version failed"
    version_ok "$version" || node_too_old "$version"
    info "Node.js $version ($(command -v node))"
    return
  fi
  # No node at all: Debian's package, but only if this release's is new enough.
  local candidate=""
  if command -v apt-cache >/dev/null 2>&1; then
    candidate=$(apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ { print $2 }')
  fi
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    die "Node.js is not installed and no Debian nodejs package is available (apt-get update first?).
  mg-device-agent needs Node.js ${NODE_MIN_MAJOR}.${NODE_MIN_MINOR} or newer."
  fi
  version_ok "$candidate" || node_too_old "$candidate (Debian's nodejs package)"
  info "installing Debian's nodejs $candidate"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs
}

# --- the program files -------------------------------------------------------------------------

WORK_DIR=""
cleanup() {
  if [ -n "$WORK_DIR" ]; then rm -rf "$WORK_DIR"; fi
}
trap cleanup EXIT

# Sets SOURCE_DIR to a directory holding dist/, package.json and systemd/, and PAYLOAD_DIR to a
# directory holding exactly what goes into ${INSTALL_DIR}: dist/ and package.json, plus the
# bundled packages' licences (a release) or production node_modules/ (a source checkout).
prepare_payload() {
  local source=$SOURCE
  if [ -z "$source" ]; then source=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P); fi
  WORK_DIR=$(mktemp -d)
  if [ -f "$source" ]; then
    case "$source" in *.tar.gz | *.tgz) ;; *) die "--source $source: expected a .tar.gz release" ;; esac
    mkdir "$WORK_DIR/unpacked"
    tar -xzf "$source" -C "$WORK_DIR/unpacked" --no-same-owner
    local tops=("$WORK_DIR"/unpacked/*)
    if [ ${#tops[@]} -ne 1 ] || [ ! -d "${tops[0]}" ]; then die "$source: expected one top-level directory"; fi
    source=${tops[0]}
  fi
  [ -d "$source" ] || die "source $source does not exist"
  SOURCE_DIR=$(cd "$source" && pwd -P)
  [ -f "$SOURCE_DIR/dist/cli/main.js" ] || die "$SOURCE_DIR/dist/cli/main.js is missing: build first (npm run build) or use a release tarball"
  [ -f "$SOURCE_DIR/systemd/mg-device-agent.service" ] || die "$SOURCE_DIR/systemd/mg-device-agent.service is missing"
  [ -f "$SOURCE_DIR/package.json" ] || die "$SOURCE_DIR/package.json is missing"

  PAYLOAD_DIR="$WORK_DIR/payload"
  mkdir "$PAYLOAD_DIR"
  cp -R "$SOURCE_DIR/dist" "$PAYLOAD_DIR/dist"
  rm -rf "$PAYLOAD_DIR/dist/devstack"
  cp "$SOURCE_DIR/package.json" "$PAYLOAD_DIR/package.json"
  if [ -f "$SOURCE_DIR/RELEASE" ]; then
    # A release's dist/cli/ is one bundle with the production dependencies in it
    # (scripts/build-release.sh): no node_modules, but their licences come along.
    [ -f "$SOURCE_DIR/THIRD_PARTY_LICENSES" ] || die "$SOURCE_DIR/THIRD_PARTY_LICENSES is missing from the release"
    cp "$SOURCE_DIR/THIRD_PARTY_LICENSES" "$PAYLOAD_DIR/THIRD_PARTY_LICENSES"
  else
    # A source checkout's node_modules holds the dev tools too: install production ones afresh.
    [ -f "$SOURCE_DIR/package-lock.json" ] || die "$SOURCE_DIR/package-lock.json is missing"
    command -v npm >/dev/null 2>&1 || die "npm is needed to install from a source checkout (or use a release tarball)"
    cp "$SOURCE_DIR/package-lock.json" "$PAYLOAD_DIR/package-lock.json"
    info "installing production dependencies with npm ci --omit=dev"
    (cd "$PAYLOAD_DIR" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --prefer-offline >/dev/null) ||
      die "npm ci --omit=dev failed in $PAYLOAD_DIR"
    rm -f "$PAYLOAD_DIR/package-lock.json"
  fi
  if find "$PAYLOAD_DIR" -name '*.node' -type f | grep -q .; then
    die "the payload contains native addons (*.node): it would not run on every architecture"
  fi
}

install_program() {
  local target="$ROOT$INSTALL_DIR"
  mkdir -p "$(dirname "$target")"
  # Copy beside the old tree, then swap, so an interrupted upgrade never leaves half a program.
  rm -rf "$target.new" "$target.old"
  cp -R "$PAYLOAD_DIR" "$target.new"
  chown -R -h root:root "$target.new"
  chmod -R u=rwX,go=rX "$target.new"
  if [ -e "$target" ]; then mv "$target" "$target.old"; fi
  mv "$target.new" "$target"
  rm -rf "$target.old"

  mkdir -p "$ROOT$(dirname "$WRAPPER_PATH")"
  local wrapper_tmp="$ROOT$WRAPPER_PATH.new"
  cat >"$wrapper_tmp" <<EOF
#!/bin/sh
# Installed by mg-device-agent's install.sh.
exec node ${INSTALL_DIR}/dist/cli/main.js "\$@"
EOF
  chown root:root "$wrapper_tmp"
  chmod 0755 "$wrapper_tmp"
  mv "$wrapper_tmp" "$ROOT$WRAPPER_PATH"
}

install_user() {
  command -v systemd-sysusers >/dev/null 2>&1 || die "systemd-sysusers is missing (Debian package systemd)"
  mkdir -p "$ROOT$(dirname "$SYSUSERS_PATH")"
  install -m 0644 -o root -g root "$SOURCE_DIR/systemd/mg-device-agent.sysusers" "$ROOT$SYSUSERS_PATH"
  # Creates the user and group only where they do not exist yet.
  if [ -n "$ROOT" ]; then
    systemd-sysusers --root="$ROOT" "$ROOT$SYSUSERS_PATH"
  else
    systemd-sysusers "$SYSUSERS_PATH"
  fi
}

install_config_dirs() {
  install -d -m 0755 -o root -g root "$ROOT$CONFIG_DIR"
  install -d -m 0700 -o root -g root "$ROOT$CREDENTIALS_DIR"
  if [ ! -d "$ROOT$CREDSTORE_DIR" ]; then install -d -m 0700 -o root -g root "$ROOT$CREDSTORE_DIR"; fi
  # A real file there is an operator's key put straight into the store: never replace it.
  local name link
  for name in "${OPTIONAL_CREDENTIALS[@]}"; do
    link=$(credstore_link "$name")
    if [ -L "$ROOT$link" ] || [ ! -e "$ROOT$link" ]; then
      ln -sfn "$CREDENTIALS_DIR/$name" "$ROOT$link"
    else
      info "keeping $link (a file, not the link to $CREDENTIALS_DIR/$name)"
    fi
  done
  if [ -f "$SOURCE_DIR/config/agent.example.json" ]; then
    install -m 0644 -o root -g root "$SOURCE_DIR/config/agent.example.json" "$ROOT$CONFIG_DIR/agent.example.json"
  fi
  # The state directory is created and owned by systemd (StateDirectory=, mode 0700) at start.
}

install_unit() {
  command -v systemctl >/dev/null 2>&1 || die "systemctl is missing (Debian package systemd)"
  mkdir -p "$ROOT$(dirname "$UNIT_PATH")"
  install -m 0644 -o root -g root "$SOURCE_DIR/systemd/mg-device-agent.service" "$ROOT$UNIT_PATH"
  if systemd_running; then systemctl daemon-reload; fi
  local output
  if ! output=$(systemctl_offline enable "$SERVICE.service" 2>&1); then
    die "systemctl enable $SERVICE failed: $output"
  fi
}

start_service() {
  if ! systemd_running; then
    if $START_NOW; then info "systemd is not running here: not starting $SERVICE"; fi
    return 0
  fi
  # --no-block: the unit only becomes active once the agent has reached its broker.
  local state
  state=$(systemctl show -p ActiveState --value "$SERVICE.service" 2>/dev/null || true)
  if [ "$state" = active ] || [ "$state" = activating ] || [ "$state" = reloading ]; then
    info "restarting $SERVICE (it was running)"
    systemctl restart --no-block "$SERVICE.service"
  elif $START_NOW; then
    info "starting $SERVICE (systemctl status $SERVICE shows its progress)"
    systemctl start --no-block "$SERVICE.service"
  fi
}

next_steps() {
  local missing=()
  [ -f "$ROOT$CONFIG_DIR/agent.json" ] || missing+=("$CONFIG_DIR/agent.json (start from $CONFIG_DIR/agent.example.json)")
  [ -f "$ROOT$CREDENTIALS_DIR/external_key" ] || missing+=("$CREDENTIALS_DIR/external_key (root-owned, mode 0600)")
  if [ ${#missing[@]} -gt 0 ]; then
    info "before the service can start, create:"
    local item
    for item in "${missing[@]}"; do info "  $item"; done
  fi
}

do_install() {
  check_node
  prepare_payload
  info "installing from $SOURCE_DIR into ${ROOT:-/}"
  install_user
  install_program
  install_config_dirs
  install_unit
  start_service
  info "installed; $SERVICE.service is enabled"
  next_steps
}

# --- removal -----------------------------------------------------------------------------------

do_uninstall() {
  if [ -e "$ROOT$UNIT_PATH" ] && command -v systemctl >/dev/null 2>&1; then
    if systemd_running; then
      systemctl disable --now "$SERVICE.service" >/dev/null 2>&1 || true
    else
      systemctl_offline disable "$SERVICE.service" >/dev/null 2>&1 || true
    fi
  fi
  # Whatever systemctl could not reach: the enable symlink and the unit itself.
  rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/$SERVICE.service" "$ROOT$UNIT_PATH"
  rm -f "$ROOT$WRAPPER_PATH" "$ROOT$SYSUSERS_PATH"
  local name link
  for name in "${OPTIONAL_CREDENTIALS[@]}"; do
    link=$(credstore_link "$name")
    if [ -L "$ROOT$link" ] || { [ "$ACTION" = purge ] && [ -e "$ROOT$link" ]; }; then rm -f "$ROOT$link"; fi
  done
  rm -rf "$ROOT$INSTALL_DIR" "$ROOT$INSTALL_DIR.new" "$ROOT$INSTALL_DIR.old"
  if systemd_running; then systemctl daemon-reload; fi
  if [ "$ACTION" = purge ]; then
    rm -rf "$ROOT$CONFIG_DIR" "$ROOT$STATE_DIR"
    info "removed $SERVICE with its configuration, credentials and state (the user $SERVICE_USER is kept)"
  else
    info "removed $SERVICE; kept $CONFIG_DIR and $STATE_DIR (--purge removes them)"
  fi
}

case "$ACTION" in
  install) do_install ;;
  uninstall | purge) do_uninstall ;;
esac
