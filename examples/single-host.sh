#!/usr/bin/env bash
# A one-host Sheep from nothing: start a daemon, make an image, write and read it with QEMU's
# tools, boot a tiny guest from it when qemu-system-x86_64 is installed, then clean up.
#
#   bash examples/single-host.sh          # everything under a temporary folder, removed at the end
#   bash examples/single-host.sh --keep   # leave the daemon running and say how to stop it
#
# Environment: SHEEP_DEMO_DIR (default: a new folder under /tmp).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
sheep="$here/bin/sheep"
keep=false
[ "${1:-}" = "--keep" ] && keep=true
dir=${SHEEP_DEMO_DIR:-$(mktemp -d /tmp/sheep-demo.XXXXXX)}
store="$dir/store"
mnt="$dir/mnt"
export SHEEP_RUN_DIR="$dir/run"

cleanup() {
  "$sheep" stop --mount "$mnt" --force >/dev/null 2>&1 || true
  if grep -q " $mnt fuse" /proc/mounts; then fusermount -u "$mnt" 2>/dev/null || fusermount -uz "$mnt" || true; fi
  rm -rf "$dir"
}
if ! $keep; then trap cleanup EXIT; fi

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$sheep" start --store "$store" --mount "$mnt" --detach
step qemu-img create -f raw "$mnt/vm1.img" 20G
step qemu-io -f raw -c 'write -P 0xab 0 64M' -c 'read -P 0xab 0 64M' "$mnt/vm1.img"
step ls -l "$mnt"
step du -h "$mnt/vm1.img"
step df -h "$mnt"
step "$sheep" image list --mount "$mnt"

if command -v qemu-system-x86_64 >/dev/null; then
  # A 512-byte boot sector: prints a line on the serial port, then exits QEMU through isa-debug-exit.
  msg='Hello from a guest booted off /sheep/boot.img'
  {
    printf '\xfc\x31\xc0\x8e\xd8\xbe\x19\x7c\xba\xf8\x03\xac\x84\xc0\x74\x03\xee\xeb\xf8\xb0\x00\xe6\xf4\xfa\xf4'
    printf '%s\r\n\0' "$msg"
  } > "$dir/boot.bin"
  truncate -s 510 "$dir/boot.bin"
  printf '\x55\xaa' >> "$dir/boot.bin"
  step qemu-img convert -f raw -O raw "$dir/boot.bin" "$mnt/boot.img"
  step qemu-img resize -f raw "$mnt/boot.img" 1G
  printf '\n\033[1m$ qemu-system-x86_64 -drive file=%s,format=raw,cache=none ...\033[0m\n' "$mnt/boot.img"
  timeout 60 qemu-system-x86_64 -nodefaults -display none -serial stdio -m 64 \
    -drive "file=$mnt/boot.img,format=raw,cache=none" -device isa-debug-exit,iobase=0xf4,iosize=0x04 || true
else
  echo
  echo "(qemu-system-x86_64 is not installed: skipping the boot; Debian: apt-get install qemu-system-x86)"
fi

step "$sheep" status --mount "$mnt"
if $keep; then
  echo
  echo "Sheep is running: images in $mnt, store in $store."
  echo "Try: qemu-img create -f raw $mnt/vm2.img 10G ; SHEEP_RUN_DIR=$SHEEP_RUN_DIR $sheep image list --mount $mnt"
  echo "Stop it with: SHEEP_RUN_DIR=$SHEEP_RUN_DIR $sheep stop --mount $mnt"
fi
