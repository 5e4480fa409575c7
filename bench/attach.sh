#!/usr/bin/env bash
# Live attach cost (`gammaray run` with an `attach` source): a real guest
# writing continuously on a 2 GiB ext4 disk holding a copy of /usr/share;
# gammaray attaches over QMP after 10 s and runs for 20 s (the guest's
# workload lasts 40 s). Reported:
# - how long the guest was paused to start the copy and the tap;
# - QEMU's point-in-time copy of the disk beside `dd` reading the same
#   image, both from a cold page cache (the raw read speed, same run);
# - the crawl of the copy beside `e2fsck -fn` of it;
# - the writes queued meanwhile and the catch-up.
# Usage: bench/attach.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
t=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p gammaray -p gammaray-testbed
g=$(realpath "$t/release/gammaray")
tb=$(realpath "$t/release/gammaray-testbed")
out=bench/out/attach
mkdir -p "$out"
"$tb" build >/dev/null 2>&1
img=$out/disk.img
if [ ! -s "$img" ]; then
  rm -f "$img"
  truncate -s 2G "$img"
  mkfs.ext4 -q -F -d /usr/share "$img"
fi
size_mb=$(( $(stat -c %s "$img") / 1000000 ))
alloc_mb=$(( $(du -B1 "$img" | cut -f1) / 1000000 ))
for r in $(seq "$runs"); do
  dir=$out/run$r
  rm -rf "$dir" && mkdir -p "$dir"
  qmp=$dir/qmp.sock
  "$tb" run --script bench/attach-workload.sh --fs ext4 --dir "$dir/guest" \
    --disk "$img" --qmp "$qmp" --timeout 300 >/dev/null 2>"$dir/guest.err" &
  guest=$!
  sleep 10
  cat >"$dir/gammaray.toml" <<TOML
[metrics]
enabled = false
[[vm]]
name = "bench"
disk = "$dir/copy.img"
source = { type = "attach", qmp = "$qmp", drive = "disk0" }
TOML
  # Cold cache for the copy, as for dd below.
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  "$g" run -c "$dir/gammaray.toml" --for 20 --events /dev/null 2>"$dir/run.stderr"
  wait "$guest" || true
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  TIMEFORMAT=%R
  dd_s=$( { time dd if="$img" of=/dev/null bs=1M 2>/dev/null; } 2>&1 )
  fsck_s=$( { time e2fsck -fn "$dir/copy.img" >/dev/null 2>&1; } 2>&1 )
  paused=$(grep -o 'guest paused [0-9.]* ms' "$dir/run.stderr" | grep -o '[0-9.]*')
  copied=$(grep -o 'disk copied in [0-9.]* s' "$dir/run.stderr" | grep -o '[0-9.]*')
  crawled=$(grep -o 'crawled in [0-9.]* s' "$dir/run.stderr" | grep -o '[0-9.]*')
  backlog=$(grep -o 'catching up on [0-9]* writes' "$dir/run.stderr" | grep -o '[0-9]*')
  caught=$(grep -o 'followed in [0-9.]* s' "$dir/run.stderr" | grep -o '[0-9.]*')
  printf 'run %d: paused %s ms | copy of %s MB (%s MB allocated) in %s s (dd of the image, cold cache: %s s) | crawl %s s (e2fsck -fn %s s) | %s writes queued, caught up in %s s\n' \
    "$r" "$paused" "$size_mb" "$alloc_mb" "$copied" "$dd_s" "$crawled" "$fsck_s" "$backlog" "$caught"
  grep -h 'requests (' "$dir/run.stderr" | sed 's/^gammaray: /       /'
  rm -f "$dir/copy.img"
done
