#!/usr/bin/env bash
# Kafka sink throughput against a plain rdkafka producer, in one run, on
# loopback: starts a tansu broker (in-memory storage) on a free port, runs
# sinks/examples/kafka_bench.rs (release build), stops the broker.
#   bash bench/kafka.sh [--events N] [--data BYTES] [--batch N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v tansu >/dev/null || { echo "tansu not installed: bash scripts/setup-tansu.sh" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cargo build --release -p gammaray-sinks --example kafka_bench
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"${TMPDIR:-/tmp}/gammaray-bench-tansu.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"${CARGO_TARGET_DIR:-target}/release/examples/kafka_bench" --brokers "127.0.0.1:$port" "$@"
