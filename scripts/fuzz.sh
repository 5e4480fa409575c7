#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS seconds each (default 60).
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked).
# Exits non-zero when a target finds a crash; the input is left in
# fuzz/artifacts/<target>/ (turn it into a regression test in
# fs-ext4/tests/fuzz_replay.rs).
set -euo pipefail
secs="${1:-60}"
cd "$(dirname "$0")/../fuzz"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs 'cargo +$toolchain fuzz' (rustup toolchain install nightly; cargo install cargo-fuzz --locked)" >&2
    exit 2
fi
for target in $(cargo "+$toolchain" fuzz list); do
    echo "== $target: ${secs}s"
    # Work on a scratch copy so the committed seed corpus stays small.
    work="$(mktemp -d)"
    cp -r "corpus/$target/." "$work/" 2>/dev/null || true
    cargo "+$toolchain" fuzz run "$target" "$work" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=262144
    rm -rf "$work"
done
