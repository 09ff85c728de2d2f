#!/usr/bin/env bash
# Personalises a device image (or a staging root file system) with mg-device-agent's bootstrap
# credentials, without mounting anything: partition offsets come from `sfdisk --json`, the ext4 root
# is edited with `debugfs -w`, the FAT boot partition with mtools. No loop devices, no root needed
# for images. See --help for usage and README "from factory to fleet" for the production-line flow.
#
# Why debugfs rather than a first-boot copy for per-device images: files land with their final
# owner and mode (0600 root keys, 0700 credentials directory), nothing secret ever sits on the FAT
# partition that every local user can read, and the device needs no extra boot step. The bundle
# flow (--bundles) exists for lines that flash one shared image: there a first-boot importer moves
# the bundle from the boot partition into place and wipes it.
set -euo pipefail
umask 077
# Byte semantics: key lengths are bytes, character classes are ASCII.
export LC_ALL=C
export DEBUGFS_PAGER=__none__ MTOOLS_SKIP_CHECK=1
# debugfs, e2fsck and sfdisk live in sbin, which a non-root user's PATH often lacks.
export PATH=$PATH:/usr/sbin:/sbin

readonly PROG=provision-image
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

# The layout the agent uses on the device.
readonly AGENT_DIR=/etc/mg-device-agent
readonly CONFIG_PATH=$AGENT_DIR/agent.json
readonly CREDENTIALS_DIR=$AGENT_DIR/credentials
readonly EXTERNAL_KEY_PATH=$CREDENTIALS_DIR/external_key
readonly ENCRYPT_KEY_PATH=$CREDENTIALS_DIR/encrypt_key
readonly SYSTEMD_DIR=/etc/systemd/system
readonly WANTS_DIR=$SYSTEMD_DIR/multi-user.target.wants
readonly UNIT_NAME=mg-device-agent.service
readonly IMPORT_UNIT_NAME=mg-device-agent-import-bundle.service
readonly IMPORTER_PATH=/usr/local/sbin/mg-device-agent-import-bundle
readonly BUNDLE_NAME_ON_BOOT=mg-device-agent-bundle.tar

readonly MAX_KEY_BYTES=1024
readonly MAX_CSV_BYTES=$((16 * 1024 * 1024))
# External IDs end up in file names, JSON and a URL path: keep them to a safe, MAC-friendly set.
readonly ID_PATTERN='^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'

readonly EXIT_INPUT=2 # invalid arguments or input: nothing was written
readonly EXIT_WRITE=1 # failure while writing

usage() {
  cat <<EOF
Usage:
  One device:
    $0 --image FILE (--output FILE | --in-place) | --rootfs DIR
        --bootstrap-url URL --external-key-file FILE
        [--encrypt-key-file FILE] [--external-id ID] [--mode secure|plain]

  Production line, one image per device (DIR/<external_id>.img, or DIR/row-<N>.img for 'mac' rows):
    $0 --batch devices.csv --image base.img --out-dir DIR --bootstrap-url URL
        [--encrypt-key-file FILE] [--mode secure|plain]

  Production line, one shared image plus one credentials bundle per device (DIR/shared.img and
  DIR/bundles/<external_id or row-N>.tar, imported from the boot partition at first boot):
    $0 --batch devices.csv --bundles (--image base.img | --rootfs DIR) --out-dir DIR
        --bootstrap-url URL [--encrypt-key-file FILE] [--mode secure|plain]

  Put a bundle on the boot partition of a shared image or a flashed card (e.g. /dev/sdX):
    $0 --install-bundle BUNDLE.tar --image FILE_OR_DEVICE (--output FILE | --in-place)

What is written into the root file system (all root:root):
  $CONFIG_PATH (0644)
      bootstrap.url, bootstrap.mode, identity.externalId (if any) and the key file paths;
      other keys already in the file are kept
  $EXTERNAL_KEY_PATH (0600, directory 0700)
  $ENCRYPT_KEY_PATH (0600), when --encrypt-key-file is given
  $SYSTEMD_DIR/$UNIT_NAME (0644), copied from --unit-file
  $WANTS_DIR/$UNIT_NAME -> $SYSTEMD_DIR/$UNIT_NAME

Options:
  --image FILE            raw disk image (MBR or GPT) or block device with an ext2/3/4 root partition
  --output FILE           write the result here; FILE given to --image is never modified
  --in-place              modify the --image FILE itself
  --rootfs DIR            a root file system directory (staging root); plain file operations, needs root
  --bootstrap-url URL     base URL of the Bootstrap service, e.g. http://bootstrap.example.com:9013
  --external-key-file F   the device's external key (mode 0600 or 0400; one trailing newline is ignored)
  --encrypt-key-file F    MG_BOOTSTRAP_ENCRYPT_KEY: 16, 24 or 32 bytes (mode 0600 or 0400)
  --external-id ID        fixed external ID; without it (or with 'mac') the agent derives it from its MAC
  --mode secure|plain     default: secure when --encrypt-key-file is given, plain otherwise
  --batch CSV             header 'external_id,external_key'; external_id 'mac' = derive from the MAC.
                          No quoting: keys must not contain commas or quotes. The CSV must be 0600/0400.
  --out-dir DIR           where batch output goes (created 0700; the images and bundles hold keys)
  --bundles               batch: shared image + per-device bundles instead of one image per device
  --install-bundle TAR    copy TAR onto the FAT boot partition as $BUNDLE_NAME_ON_BOOT
  --unit-file F           systemd unit to install (default: systemd/$UNIT_NAME next to scripts/)
  --root-partition N      which partition is the root file system, when the image has several ext ones
  --force                 overwrite existing output files
  -h, --help              this text

Keys are never printed. Exit status: 0 done, $EXIT_INPUT invalid arguments or input (nothing written),
$EXIT_WRITE failure while writing (no partial --output or batch file is left behind).
EOF
}

die() {
  local status=$1
  shift
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit "$status"
}
say() { printf '%s: %s\n' "$PROG" "$*"; }

# ---------------------------------------------------------------------------------------------
# Workspace: keys are copied here (0600 files in a 0700 directory) so they never pass through argv.

WORK=
PARTIAL_OUTPUTS=()
cleanup() {
  local file
  for file in "${PARTIAL_OUTPUTS[@]}"; do rm -f -- "$file"; done
  [[ -z $WORK ]] || rm -rf -- "$WORK"
}
trap cleanup EXIT
WORK=$(mktemp -d "${TMPDIR:-/tmp}/provision-image.XXXXXX")

forget_partial() {
  local keep=() file
  for file in "${PARTIAL_OUTPUTS[@]}"; do [[ $file == "$1" ]] || keep+=("$file"); done
  PARTIAL_OUTPUTS=("${keep[@]}")
}

file_size() { stat -L -c %s -- "$1"; }

# Refuses a file that holds secrets when group or others have any access to it.
check_private_file() {
  local path=$1 label=$2 mode
  [[ -e $path ]] || die "$EXIT_INPUT" "$label $path does not exist"
  [[ ! -d $path ]] || die "$EXIT_INPUT" "$label $path is a directory"
  [[ -r $path ]] || die "$EXIT_INPUT" "$label $path is not readable"
  mode=$(stat -L -c %a -- "$path")
  if (((8#$mode & 8#077) != 0)); then
    die "$EXIT_INPUT" "$label $path is accessible by group or others (mode $mode); chmod 600 it first"
  fi
}

# Copies a secret into the workspace, dropping one trailing newline (echo 'key' > file is common).
# Prints the copy's path.
import_secret_file() {
  local path=$1 label=$2 copy raw size
  check_private_file "$path" "$label"
  copy=$(mktemp "$WORK/secret.XXXXXX")
  raw=$copy.raw
  head -c $((MAX_KEY_BYTES + 2)) -- "$path" >"$raw" || die "$EXIT_INPUT" "cannot read $label $path"
  size=$(file_size "$raw")
  if [[ $size -gt 0 && $(tail -c 1 -- "$raw" | od -An -tx1 | tr -d ' \n') == 0a ]]; then
    size=$((size - 1))
    if [[ $size -gt 0 && $(tail -c 2 -- "$raw" | head -c 1 | od -An -tx1 | tr -d ' \n') == 0d ]]; then
      size=$((size - 1))
    fi
  fi
  head -c "$size" -- "$raw" >"$copy"
  rm -f -- "$raw"
  printf '%s\n' "$copy"
}

count_bytes_matching() { # FILE TR_SET: how many bytes of FILE are in TR_SET
  local total kept
  total=$(file_size "$1")
  kept=$(tr -d "$2" <"$1" | wc -c)
  echo $((total - kept))
}

# Prints what is wrong with the key in FILE (nothing when it is fine). Never prints the key.
external_key_problem() {
  local file=$1 mode=$2 size first last
  size=$(file_size "$file")
  if [[ $size -eq 0 ]]; then echo "is empty"; return; fi
  if [[ $size -gt $MAX_KEY_BYTES ]]; then echo "is longer than $MAX_KEY_BYTES bytes"; return; fi
  if [[ $(count_bytes_matching "$file" '\000-\037\177') -gt 0 ]]; then
    echo "contains control characters (a line break or tab inside the key?)"
    return
  fi
  first=$(head -c 1 -- "$file" | od -An -tx1 | tr -d ' \n')
  last=$(tail -c 1 -- "$file" | od -An -tx1 | tr -d ' \n')
  if [[ $first == 20 || $last == 20 ]]; then echo "starts or ends with a space"; return; fi
  if [[ $(count_bytes_matching "$file" '\200-\377') -gt 0 ]]; then
    if [[ $mode == plain ]]; then
      echo "has non-ASCII characters, which plain bootstrap cannot send in an HTTP header; use --mode secure"
      return
    fi
    if command -v iconv >/dev/null && ! iconv -f UTF-8 -t UTF-8 <"$file" >/dev/null 2>&1; then
      echo "is not valid UTF-8"
      return
    fi
  fi
}

encrypt_key_problem() {
  local file=$1 size
  size=$(file_size "$file")
  if [[ $size -eq 0 ]]; then echo "is empty"; return; fi
  if [[ $(count_bytes_matching "$file" '\000-\037\177') -gt 0 ]]; then
    echo "contains control characters"
    return
  fi
  case $size in
    16 | 24 | 32) ;;
    *) echo "must be 16, 24 or 32 bytes (AES-128/192/256, used as raw UTF-8 bytes), found $size bytes" ;;
  esac
}

validate_external_id() { # prints a problem, or nothing
  if [[ ! $1 =~ $ID_PATTERN ]]; then
    echo "must be 1-128 characters from A-Z a-z 0-9 . _ : - and start with a letter or digit"
  fi
}

validate_bootstrap_url() {
  local url=$1 pattern='^https?://[][A-Za-z0-9.:_-]+(/[^[:space:][:cntrl:]?#"\\]*)?$'
  [[ $url =~ $pattern ]] ||
    die "$EXIT_INPUT" "--bootstrap-url must look like http://host:9013 or https://host/path (no spaces, query or fragment)"
  [[ ! $url =~ /(clients|things)/bootstrap ]] ||
    die "$EXIT_INPUT" "--bootstrap-url is the service's base URL; leave out the /clients/bootstrap path (the agent adds it)"
}

# ---------------------------------------------------------------------------------------------
# Images: find the partitions without mounting.

IMAGE_ROOT_OFFSET=
IMAGE_ROOT_PARTITION=
IMAGE_BOOT_OFFSET=

read_hex() { # FILE OFFSET COUNT
  dd if="$1" bs="$3" count=1 skip="$2" iflag=skip_bytes status=none 2>/dev/null |
    od -An -v -tx1 | tr -d ' \n'
}

device_size() {
  if [[ -b $1 ]]; then blockdev --getsize64 "$1"; else file_size "$1"; fi
}

inspect_image() {
  local image=$1 table sector_size count i number start size offset end image_bytes magic
  local ext_numbers=() ext_offsets=() fat_offsets=()
  [[ -e $image ]] || die "$EXIT_INPUT" "image $image does not exist"
  [[ -f $image || -b $image ]] || die "$EXIT_INPUT" "image $image is neither a file nor a block device"
  [[ -r $image ]] || die "$EXIT_INPUT" "image $image is not readable"
  # debugfs reads "?" and mtools "@@" in a name as an offset suffix.
  [[ $image != *'?'* && $image != *@@* ]] || die "$EXIT_INPUT" "image path $image must not contain '?' or '@@'"
  # Desktops mount an inserted card on their own; writing under a mounted file system corrupts it.
  if [[ -b $image ]] && [[ -n $(lsblk -nro MOUNTPOINT -- "$image" 2>/dev/null | tr -d '\n') ]]; then
    die "$EXIT_INPUT" "$image (or one of its partitions) is mounted; unmount it first"
  fi

  magic=$(read_hex "$image" 0 6)
  case $magic in
    fd377a585a00) die "$EXIT_INPUT" "$image is xz-compressed; decompress it first (xz -dk $image)" ;;
    1f8b*) die "$EXIT_INPUT" "$image is gzip-compressed; decompress it first (gunzip -k $image)" ;;
    504b0304*) die "$EXIT_INPUT" "$image is a zip archive; extract the .img from it first" ;;
    28b52ffd*) die "$EXIT_INPUT" "$image is zstd-compressed; decompress it first (zstd -dk $image)" ;;
  esac

  table=$(sfdisk --json -- "$image" 2>/dev/null) ||
    die "$EXIT_INPUT" "$image has no partition table; expected a disk image with a FAT boot partition and an ext4 root partition (Raspberry Pi OS: 1 bootfs, 2 rootfs)"
  sector_size=$(jq -r '.partitiontable.sectorsize // 512' <<<"$table")
  count=$(jq -r '.partitiontable.partitions // [] | length' <<<"$table")
  [[ $count -gt 0 ]] || die "$EXIT_INPUT" "$image has a partition table but no partitions"
  image_bytes=$(device_size "$image")

  for ((i = 0; i < count; i++)); do
    read -r number start size < <(jq -r --argjson i "$i" \
      '.partitiontable.partitions[$i] | "\(.node | capture("(?<n>[0-9]+)$").n) \(.start) \(.size)"' <<<"$table")
    offset=$((start * sector_size))
    end=$(((start + size) * sector_size))
    [[ $end -le $image_bytes ]] ||
      die "$EXIT_INPUT" "partition $number of $image ends beyond the end of the image (truncated download?)"
    # ext2/3/4: superblock at +1024, magic 0xEF53 at +56. FAT: 0x55AA signature, type string.
    if [[ $(read_hex "$image" $((offset + 1080)) 2) == 53ef ]]; then
      ext_numbers+=("$number")
      ext_offsets+=("$offset")
    elif [[ $(read_hex "$image" $((offset + 510)) 2) == 55aa ]] &&
      [[ $(read_hex "$image" $((offset + 82)) 5) == 4641543332 || $(read_hex "$image" $((offset + 54)) 4) == 46415431 ]]; then
      fat_offsets+=("$offset")
    fi
  done

  IMAGE_BOOT_OFFSET=${fat_offsets[0]:-}
  if [[ -n $ROOT_PARTITION ]]; then
    for i in "${!ext_numbers[@]}"; do
      if [[ ${ext_numbers[$i]} == "$ROOT_PARTITION" ]]; then
        IMAGE_ROOT_PARTITION=$ROOT_PARTITION
        IMAGE_ROOT_OFFSET=${ext_offsets[$i]}
      fi
    done
    [[ -n $IMAGE_ROOT_OFFSET ]] ||
      die "$EXIT_INPUT" "partition $ROOT_PARTITION of $image is not an ext2/3/4 file system"
  elif [[ ${#ext_numbers[@]} -eq 0 ]]; then
    die "$EXIT_INPUT" "$image has no ext2/3/4 partition ($count partition(s), ${#fat_offsets[@]} FAT); expected the root file system as ext4 (Raspberry Pi OS: partition 2, rootfs)"
  elif [[ ${#ext_numbers[@]} -eq 1 ]]; then
    IMAGE_ROOT_PARTITION=${ext_numbers[0]}
    IMAGE_ROOT_OFFSET=${ext_offsets[0]}
  else
    local with_etc=()
    for i in "${!ext_numbers[@]}"; do
      if [[ $(E4_SPEC="$image?offset=${ext_offsets[$i]}" e4_type /etc) == directory ]]; then with_etc+=("$i"); fi
    done
    [[ ${#with_etc[@]} -eq 1 ]] ||
      die "$EXIT_INPUT" "$image has several ext partitions (${ext_numbers[*]}); say which is the root with --root-partition N"
    IMAGE_ROOT_PARTITION=${ext_numbers[${with_etc[0]}]}
    IMAGE_ROOT_OFFSET=${ext_offsets[${with_etc[0]}]}
  fi

  # An image whose root is already damaged would be blamed on us; refuse it up front.
  e2fsck -fn "$image?offset=$IMAGE_ROOT_OFFSET" >"$WORK/fsck.out" 2>&1 ||
    die "$EXIT_INPUT" "the root file system (partition $IMAGE_ROOT_PARTITION) of $image has errors (e2fsck -fn); repair the base image first"
  [[ $(E4_SPEC="$image?offset=$IMAGE_ROOT_OFFSET" e4_type /etc) == directory ]] ||
    die "$EXIT_INPUT" "partition $IMAGE_ROOT_PARTITION of $image has no /etc directory; is it really the root file system?"
}

# ---------------------------------------------------------------------------------------------
# Target back ends. Both offer: target_type, target_read_file, target_stat, ensure_dir, put_file,
# put_symlink, commit_target.
# TARGET is "ext4" (an image partition, through debugfs) or "dir" (a root directory).

TARGET=
E4_SPEC=
ROOTFS_DIR=
E4_QUEUE=()
declare -A E4_KNOWN_DIRS=()
VERIFY_FILES=() # "path|local|mode"
VERIFY_LINKS=() # "path|target"
VERIFY_DIRS=()  # "path|mode"

debugfs_errors() { grep -v -E '^debugfs [0-9.]+ \(' "$1" || true; }

e4_type() {
  local out
  out=$(debugfs -R "stat \"$1\"" "$E4_SPEC" 2>"$WORK/debugfs.err") || true
  if grep -q 'File not found by ext2_lookup' "$WORK/debugfs.err"; then
    echo missing
    return
  fi
  out=$(sed -n 's/^Inode: [0-9]*  *Type: \([a-z]*\).*/\1/p' <<<"$out" | head -n 1)
  [[ -n $out ]] || die "$EXIT_WRITE" "cannot read $1 in the root file system: $(debugfs_errors "$WORK/debugfs.err" | head -n 3)"
  echo "$out"
}

target_type() { # regular | directory | symlink | missing | other
  if [[ $TARGET == ext4 ]]; then
    if [[ -n ${E4_KNOWN_DIRS[$1]:-} ]]; then echo directory; else e4_type "$1"; fi
  else
    local path=$ROOTFS_DIR$1
    if [[ -L $path ]]; then echo symlink
    elif [[ -d $path ]]; then echo directory
    elif [[ -f $path ]]; then echo regular
    elif [[ -e $path ]]; then echo other
    else echo missing
    fi
  fi
}

target_read_file() { # PATH OUT: returns 1 when PATH does not exist
  local type
  type=$(target_type "$1")
  case $type in
    missing) return 1 ;;
    regular) ;;
    *) die "$EXIT_INPUT" "$1 in the target is a $type, expected a regular file" ;;
  esac
  if [[ $TARGET == ext4 ]]; then
    debugfs -R "cat \"$1\"" "$E4_SPEC" >"$2" 2>"$WORK/debugfs.err"
    [[ -z $(debugfs_errors "$WORK/debugfs.err") ]] || die "$EXIT_WRITE" "cannot read $1 from the root file system"
  else
    cat -- "$ROOTFS_DIR$1" >"$2"
  fi
}

# Creates missing directories (root:root, MODE); with "strict", also resets an existing last one.
ensure_dir() {
  local path=$1 mode=$2 strict=${3:-} prefix='' part type parts
  IFS=/ read -r -a parts <<<"${path#/}"
  for part in "${parts[@]}"; do
    prefix=$prefix/$part
    type=$(target_type "$prefix")
    case $type in
      directory)
        [[ $prefix == "$path" && $strict == strict ]] || continue
        if [[ $TARGET == ext4 ]]; then
          E4_QUEUE+=("sif \"$prefix\" mode 040${mode#0}" "sif \"$prefix\" uid 0" "sif \"$prefix\" gid 0")
        else
          chown 0:0 -- "$ROOTFS_DIR$prefix"
          chmod "$mode" -- "$ROOTFS_DIR$prefix"
        fi
        ;;
      missing)
        # Intermediate directories get the usual 0755; only the last one gets MODE.
        local this_mode=0755
        [[ $prefix != "$path" ]] || this_mode=$mode
        if [[ $TARGET == ext4 ]]; then
          E4_QUEUE+=("mkdir \"$prefix\"" "sif \"$prefix\" mode 040${this_mode#0}" "sif \"$prefix\" uid 0" "sif \"$prefix\" gid 0")
          E4_KNOWN_DIRS[$prefix]=1
        else
          mkdir -m "$this_mode" -- "$ROOTFS_DIR$prefix"
          chown 0:0 -- "$ROOTFS_DIR$prefix"
        fi
        ;;
      symlink) die "$EXIT_INPUT" "$prefix in the target is a symlink; refusing to write through it" ;;
      *) die "$EXIT_INPUT" "$prefix in the target is a $type, expected a directory" ;;
    esac
  done
  [[ $strict != strict ]] || VERIFY_DIRS+=("$path|$mode")
}

put_file() { # LOCAL PATH MODE (root:root)
  local local_file=$1 path=$2 mode=$3 type
  type=$(target_type "$path")
  case $type in
    missing | regular | symlink) ;;
    *) die "$EXIT_INPUT" "$path in the target is a $type; refusing to replace it with a file" ;;
  esac
  if [[ $TARGET == ext4 ]]; then
    # debugfs cannot overwrite; a pre-checked rm keeps its stderr clean (any message = failure).
    [[ $type == missing ]] || E4_QUEUE+=("rm \"$path\"")
    E4_QUEUE+=("write \"$local_file\" \"$path\"" "sif \"$path\" mode 0100${mode#0}" "sif \"$path\" uid 0" "sif \"$path\" gid 0")
  else
    # Created 0600 (umask), then chmod: never readable by others, even for a moment; rename is atomic.
    local staged=$ROOTFS_DIR$path.provision-tmp
    rm -f -- "$staged"
    cp -- "$local_file" "$staged"
    chown 0:0 -- "$staged"
    chmod "$mode" -- "$staged"
    mv -f -- "$staged" "$ROOTFS_DIR$path"
  fi
  VERIFY_FILES+=("$path|$local_file|$mode")
}

put_symlink() { # LINK TARGET_PATH
  local link=$1 destination=$2 type
  type=$(target_type "$link")
  case $type in
    missing | regular | symlink) ;;
    *) die "$EXIT_INPUT" "$link in the target is a $type; refusing to replace it with a symlink" ;;
  esac
  if [[ $TARGET == ext4 ]]; then
    [[ $type == missing ]] || E4_QUEUE+=("rm \"$link\"")
    E4_QUEUE+=("symlink \"$link\" \"$destination\"")
  else
    local staged=$ROOTFS_DIR$link.provision-tmp
    rm -f -- "$staged"
    ln -s -- "$destination" "$staged"
    chown -h 0:0 -- "$staged"
    mv -fT -- "$staged" "$ROOTFS_DIR$link"
  fi
  VERIFY_LINKS+=("$link|$destination")
}

# Runs the queued debugfs commands, then reads everything back and checks the file system.
commit_target() {
  local entry path local_file mode destination
  if [[ $TARGET == ext4 ]]; then
    printf '%s\n' "${E4_QUEUE[@]}" >"$WORK/debugfs.cmds"
    debugfs -w -f "$WORK/debugfs.cmds" "$E4_SPEC" >"$WORK/debugfs.out" 2>"$WORK/debugfs.err" ||
      die "$EXIT_WRITE" "debugfs could not open the root file system for writing"
    if [[ -n $(debugfs_errors "$WORK/debugfs.err") ]]; then
      die "$EXIT_WRITE" "debugfs failed while writing the root file system: $(debugfs_errors "$WORK/debugfs.err" | head -n 3 | tr '\n' ' ')"
    fi
    E4_QUEUE=()
    E4_KNOWN_DIRS=()
  fi

  for entry in "${VERIFY_FILES[@]}"; do
    IFS='|' read -r path local_file mode <<<"$entry"
    target_stat "$path"
    [[ $STAT_TYPE == regular && $STAT_MODE == "$mode" && $STAT_OWNER == 0:0 ]] ||
      die "$EXIT_WRITE" "$path reads back as $STAT_TYPE $STAT_MODE owner $STAT_OWNER, expected regular $mode owner 0:0"
    target_read_file "$path" "$WORK/readback"
    cmp -s -- "$WORK/readback" "$local_file" || die "$EXIT_WRITE" "$path reads back with different content"
  done
  for entry in "${VERIFY_DIRS[@]}"; do
    IFS='|' read -r path mode <<<"$entry"
    target_stat "$path"
    [[ $STAT_TYPE == directory && $STAT_MODE == "$mode" && $STAT_OWNER == 0:0 ]] ||
      die "$EXIT_WRITE" "$path reads back as $STAT_TYPE $STAT_MODE owner $STAT_OWNER, expected directory $mode owner 0:0"
  done
  for entry in "${VERIFY_LINKS[@]}"; do
    IFS='|' read -r path destination <<<"$entry"
    target_stat "$path"
    [[ $STAT_TYPE == symlink && $STAT_LINK == "$destination" ]] ||
      die "$EXIT_WRITE" "$path reads back as $STAT_TYPE '$STAT_LINK', expected a symlink to $destination"
  done
  VERIFY_FILES=() VERIFY_DIRS=() VERIFY_LINKS=()
  rm -f -- "$WORK/readback"

  if [[ $TARGET == ext4 ]]; then
    e2fsck -fn "$E4_SPEC" >"$WORK/fsck.out" 2>&1 ||
      die "$EXIT_WRITE" "the root file system fails e2fsck -fn after writing"
  fi
}

STAT_TYPE='' STAT_MODE='' STAT_OWNER='' STAT_LINK=''
target_stat() {
  local out
  STAT_TYPE=$(target_type "$1") STAT_MODE='' STAT_OWNER='' STAT_LINK=''
  [[ $STAT_TYPE != missing ]] || return 0
  if [[ $TARGET == ext4 ]]; then
    out=$(debugfs -R "stat \"$1\"" "$E4_SPEC" 2>/dev/null)
    STAT_MODE=$(sed -n 's/^Inode:.*Mode: *\([0-7]*\).*/\1/p' <<<"$out" | head -n 1)
    STAT_OWNER=$(sed -n 's/^User: *\([0-9]*\) *Group: *\([0-9]*\).*/\1:\2/p' <<<"$out" | head -n 1)
    STAT_LINK=$(sed -n 's/^Fast link dest: "\(.*\)"$/\1/p' <<<"$out" | head -n 1)
  else
    STAT_MODE=$(stat -c %a -- "$ROOTFS_DIR$1")
    STAT_OWNER=$(stat -c %u:%g -- "$ROOTFS_DIR$1")
    [[ $STAT_TYPE != symlink ]] || STAT_LINK=$(readlink -- "$ROOTFS_DIR$1")
  fi
  # debugfs prints four octal digits, stat %a three or four; compare them as numbers.
  STAT_MODE=$(printf '%04o' "$((8#${STAT_MODE:-0}))")
}

use_image_target() { TARGET=ext4 E4_SPEC="$1?offset=$IMAGE_ROOT_OFFSET"; }
use_rootfs_target() { TARGET=dir ROOTFS_DIR=${1%/}; }

# ---------------------------------------------------------------------------------------------
# What gets written.

# The target's existing agent.json (or {}), which the merged config keeps.
read_base_config() { # OUT
  if target_read_file "$CONFIG_PATH" "$1"; then
    jq -e 'type == "object" and ((.bootstrap // {}) | type == "object") and ((.identity // {}) | type == "object")' \
      "$1" >/dev/null 2>&1 ||
      die "$EXIT_INPUT" "the target's existing $CONFIG_PATH is not a JSON object with object sections; fix or remove it"
  else
    echo '{}' >"$1"
  fi
}

build_config() { # BASE EXTERNAL_ID(or empty) OUT
  jq --arg url "$BOOTSTRAP_URL" --arg mode "$MODE" --arg id "$2" \
    --arg externalKeyFile "$EXTERNAL_KEY_PATH" --arg encryptKeyFile "$ENCRYPT_KEY_PATH" '
      .bootstrap = ((.bootstrap // {}) + {url: $url, mode: $mode})
      | if $mode == "secure" then .bootstrap.encryptKeyFile = $encryptKeyFile else . end
      | .identity = ((.identity // {}) + {externalKeyFile: $externalKeyFile})
      | if $id == "" then del(.identity.externalId) else .identity.externalId = $id end
    ' "$1" >"$3"
}

import_unit() {
  cat <<EOF
[Unit]
Description=Import mg-device-agent credentials from the boot partition (first boot)
Documentation=file://$IMPORTER_PATH
ConditionPathExists=|/boot/firmware/$BUNDLE_NAME_ON_BOOT
ConditionPathExists=|/boot/$BUNDLE_NAME_ON_BOOT
After=local-fs.target
Before=$UNIT_NAME

[Service]
Type=oneshot
ExecStart=$IMPORTER_PATH
UMask=0077

[Install]
WantedBy=multi-user.target
EOF
}

# In secure mode without --encrypt-key-file the target must already hold the key.
check_encrypt_key_present() {
  if [[ $MODE == secure && -z $ENCRYPT_KEY_COPY ]]; then
    [[ $(target_type "$ENCRYPT_KEY_PATH") == regular ]] ||
      die "$EXIT_INPUT" "--mode secure needs --encrypt-key-file (the target has no $ENCRYPT_KEY_PATH)"
  fi
}

# Writes one target: config, credentials (when given), unit and its enable link, and optionally
# the first-boot importer. Then verifies it.
provision_target() { # EXTERNAL_ID EXTERNAL_KEY_COPY ENCRYPT_KEY_COPY WITH_IMPORTER(yes|no); copies may be ""
  local external_id=$1 external_key_copy=$2 encrypt_key_copy=$3 with_importer=$4
  warn_if_agent_missing
  read_base_config "$WORK/base-config.json"
  build_config "$WORK/base-config.json" "$external_id" "$WORK/agent.json"

  ensure_dir "$AGENT_DIR" 0755
  ensure_dir "$CREDENTIALS_DIR" 0700 strict
  ensure_dir "$WANTS_DIR" 0755
  put_file "$WORK/agent.json" "$CONFIG_PATH" 0644
  [[ -z $external_key_copy ]] || put_file "$external_key_copy" "$EXTERNAL_KEY_PATH" 0600
  [[ -z $encrypt_key_copy ]] || put_file "$encrypt_key_copy" "$ENCRYPT_KEY_PATH" 0600
  put_file "$UNIT_FILE" "$SYSTEMD_DIR/$UNIT_NAME" 0644
  put_symlink "$WANTS_DIR/$UNIT_NAME" "$SYSTEMD_DIR/$UNIT_NAME"
  if [[ $with_importer == yes ]]; then
    import_unit >"$WORK/import.service"
    ensure_dir "$(dirname "$IMPORTER_PATH")" 0755
    put_file "$IMPORTER_SOURCE" "$IMPORTER_PATH" 0755
    put_file "$WORK/import.service" "$SYSTEMD_DIR/$IMPORT_UNIT_NAME" 0644
    put_symlink "$WANTS_DIR/$IMPORT_UNIT_NAME" "$SYSTEMD_DIR/$IMPORT_UNIT_NAME"
  fi
  commit_target
}

warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }

# This script personalises; installing the agent itself is scripts/install.sh's job (run it on the
# base image's staging root). Warn when the unit would have nothing to start or no user to run as.
AGENT_CHECKED=no
warn_if_agent_missing() {
  local program user
  # Batch targets are copies of one image: once is enough.
  [[ $AGENT_CHECKED == no ]] || return 0
  AGENT_CHECKED=yes
  program=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$UNIT_FILE" | head -n 1)
  if [[ $program == /* && $(target_type "$program") == missing ]]; then
    warn "the target has no $program (the unit's ExecStart): install the agent into the base image (scripts/install.sh --root) or the service will fail"
  fi
  user=$(sed -n 's/^User=\([^ ]*\).*/\1/p' "$UNIT_FILE" | head -n 1)
  if [[ -n $user && $user != root ]]; then
    if target_read_file /etc/passwd "$WORK/passwd" && grep -q "^$user:" "$WORK/passwd"; then return; fi
    if [[ $(target_type "/etc/sysusers.d/$user.conf") != missing || $(target_type "/usr/lib/sysusers.d/$user.conf") != missing ]]; then return; fi
    warn "the target has no user $user (the unit's User=) and no sysusers.d entry for it: install the agent into the base image (scripts/install.sh --root)"
  fi
}

describe_device() { # EXTERNAL_ID
  local mode_text="mode $MODE"
  if [[ -n $1 ]]; then echo "external ID $1, $mode_text"; else echo "external ID from the MAC, $mode_text"; fi
}

# Output files are built next to their destination and renamed only once complete and verified.
PARTIAL=
start_output_copy() { # SOURCE DESTINATION: sets PARTIAL (not a subshell: PARTIAL_OUTPUTS must see it)
  [[ $2 != *'?'* && $2 != *@@* ]] || die "$EXIT_INPUT" "output path $2 must not contain '?' or '@@'"
  PARTIAL=$(dirname -- "$2")/.$(basename -- "$2").partial.$$
  PARTIAL_OUTPUTS+=("$PARTIAL")
  cp --sparse=always -- "$1" "$PARTIAL" || die "$EXIT_WRITE" "cannot copy $1 to $PARTIAL"
  chmod 0600 -- "$PARTIAL"
}

finish_output() { # PARTIAL DESTINATION
  mv -f -- "$1" "$2" || die "$EXIT_WRITE" "cannot rename $1 to $2"
  forget_partial "$1"
}

check_output_free() {
  [[ ! -e $1 || $FORCE == yes ]] || die "$EXIT_INPUT" "$1 already exists (use --force to overwrite)"
  [[ ! -d $1 ]] || die "$EXIT_INPUT" "$1 is a directory"
}

same_file() { [[ -e $1 && -e $2 && $(stat -L -c %d:%i -- "$1") == $(stat -L -c %d:%i -- "$2") ]]; }

# ---------------------------------------------------------------------------------------------
# Batch CSV.

ROW_LINES=() ROW_IDS=() ROW_NAMES=() ROW_KEYS=()

load_batch_csv() {
  local csv=$1 line line_number=0 id key problem key_copy digest name row=0
  local problems=()
  declare -A line_of_id=() line_of_key=() line_of_name=()
  check_private_file "$csv" "CSV"
  [[ $(file_size "$csv") -le $MAX_CSV_BYTES ]] || die "$EXIT_INPUT" "CSV $csv is larger than $MAX_CSV_BYTES bytes"
  [[ $(count_bytes_matching "$csv" '\000') -eq 0 ]] || die "$EXIT_INPUT" "CSV $csv contains NUL bytes; is it a text file?"

  while IFS= read -r line || [[ -n $line ]]; do
    line_number=$((line_number + 1))
    line=${line%$'\r'}
    if [[ $line_number -eq 1 ]]; then
      line=${line#$'\xef\xbb\xbf'}
      [[ $line == external_id,external_key ]] ||
        die "$EXIT_INPUT" "CSV $csv must start with the header line 'external_id,external_key'"
      continue
    fi
    [[ -n $line ]] || continue
    row=$((row + 1))
    if [[ $line == *'"'* ]]; then
      problems+=("line $line_number: quotes are not supported (keys must not contain commas or quotes)")
      continue
    fi
    local commas=${line//[^,]/}
    if [[ ${#commas} -ne 1 ]]; then
      problems+=("line $line_number: expected 2 fields (external_id,external_key), found $((${#commas} + 1))")
      continue
    fi
    id=${line%%,*}
    key=${line#*,}

    name=
    if [[ $id == mac ]]; then
      id=
      name=row-$row
    else
      problem=$(validate_external_id "$id")
      if [[ -n $problem ]]; then
        problems+=("line $line_number: external_id $problem")
      elif [[ -n ${line_of_id[$id]:-} ]]; then
        problems+=("line $line_number: external_id is the same as on line ${line_of_id[$id]}")
      else
        line_of_id[$id]=$line_number
        name=$id
      fi
    fi
    # An external ID such as "row-3" would take the file name of the third 'mac' row.
    if [[ -n $name && -n ${line_of_name[$name]:-} ]]; then
      problems+=("line $line_number: output name $name is also used by line ${line_of_name[$name]}")
    elif [[ -n $name ]]; then
      line_of_name[$name]=$line_number
    fi

    key_copy=$(mktemp "$WORK/row-key.XXXXXX")
    printf '%s' "$key" >"$key_copy"
    problem=$(external_key_problem "$key_copy" "$MODE")
    if [[ -n $problem ]]; then
      problems+=("line $line_number: external_key $problem")
    elif [[ -n $key ]]; then
      digest=$(sha256sum <"$key_copy" | cut -d ' ' -f 1)
      if [[ -n ${line_of_key[$digest]:-} ]]; then
        problems+=("line $line_number: external_key is the same as on line ${line_of_key[$digest]}")
      else
        line_of_key[$digest]=$line_number
      fi
    fi
    ROW_LINES+=("$line_number") ROW_IDS+=("$id") ROW_NAMES+=("$name") ROW_KEYS+=("$key_copy")
  done <"$csv"
  key=

  [[ $line_number -gt 0 ]] || die "$EXIT_INPUT" "CSV $csv is empty"
  [[ $row -gt 0 || ${#problems[@]} -gt 0 ]] || die "$EXIT_INPUT" "CSV $csv has no device rows"
  if [[ ${#problems[@]} -gt 0 ]]; then
    for problem in "${problems[@]}"; do printf '%s: error: CSV %s: %s\n' "$PROG" "$csv" "$problem" >&2; done
    die "$EXIT_INPUT" "CSV $csv has ${#problems[@]} problem(s); nothing was written"
  fi
}

make_bundle() { # EXTERNAL_ID KEY_COPY BASE_CONFIG DESTINATION
  local dir members=(external_key agent.json)
  dir=$(mktemp -d "$WORK/bundle.XXXXXX")
  cp -- "$2" "$dir/external_key"
  build_config "$3" "$1" "$dir/agent.json"
  if [[ -n $ENCRYPT_KEY_COPY ]]; then
    cp -- "$ENCRYPT_KEY_COPY" "$dir/encrypt_key"
    members+=(encrypt_key)
  fi
  chmod 0600 -- "$dir"/*
  local partial
  partial=$(dirname -- "$4")/.$(basename -- "$4").partial.$$
  PARTIAL_OUTPUTS+=("$partial")
  tar --create --format=ustar --file "$partial" --directory "$dir" \
    --owner=0 --group=0 --numeric-owner --mode=0600 -- "${members[@]}" ||
    die "$EXIT_WRITE" "cannot write $4"
  chmod 0600 -- "$partial"
  finish_output "$partial" "$4"
  rm -rf -- "$dir"
}

# ---------------------------------------------------------------------------------------------
# Arguments.

IMAGE='' OUTPUT='' IN_PLACE=no ROOTFS='' BOOTSTRAP_URL='' EXTERNAL_KEY_FILE='' ENCRYPT_KEY_FILE=''
EXTERNAL_ID='' MODE='' BATCH_CSV='' OUT_DIR='' BUNDLES=no INSTALL_BUNDLE='' ROOT_PARTITION='' FORCE=no
UNIT_FILE=$SCRIPT_DIR/../systemd/$UNIT_NAME
IMPORTER_SOURCE=$SCRIPT_DIR/mg-device-agent-import-bundle.sh

[[ $# -gt 0 ]] || {
  usage >&2
  exit "$EXIT_INPUT"
}
while [[ $# -gt 0 ]]; do
  option=$1
  case $option in
    -h | --help) usage; exit 0 ;;
    --in-place) IN_PLACE=yes; shift; continue ;;
    --bundles) BUNDLES=yes; shift; continue ;;
    --force) FORCE=yes; shift; continue ;;
    --image | --output | --rootfs | --bootstrap-url | --external-key-file | --encrypt-key-file | \
      --external-id | --mode | --batch | --out-dir | --install-bundle | --unit-file | --root-partition) ;;
    *) die "$EXIT_INPUT" "unknown argument: $option (see --help)" ;;
  esac
  [[ $# -ge 2 && -n $2 ]] || die "$EXIT_INPUT" "$option needs a value"
  value=$2
  shift 2
  case $option in
    --image) IMAGE=$value ;;
    --output) OUTPUT=$value ;;
    --rootfs) ROOTFS=$value ;;
    --bootstrap-url) BOOTSTRAP_URL=${value%/} ;;
    --external-key-file) EXTERNAL_KEY_FILE=$value ;;
    --encrypt-key-file) ENCRYPT_KEY_FILE=$value ;;
    --external-id) EXTERNAL_ID=$value ;;
    --mode) MODE=$value ;;
    --batch) BATCH_CSV=$value ;;
    --out-dir) OUT_DIR=${value%/} ;;
    --install-bundle) INSTALL_BUNDLE=$value ;;
    --unit-file) UNIT_FILE=$value ;;
    --root-partition) ROOT_PARTITION=$value ;;
  esac
done

for tool in sfdisk debugfs e2fsck jq tar; do
  command -v "$tool" >/dev/null || die "$EXIT_INPUT" "$tool is not installed (Debian: fdisk, e2fsprogs, jq, tar)"
done
[[ -z $ROOT_PARTITION || $ROOT_PARTITION =~ ^[1-9][0-9]*$ ]] || die "$EXIT_INPUT" "--root-partition must be a partition number"
[[ -z $IMAGE || -z $ROOTFS ]] || die "$EXIT_INPUT" "give either --image or --rootfs, not both"

# --- put a bundle onto the boot partition --------------------------------------------------------
if [[ -n $INSTALL_BUNDLE ]]; then
  for unused in "$ROOTFS" "$BATCH_CSV" "$BOOTSTRAP_URL" "$EXTERNAL_KEY_FILE" "$ENCRYPT_KEY_FILE" "$EXTERNAL_ID" "$MODE" "$OUT_DIR"; do
    [[ -z $unused ]] || die "$EXIT_INPUT" "--install-bundle takes only --image and --output or --in-place"
  done
  command -v mcopy >/dev/null || die "$EXIT_INPUT" "mcopy is not installed (Debian: mtools)"
  [[ -n $IMAGE ]] || die "$EXIT_INPUT" "--install-bundle needs --image"
  [[ -n $OUTPUT || $IN_PLACE == yes ]] || die "$EXIT_INPUT" "give --output FILE, or --in-place to modify $IMAGE itself"
  [[ -z $OUTPUT || $IN_PLACE == no ]] || die "$EXIT_INPUT" "give either --output or --in-place, not both"
  check_private_file "$INSTALL_BUNDLE" "bundle"
  listing=$(tar --list --verbose --numeric-owner --file "$INSTALL_BUNDLE" 2>/dev/null) ||
    die "$EXIT_INPUT" "bundle $INSTALL_BUNDLE is not a tar archive"
  names=$(awk '{ print $1 " " $NF }' <<<"$listing" | sort | tr '\n' ' ')
  [[ $names == "-rw------- agent.json -rw------- encrypt_key -rw------- external_key " ||
    $names == "-rw------- agent.json -rw------- external_key " ]] ||
    die "$EXIT_INPUT" "bundle $INSTALL_BUNDLE is not an mg-device-agent credentials bundle (expected agent.json, external_key and optionally encrypt_key, 0600)"
  inspect_image "$IMAGE"
  [[ -n $IMAGE_BOOT_OFFSET ]] || die "$EXIT_INPUT" "$IMAGE has no FAT boot partition to put the bundle on"
  use_image_target "$IMAGE"
  # Without the importer the key would sit on the world-readable FAT forever.
  [[ $(target_type "$IMPORTER_PATH") == regular ]] ||
    die "$EXIT_INPUT" "$IMAGE has no first-boot importer ($IMPORTER_PATH); make the shared image with --batch ... --bundles"
  destination=$IMAGE
  if [[ -n $OUTPUT ]]; then
    ! same_file "$IMAGE" "$OUTPUT" || die "$EXIT_INPUT" "--output is the same file as --image; use --in-place"
    check_output_free "$OUTPUT"
    start_output_copy "$IMAGE" "$OUTPUT"
    destination=$PARTIAL
  fi
  mcopy -o -i "$destination@@$IMAGE_BOOT_OFFSET" "$INSTALL_BUNDLE" "::$BUNDLE_NAME_ON_BOOT" 2>"$WORK/mtools.err" ||
    die "$EXIT_WRITE" "cannot write to the boot partition: $(head -n 2 "$WORK/mtools.err")"
  if ! mtype -i "$destination@@$IMAGE_BOOT_OFFSET" "::$BUNDLE_NAME_ON_BOOT" >"$WORK/readback" 2>/dev/null ||
    ! cmp -s -- "$WORK/readback" "$INSTALL_BUNDLE"; then
    die "$EXIT_WRITE" "the bundle reads back differently from the boot partition"
  fi
  rm -f -- "$WORK/readback"
  [[ -z $OUTPUT ]] || finish_output "$destination" "$OUTPUT"
  say "put $(basename -- "$INSTALL_BUNDLE") on the boot partition of ${OUTPUT:-$IMAGE} as $BUNDLE_NAME_ON_BOOT"
  exit 0
fi

# --- common checks for provisioning ----------------------------------------------------------
[[ -n $BOOTSTRAP_URL ]] || die "$EXIT_INPUT" "--bootstrap-url is required"
validate_bootstrap_url "$BOOTSTRAP_URL"
[[ -f $UNIT_FILE ]] || die "$EXIT_INPUT" "unit file $UNIT_FILE not found (pass --unit-file)"
[[ -n $IMAGE || -n $ROOTFS ]] || die "$EXIT_INPUT" "give --image FILE or --rootfs DIR"
if [[ -z $MODE ]]; then
  if [[ -n $ENCRYPT_KEY_FILE ]]; then MODE=secure; else MODE=plain; fi
fi
[[ $MODE == secure || $MODE == plain ]] || die "$EXIT_INPUT" "--mode must be secure or plain"
[[ ! ($MODE == plain && -n $ENCRYPT_KEY_FILE) ]] ||
  die "$EXIT_INPUT" "--encrypt-key-file was given with --mode plain, where it would be unused"
ENCRYPT_KEY_COPY=
if [[ -n $ENCRYPT_KEY_FILE ]]; then
  ENCRYPT_KEY_COPY=$(import_secret_file "$ENCRYPT_KEY_FILE" "encryption key file")
  problem=$(encrypt_key_problem "$ENCRYPT_KEY_COPY")
  [[ -z $problem ]] || die "$EXIT_INPUT" "encryption key in $ENCRYPT_KEY_FILE $problem"
fi
if [[ -n $ROOTFS ]]; then
  [[ -d $ROOTFS ]] || die "$EXIT_INPUT" "--rootfs $ROOTFS is not a directory"
  [[ -d $ROOTFS/etc && ! -L $ROOTFS/etc ]] || die "$EXIT_INPUT" "--rootfs $ROOTFS has no etc/ directory; is it a root file system?"
  [[ $EUID -eq 0 ]] || die "$EXIT_INPUT" "--rootfs needs root (the files must be owned by root); run it with sudo or under fakeroot"
fi

# --- batch ---------------------------------------------------------------------------------------
if [[ -n $BATCH_CSV ]]; then
  [[ -z $EXTERNAL_KEY_FILE && -z $EXTERNAL_ID ]] ||
    die "$EXIT_INPUT" "--batch takes the external IDs and keys from the CSV, not --external-key-file/--external-id"
  [[ -z $OUTPUT && $IN_PLACE == no ]] || die "$EXIT_INPUT" "--batch writes into --out-dir; --output and --in-place do not apply"
  [[ -n $OUT_DIR ]] || die "$EXIT_INPUT" "--batch needs --out-dir DIR"
  [[ -n $IMAGE || $BUNDLES == yes ]] || die "$EXIT_INPUT" "--batch without --bundles needs --image (one image per device)"
  if [[ -e $OUT_DIR && ! -d $OUT_DIR ]]; then die "$EXIT_INPUT" "--out-dir $OUT_DIR is not a directory"; fi
  command -v sha256sum >/dev/null || die "$EXIT_INPUT" "sha256sum is not installed (Debian: coreutils)"

  load_batch_csv "$BATCH_CSV"
  [[ -z $IMAGE ]] || inspect_image "$IMAGE"
  if [[ $BUNDLES == yes ]]; then
    [[ -f $IMPORTER_SOURCE ]] || die "$EXIT_INPUT" "importer $IMPORTER_SOURCE not found next to this script"
    [[ -z $IMAGE ]] || check_output_free "$OUT_DIR/shared.img"
    for name in "${ROW_NAMES[@]}"; do check_output_free "$OUT_DIR/bundles/$name.tar"; done
  else
    for name in "${ROW_NAMES[@]}"; do check_output_free "$OUT_DIR/$name.img"; done
  fi
  if [[ -n $IMAGE ]]; then
    use_image_target "$IMAGE"
  else
    use_rootfs_target "$ROOTFS"
  fi
  check_encrypt_key_present

  # Everything is validated; from here on files are written.
  # Only the last directory is created 0700 by -m; that one is what holds the keys.
  # shellcheck disable=SC2174
  [[ -d $OUT_DIR ]] || mkdir -p -m 0700 -- "$OUT_DIR"
  manifest=$WORK/manifest.csv
  echo "row,line,external_id,file" >"$manifest"

  if [[ $BUNDLES == yes ]]; then
    if [[ -n $IMAGE ]]; then
      start_output_copy "$IMAGE" "$OUT_DIR/shared.img"
      shared=$PARTIAL
      use_image_target "$shared"
    fi
    read_base_config "$WORK/shared-base.json"
    # The shared image carries no secret at all; the bundles carry both keys.
    provision_target "" "" "" yes
    if [[ -n $IMAGE ]]; then
      finish_output "$shared" "$OUT_DIR/shared.img"
      say "shared image: $OUT_DIR/shared.img (no device credentials; first-boot importer enabled)"
    else
      say "shared root file system: $ROOTFS (no device credentials; first-boot importer enabled)"
    fi
    [[ -d $OUT_DIR/bundles ]] || mkdir -m 0700 -- "$OUT_DIR/bundles"
    for i in "${!ROW_NAMES[@]}"; do
      make_bundle "${ROW_IDS[$i]}" "${ROW_KEYS[$i]}" "$WORK/shared-base.json" "$OUT_DIR/bundles/${ROW_NAMES[$i]}.tar"
      echo "$((i + 1)),${ROW_LINES[$i]},${ROW_IDS[$i]:-mac},bundles/${ROW_NAMES[$i]}.tar" >>"$manifest"
      say "row $((i + 1)) (line ${ROW_LINES[$i]}): $OUT_DIR/bundles/${ROW_NAMES[$i]}.tar ($(describe_device "${ROW_IDS[$i]}"))"
    done
  else
    for i in "${!ROW_NAMES[@]}"; do
      destination=$OUT_DIR/${ROW_NAMES[$i]}.img
      start_output_copy "$IMAGE" "$destination"
      partial=$PARTIAL
      use_image_target "$partial"
      provision_target "${ROW_IDS[$i]}" "${ROW_KEYS[$i]}" "$ENCRYPT_KEY_COPY" no
      finish_output "$partial" "$destination"
      echo "$((i + 1)),${ROW_LINES[$i]},${ROW_IDS[$i]:-mac},${ROW_NAMES[$i]}.img" >>"$manifest"
      say "row $((i + 1)) (line ${ROW_LINES[$i]}): $destination ($(describe_device "${ROW_IDS[$i]}"))"
    done
  fi
  cp -- "$manifest" "$OUT_DIR/manifest.csv"
  chmod 0644 -- "$OUT_DIR/manifest.csv"
  say "${#ROW_NAMES[@]} device(s) done; $OUT_DIR/manifest.csv maps rows to files"
  exit 0
fi

# --- one device ----------------------------------------------------------------------------------
[[ $BUNDLES == no && -z $OUT_DIR ]] || die "$EXIT_INPUT" "--bundles and --out-dir need --batch"
[[ -n $EXTERNAL_KEY_FILE ]] || die "$EXIT_INPUT" "--external-key-file is required"
[[ $EXTERNAL_ID != mac ]] || EXTERNAL_ID=
if [[ -n $EXTERNAL_ID ]]; then
  problem=$(validate_external_id "$EXTERNAL_ID")
  [[ -z $problem ]] || die "$EXIT_INPUT" "--external-id $problem"
fi
external_key_copy=$(import_secret_file "$EXTERNAL_KEY_FILE" "external key file")
problem=$(external_key_problem "$external_key_copy" "$MODE")
[[ -z $problem ]] || die "$EXIT_INPUT" "external key in $EXTERNAL_KEY_FILE $problem"

if [[ -n $ROOTFS ]]; then
  [[ -z $OUTPUT && $IN_PLACE == no ]] || die "$EXIT_INPUT" "--output and --in-place apply to --image only"
  use_rootfs_target "$ROOTFS"
  check_encrypt_key_present
  provision_target "$EXTERNAL_ID" "$external_key_copy" "$ENCRYPT_KEY_COPY" no
  say "provisioned $ROOTFS ($(describe_device "$EXTERNAL_ID"))"
  exit 0
fi

[[ -n $OUTPUT || $IN_PLACE == yes ]] || die "$EXIT_INPUT" "give --output FILE, or --in-place to modify $IMAGE itself"
[[ -z $OUTPUT || $IN_PLACE == no ]] || die "$EXIT_INPUT" "give either --output or --in-place, not both"
inspect_image "$IMAGE"
if [[ -n $OUTPUT ]]; then
  ! same_file "$IMAGE" "$OUTPUT" || die "$EXIT_INPUT" "--output is the same file as --image; use --in-place"
  check_output_free "$OUTPUT"
  use_image_target "$IMAGE"
  check_encrypt_key_present
  start_output_copy "$IMAGE" "$OUTPUT"
  partial=$PARTIAL
  use_image_target "$partial"
  provision_target "$EXTERNAL_ID" "$external_key_copy" "$ENCRYPT_KEY_COPY" no
  finish_output "$partial" "$OUTPUT"
  say "provisioned $OUTPUT from $IMAGE ($(describe_device "$EXTERNAL_ID"))"
else
  use_image_target "$IMAGE"
  check_encrypt_key_present
  provision_target "$EXTERNAL_ID" "$external_key_copy" "$ENCRYPT_KEY_COPY" no
  say "provisioned $IMAGE in place ($(describe_device "$EXTERNAL_ID"))"
fi
