#!/usr/bin/env bash
# End-to-end latency with a host clock (as the Gamma-Ray paper measured
# it): a real guest appends a line and runs `sync` (and, in a second loop,
# creates a file and runs `sync`); the host times from releasing the guest
# (its pacing port) to reading the matching event from the named pipe that
# `gammaray run --serve ... --events PIPE` writes, and to the guest's
# `sync` returning. The same loops then run on a plain raw file without
# gammaray. A last run puts a stamping proxy on the NBD socket to split
# the time into the guest's part and the host's part.
# See testbed/examples/e2e_latency.rs.
# Usage: bench/e2e-latency.sh [RUNS] [ITERATIONS]   (defaults: 3, 500)
# The accelerator is the testbed's choice (KVM if a probe boot works, else
# TCG); force one with GAMMARAY_TESTBED_ACCEL=kvm|tcg.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
iterations=${2:-500}
t=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p gammaray
cargo build --release -q -p gammaray-testbed --example e2e_latency
GAMMARAY_BIN=$(cd "$t/release" && pwd)/gammaray
export GAMMARAY_BIN
out=bench/out/e2e-latency
mkdir -p "$out"
for r in $(seq "$runs"); do
  echo "== run $r of $runs, $(date -u +%H:%M) UTC"
  "$t/release/examples/e2e_latency" --out "$out/run$r" --iterations "$iterations"
  echo
done
echo "== breakdown run (proxy on the NBD socket), $(date -u +%H:%M) UTC"
"$t/release/examples/e2e_latency" --out "$out/proxy" --iterations "$iterations" --proxy --no-plain
