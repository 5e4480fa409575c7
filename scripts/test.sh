#!/usr/bin/env bash
# The test command (README and CI): installs missing system packages, then
# runs formatting and lint checks, every test in the workspace (including
# real guests under QEMU), and a bounded fuzzing run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
if [ -x scripts/fuzz.sh ] || [ -f scripts/fuzz.sh ]; then
  bash scripts/fuzz.sh "${GAMMARAY_FUZZ_SECONDS:-60}"
fi
echo "all tests passed"
