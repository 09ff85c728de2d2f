#!/bin/bash
# First-boot import of mg-device-agent credentials from the boot partition.
#
# `provision-image.sh --batch ... --bundles` makes one shared image (which carries this script as
# /usr/local/sbin/mg-device-agent-import-bundle and a oneshot unit ordered before the agent) plus one
# credentials bundle per device. The production line copies a device's bundle onto the FAT boot
# partition of its card as mg-device-agent-bundle.tar. FAT has no owners or modes and is readable by
# every local user, so on first boot this moves the bundle's files into /etc/mg-device-agent with
# root-only modes, then overwrites and deletes the bundle, before the agent starts.
#
# Usage: mg-device-agent-import-bundle [--root DIR] [--boot DIR]...
#   --root DIR   root file system to install into (default /; other values are for tests and staging)
#   --boot DIR   where to look for the bundle (default /boot/firmware, then /boot)
# Exit 0 when there is nothing to import or the import succeeded; 1 when a bundle was found but
# refused or could not be installed (it is then left in place for an operator to inspect).
set -euo pipefail
umask 077
export LC_ALL=C

readonly BUNDLE_NAME=mg-device-agent-bundle.tar
readonly ALLOWED_MEMBERS=(external_key encrypt_key agent.json)

log() { printf 'mg-device-agent-import-bundle: %s\n' "$*"; }
fail() { printf 'mg-device-agent-import-bundle: error: %s\n' "$*" >&2; exit 1; }

root=/
boot_dirs=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --root) [[ $# -ge 2 ]] || fail "--root needs a directory"; root=$2; shift 2 ;;
    --boot) [[ $# -ge 2 ]] || fail "--boot needs a directory"; boot_dirs+=("$2"); shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) fail "unknown argument: $1 (see --help)" ;;
  esac
done
[[ ${#boot_dirs[@]} -gt 0 ]] || boot_dirs=(/boot/firmware /boot)
root=${root%/}

bundle=
for dir in "${boot_dirs[@]}"; do
  if [[ -f $dir/$BUNDLE_NAME ]]; then bundle=$dir/$BUNDLE_NAME; break; fi
done
if [[ -z $bundle ]]; then
  log "no $BUNDLE_NAME on the boot partition; nothing to import"
  exit 0
fi

agent_dir=$root/etc/mg-device-agent
credentials_dir=$agent_dir/credentials
for dir in "$root/etc" "$agent_dir" "$credentials_dir"; do
  [[ ! -L $dir ]] || fail "$dir is a symlink; refusing to write credentials through it"
done
install -d -m 0755 -o 0 -g 0 "$agent_dir"
install -d -m 0700 -o 0 -g 0 "$credentials_dir"
# Re-assert the modes in case the directories already existed with looser ones.
chmod 0700 "$credentials_dir"
chown 0:0 "$credentials_dir"

# Staging inside the target directory keeps every final rename on one file system (atomic).
staging=$(mktemp -d "$credentials_dir/.import.XXXXXX")
trap 'rm -rf "$staging"' EXIT

# Only the expected regular files are accepted: no paths, links or devices can come from the FAT.
listing=$(tar --list --verbose --numeric-owner --file "$bundle" 2>/dev/null) ||
  fail "$bundle is not a readable tar archive"
declare -A seen=()
while read -r perms _owner _size _date _time name rest; do
  [[ -n $perms ]] || continue
  [[ -z $rest && ${perms:0:1} == - ]] || fail "$bundle holds an entry that is not a plain file"
  allowed=false
  for member in "${ALLOWED_MEMBERS[@]}"; do [[ $name == "$member" ]] && allowed=true; done
  $allowed || fail "$bundle holds an unexpected entry (only ${ALLOWED_MEMBERS[*]} are allowed)"
  [[ -z ${seen[$name]:-} ]] || fail "$bundle holds $name twice"
  seen[$name]=1
done <<<"$listing"
[[ -n ${seen[external_key]:-} ]] || fail "$bundle has no external_key"
[[ -n ${seen[agent.json]:-} ]] || fail "$bundle has no agent.json"

tar --extract --file "$bundle" --directory "$staging" --no-same-owner --no-same-permissions \
  -- "${!seen[@]}" || fail "could not extract $bundle"
for name in "${!seen[@]}"; do
  [[ -f $staging/$name && ! -L $staging/$name ]] || fail "$name in $bundle is not a plain file"
done
[[ -s $staging/external_key ]] || fail "external_key in $bundle is empty"
[[ -s $staging/agent.json ]] || fail "agent.json in $bundle is empty"

chown 0:0 "$staging"/*
chmod 0600 "$staging"/*
chmod 0644 "$staging/agent.json"  # no secret in it; the agent may run unprivileged
mv -f "$staging/external_key" "$credentials_dir/external_key"
if [[ -n ${seen[encrypt_key]:-} ]]; then
  mv -f "$staging/encrypt_key" "$credentials_dir/encrypt_key"
fi
mv -f "$staging/agent.json" "$agent_dir/agent.json"
sync

# Overwrite in place before deleting so the key does not linger in the FAT's free clusters
# (best effort: flash wear levelling may still keep an old copy).
size=$(stat -c %s "$bundle")
if [[ $size -gt 0 ]]; then
  dd if=/dev/zero of="$bundle" bs="$size" count=1 conv=notrunc,fsync status=none
fi
rm -f "$bundle"
sync
log "imported credentials from $bundle into $agent_dir and removed the bundle"
