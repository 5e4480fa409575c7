#!/usr/bin/env bash
# Capture-overhead benchmark: the guest-visible cost of gammaray's capture
# paths. One write-heavy workload on ext4 in a real Linux guest (the
# testbed's Debian 6.12 kernel + busybox, QEMU TCG unless
# GAMMARAY_TESTBED_ACCEL says otherwise): 8 x 64 MiB `dd conv=fsync` of
# non-zero data, then 12000 files of ~3 KiB with a `sync` every 250 and a
# final `sync`; timed inside the guest (/proc/uptime) and on the host
# (pacing port), run on
#   plain         the disk as a plain file (-blockdev driver=file + raw)
#   serve         gammaray capture --serve over NBD
#   blklogwrites  gammaray capture --attach ... --via blklogwrites
#   mirror        gammaray capture --attach ... --via mirror
# round-robin (order rotated each round), --runs times each. Prints a line
# per run and a Markdown table (median, min, ratios to plain).
#
# Usage: bench/capture-overhead.sh [--runs N] [--big-files N] [--big-mib M]
#          [--small N] [--sync-every K] [--configs plain,serve,...] [--keep]
# Small smoke test: bench/capture-overhead.sh --runs 1 --big-files 1 --big-mib 8 --small 100
# Work files go to bench/out/overhead/ (override with --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p gammaray
cargo build --release -q -p gammaray-testbed --example overhead
export GAMMARAY_BIN="$CARGO_TARGET_DIR/release/gammaray"
export GAMMARAY_TESTBED_ACCEL="${GAMMARAY_TESTBED_ACCEL:-tcg}"
out=bench/out/overhead
for a in "$@"; do [ "$a" = --out ] && out=; done
echo "# $(date -u +%FT%TZ) $(uname -m), $(nproc) cores, $(qemu-system-x86_64 --version | head -1), accel $GAMMARAY_TESTBED_ACCEL"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$CARGO_TARGET_DIR/release/examples/overhead" ${out:+--out "$out"} "$@"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
