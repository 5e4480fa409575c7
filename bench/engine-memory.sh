#!/usr/bin/env bash
# Engine memory, eager and lazy: resident memory of `gammaray run --serve IMG`
# once it serves (crawl done, model and inference ready, no guest
# connected), against the file system's used bytes and inodes; once with
# the whole model resident (eager, the default) and once under the
# lazy-load policy (GAMMARAY__POLICY__LAZY_LOAD__*, budget $LAZY_BUDGET,
# default 64MiB: records and names go to a scratch store in TMPDIR).
# Usage: bench/engine-memory.sh IMG...   (default: the images bench/crawl.sh
# and bench/make-usr-share.sh leave in bench/out/). The image is copied
# (sparse) first: `run` opens its disk read-write.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p gammaray
g=$t/release/gammaray
imgs=("$@")
[ ${#imgs[@]} -gt 0 ] || imgs=(bench/out/ext4-1000000.img bench/out/usr-share.img)
budget=${LAZY_BUDGET:-64MiB}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-30s %-6s %9s %12s %9s %9s %7s %7s\n' image mode files used_bytes peak_MiB rss_MiB B/file share
for img in "${imgs[@]}"; do
  read -r used files < <(dumpe2fs -h "$img" 2>/dev/null | awk -F: '
    /^Block count/{b=$2} /^Free blocks/{f=$2} /^Block size/{s=$2}
    /^Inode count/{i=$2} /^Free inodes/{fi=$2}
    END{printf "%.0f %.0f\n", (b-f)*s, i-fi}')
  for mode in eager lazy; do
    cp --sparse=always "$img" "$tmp/disk.img"
    env=()
    [ "$mode" = lazy ] && env=(GAMMARAY__POLICY__LAZY_LOAD__ENABLED=true
      GAMMARAY__POLICY__LAZY_LOAD__BUDGET_BYTES="$budget")
    env "${env[@]}" TMPDIR="$tmp" "$g" run --serve "$tmp/disk.img" --socket "$tmp/s.sock" \
      --vm mem --for 600 --events /dev/null 2>"$tmp/err" &
    pid=$!
    for _ in $(seq 1200); do [ -S "$tmp/s.sock" ] && break; sleep 0.5; done
    sleep 2
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
    peak=$(awk '/^VmHWM/{print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%-30s %-6s %9d %12.0f %9.0f %9.0f %7.0f %6.1f%%\n' "$(basename "$img")" "$mode" \
      "$files" "$used" "$(echo "$peak / 1024" | bc -l)" "$(echo "$rss / 1024" | bc -l)" \
      "$(echo "$rss * 1024 / $files" | bc -l)" "$(echo "$rss * 1024 * 100 / $used" | bc -l)"
    rm -f "$tmp/disk.img" "$tmp/s.sock"
  done
done
