#!/usr/bin/env bash
# Builds an ext4 image with N small files (1000 per directory, in a
# two-level tree; file k holds "file k\n" repeated 1 + k % 50 times), for
# the crawl and memory benchmarks. Skipped when IMG exists.
# Usage: bench/make-files-image.sh N IMG
set -euo pipefail
n=$1 img=$2
[ -f "$img" ] && exit 0
src="$img.src"
rm -rf "$src"
python3 - "$src" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per_dir = 1000
for d in range((n + per_dir - 1) // per_dir):
    top = os.path.join(root, f"d{d // 100:03d}", f"s{d % 100:02d}")
    os.makedirs(top, exist_ok=True)
    for i in range(min(per_dir, n - d * per_dir)):
        k = d * per_dir + i
        with open(os.path.join(top, f"file-{k:07d}.txt"), "w") as f:
            f.write(f"file {k}\n" * (1 + k % 50))
PY
files=$((n + n / 1000 + 100))
mkfs.ext4 -F -q -b 4096 -N "$files" -E lazy_itable_init=0,lazy_journal_init=0 -d "$src" "$img.tmp" $(( (n / 200 + 256) ))M
mv "$img.tmp" "$img"
rm -rf "$src"
