#!/usr/bin/env bash
# Redis sink throughput against a plain redis-rs client and redis-benchmark,
# in one run, on loopback: starts a redis-server on a free port, runs
# sinks/examples/redis_bench.rs (release build), then redis-benchmark
# publishing a payload of the same size (pipelined 1024 deep), stops the
# server.
#   bash bench/redis.sh [--events N] [--data BYTES] [--batch N] [--rounds N]
# REDIS_BENCH_BIN=PATH runs that redis_bench binary instead of building one
# (to compare two builds of the sink in one session).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server not installed: bash scripts/setup-host.sh" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bin=${REDIS_BENCH_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -q -p gammaray-sinks --example redis_bench
  bin="${CARGO_TARGET_DIR:-target}/release/examples/redis_bench"
fi
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"${TMPDIR:-/tmp}/gammaray-bench-redis.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
out=$("$bin" --url "redis://127.0.0.1:$port" "$@")
echo "$out"
size=$(echo "$out" | head -1 | grep -o '([0-9]* B BSON' | grep -o '[0-9]*')
payload=$(head -c "$size" /dev/zero | tr '\0' x)
echo "redis-benchmark, PUBLISH of $size bytes, pipelined 1024 deep, 1 client:"
redis-benchmark -p "$port" -q -n 200000 -c 1 -P 1024 PUBLISH 'bench:vm0:/var/log/f1.log' "$payload" | tr '\r' '\n' | tail -1
