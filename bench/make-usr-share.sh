#!/usr/bin/env bash
# Builds bench/out/usr-share.img: an ext4 image holding a copy of this
# machine's /usr/share (a real tree of mixed files), for bench/engine-memory.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
img=bench/out/usr-share.img
[ -f "$img" ] && exit 0
mib=$(( $(du -sm /usr/share | cut -f1) * 3 / 2 + 256 ))
mkfs.ext4 -F -q -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -d /usr/share "$img" "${mib}M"
