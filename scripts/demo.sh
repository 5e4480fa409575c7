#!/usr/bin/env bash
# One command on a fresh machine: installs what gammaray needs, builds it,
# makes a demo disk image and indexes it, printing the state listing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
cargo build --release -p gammaray
bash scripts/make-demo-image.sh work/demo.img
./target/release/gammaray crawl work/demo.img --list --hash > work/demo.listing.jsonl
head -n 40 work/demo.listing.jsonl
echo "(state listing in work/demo.listing.jsonl, index in work/demo.img.gammaray)"
