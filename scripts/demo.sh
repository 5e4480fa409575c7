#!/usr/bin/env bash
# One command on a fresh machine: installs what gammaray needs, builds it
# and the test guest, then runs the live demo: a real Linux guest (Debian
# kernel, busybox, under QEMU) boots with its disk served by `gammaray run`
# over NBD, writes logs and changes files for about a minute, and the
# terminal shows the file events as they happen, inferred from the disk
# writes alone. Stops by itself when the guest powers off (at most 5 min).
#
# Full JSON events are kept in work/demo/events.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${GAMMARAY_SKIP_SETUP:-}" ] || bash scripts/setup-host.sh
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} cargo build --release -p gammaray -p gammaray-testbed
t=${CARGO_TARGET_DIR:-target}
g=$t/release/gammaray
tb=$t/release/gammaray-testbed
demo=work/demo
mkdir -p "$demo"
rm -rf "$demo/guest" "$demo/nbd.sock" "$demo/disk.img"
echo "== building the test guest (cached after the first run)"
"$tb" build
"$tb" disk --fs ext4 --out "$demo/disk.img"
echo "== gammaray run: serving $demo/disk.img; events follow (host:vm EVENT /path ...)"
"$g" run --serve "$demo/disk.img" --socket "$demo/nbd.sock" --vm demo --for 300 \
  --brief &
engine=$!
for _ in $(seq 200); do [ -S "$demo/nbd.sock" ] && break; sleep 0.1; done
[ -S "$demo/nbd.sock" ] || { echo "gammaray run did not start" >&2; exit 1; }
"$tb" run --script scripts/demo-workload.sh --fs ext4 --dir "$demo/guest" \
  --nbd "$demo/nbd.sock" --timeout 300 > "$demo/guest.out" 2> "$demo/guest.err" || {
  echo "the guest failed: see $demo/guest.err" >&2; kill "$engine" 2>/dev/null; exit 1; }
wait "$engine"
echo "== the guest powered off; its own listing is in $demo/guest.out"
