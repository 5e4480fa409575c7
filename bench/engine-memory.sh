#!/usr/bin/env bash
# Engine memory, eager: resident memory of `gammaray run --serve IMG` once
# it serves (crawl done, model and inference ready, no guest connected),
# against the file system's used bytes and inodes.
# Usage: bench/engine-memory.sh IMG...   (default: the images bench/crawl.sh
# leaves in bench/out/). The image is copied (sparse) first: `run` opens its
# disk read-write.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p gammaray
g=$t/release/gammaray
imgs=("$@")
[ ${#imgs[@]} -gt 0 ] || imgs=(bench/out/ext4-1000000.img bench/out/usr-share.img)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-34s %10s %14s %10s %8s %8s\n' image files used_bytes rss_MiB B/file share
for img in "${imgs[@]}"; do
  cp --sparse=always "$img" "$tmp/disk.img"
  "$g" run --serve "$tmp/disk.img" --socket "$tmp/s.sock" --vm mem --for 600 \
    --events /dev/null 2>"$tmp/err" &
  pid=$!
  for _ in $(seq 600); do [ -S "$tmp/s.sock" ] && break; sleep 0.5; done
  sleep 1
  rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  read -r used files < <(dumpe2fs -h "$img" 2>/dev/null | awk -F: '
    /^Block count/{b=$2} /^Free blocks/{f=$2} /^Block size/{s=$2}
    /^Inode count/{i=$2} /^Free inodes/{fi=$2}
    END{printf "%d %d\n", (b-f)*s, i-fi}')
  printf '%-34s %10d %14d %10.0f %8.0f %7.1f%%\n' "$img" "$files" "$used" \
    "$(echo "$rss / 1024" | bc -l)" "$(echo "$rss * 1024 / $files" | bc -l)" \
    "$(echo "$rss * 1024 * 100 / $used" | bc -l)"
  rm -f "$tmp/disk.img" "$tmp/s.sock"
done
