#!/usr/bin/env bash
# Live latency benchmark: a real guest (TCG) whose disk is served by
# `gammaray run`; the engine reports, per request that produced events, the
# time from the request's arrival at its NBD server to its events leaving
# for the sinks (p50, p99, max). Two guest workloads:
#   steady - scripts/demo-workload.sh: one log line, file change and sync
#            every 2 s;
#   burst  - bench/replay-meta-workload.sh: thousands of small-file
#            operations with a sync every 50 (commit blocks that each
#            carry a large transaction).
# Usage: bench/latency.sh            (guest built and cached by the testbed)
set -euo pipefail
cd "$(dirname "$0")/.."
t=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p gammaray -p gammaray-testbed
g=$t/release/gammaray
tb=$t/release/gammaray-testbed
out=bench/out/latency
mkdir -p "$out"
"$tb" build >/dev/null 2>&1
for case in steady:scripts/demo-workload.sh:64 burst:bench/replay-meta-workload.sh:256; do
  IFS=: read -r name script mib <<<"$case"
  rm -rf "$out/$name" && mkdir -p "$out/$name"
  "$tb" disk --fs ext4 --out "$out/$name/disk.img" --disk-mib "$mib" 2>/dev/null
  "$g" run --serve "$out/$name/disk.img" --socket "$out/$name/nbd.sock" --vm "$name" \
    --for 900 --events /dev/null 2>"$out/$name/run.stderr" &
  engine=$!
  for _ in $(seq 200); do [ -S "$out/$name/nbd.sock" ] && break; sleep 0.1; done
  start=$(date +%s.%N)
  "$tb" run --script "$script" --fs ext4 --dir "$out/$name/guest" \
    --nbd "$out/$name/nbd.sock" --timeout 900 >/dev/null 2>"$out/$name/guest.err"
  end=$(date +%s.%N)
  wait "$engine"
  printf '%-7s guest %6.1f s | %s\n' "$name" "$(echo "$end - $start" | bc -l)" \
    "$(grep -h 'arrival to events' "$out/$name/run.stderr" | sed 's/^gammaray: //')"
  grep -h 'requests (' "$out/$name/run.stderr" | sed 's/^gammaray: /        /'
done

# Guest slowdown: the same burst workload on a plain raw file (no gammaray).
rm -rf "$out/plain" && mkdir -p "$out/plain"
"$tb" disk --fs ext4 --out "$out/plain/disk.img" --disk-mib 256 2>/dev/null
start=$(date +%s.%N)
"$tb" run --script bench/replay-meta-workload.sh --fs ext4 --dir "$out/plain/guest" \
  --disk "$out/plain/disk.img" --timeout 900 >/dev/null 2>"$out/plain/guest.err"
end=$(date +%s.%N)
printf 'plain   guest %6.1f s | the burst workload without gammaray (raw file drive)\n' \
  "$(echo "$end - $start" | bc -l)"
