#!/usr/bin/env bash
# Live attach while the guest writes large buffered files (3 x 120 MiB from
# /dev/urandom, a sync after each): QEMU merges the guest's adjacent
# requests (virtio-blk request-merging, on by default, as on an operator's
# VM). Prints how many kernel I/O errors the guest logged (a guest kernel
# I/O error also fails the testbed run) and gammaray's summary.
# Usage: bench/attach-big-writes.sh [mirror|blklogwrites]   (default blklogwrites)
set -uo pipefail
cd "$(dirname "$0")/.."
via=${1:-blklogwrites}
t=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p gammaray -p gammaray-testbed
g=$(realpath "$t/release/gammaray"); tb=$(realpath "$t/release/gammaray-testbed")
out=bench/out/attach-big-$via
rm -rf "$out"; mkdir -p "$out"
img=$out/disk.img
truncate -s 1G "$img"; mkfs.ext4 -q -F "$img"
cat > "$out/workload.sh" <<'W'
sleep 12
for k in 1 2 3; do
  dd if=/dev/urandom of=big$k bs=1M count=120 2>/dev/null
  sync
done
W
qmp=$out/qmp.sock
"$tb" run --script "$out/workload.sh" --fs ext4 --dir "$out/guest" --disk "$img" \
  --qmp "$qmp" --timeout 300 > "$out/guest.out" 2> "$out/guest.err" &
guest=$!
sleep 6
cat > "$out/gammaray.toml" <<TOML
[metrics]
enabled = false
[[vm]]
name = "big"
disk = "$out/copy.img"
source = { type = "attach", qmp = "$qmp", drive = "disk0", via = "$via" }
TOML
"$g" run -c "$out/gammaray.toml" --for 90 --events /dev/null 2> "$out/run.err"
wait "$guest"; rc=$?
echo "guest run rc=$rc; kernel I/O errors in the guest: $(cat "$out"/guest/*.log 2>/dev/null | grep -c 'I/O error, dev')"
grep -h 'requests (' "$out/run.err"
rm -f "$img" "$out/copy.img"
