#!/usr/bin/env bash
# Installs tansu, the Apache-Kafka-protocol broker the Kafka sink's tests run
# against (Apache Kafka itself is not installable here). Pinned version, with
# the `dynostore` feature (the default features have no storage engine, and
# `memory://` then fails). Takes several minutes and 1.7 GB of memory to
# build on 2 cores, so it is skipped when `tansu --version` answers; the
# binary is cached in ~/.cargo/bin.
set -euo pipefail
TANSU_VERSION=0.6.0
if tansu --version >/dev/null 2>&1; then
  echo "setup-tansu: $(tansu --version 2>&1 | head -1) present"
  exit 0
fi
echo "setup-tansu: installing tansu $TANSU_VERSION (several minutes)"
# Its own target directory: the workspace's is not disturbed. Optimized at
# level 1, not 3, without debug info: the tests' broker carries a few
# thousand messages, and the build is the longest step of a fresh CI run
# (level 1: 13.6 CPU-minutes here; the Kafka tests pass against it).
CARGO_TARGET_DIR="${TANSU_TARGET_DIR:-${TMPDIR:-/tmp}/gammaray-tansu-target}" \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false \
  cargo install tansu --version "=$TANSU_VERSION" --locked --features dynostore
echo "setup-tansu: done"
