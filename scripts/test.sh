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
# Bounded fuzzing of the parsers. cargo-fuzz needs nightly's -Z flags: use
# the nightly toolchain when the machine has one, else stable with
# RUSTC_BOOTSTRAP=1 (which unlocks the same flags).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if rustup run nightly rustc --version >/dev/null 2>&1; then
  export FUZZ_TOOLCHAIN=nightly
else
  export FUZZ_TOOLCHAIN=stable RUSTC_BOOTSTRAP=1
fi
bash scripts/fuzz.sh "${GAMMARAY_FUZZ_SECONDS:-60}"
echo "all tests passed"
