#!/usr/bin/env bash
# Crawl benchmark: gammaray crawl vs TSK `fls -r -l -p` vs `e2fsck -fn` on ext4
# images with N small files in a directory tree (default: 128000 and
# 1000000), all in one run, warm page cache. Also reports peak RSS, index
# bytes per file, index load time and resident bytes per file after loading.
#
# Usage: bench/crawl.sh [N ...]     (images are cached in bench/out/)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(128000 1000000)
out=bench/out
mkdir -p "$out"
cargo build --release -q -p gammaray
bin=target/release/gammaray

make_image() { # N IMG
  bash bench/make-files-image.sh "$1" "$2"
}

measure() { # prints "wall_s peak_rss_kib" of a command, output discarded
  /usr/bin/time -f "%e %M" -o "$out/time.txt" "$@" >/dev/null 2>"$out/stderr.txt" || {
    cat "$out/stderr.txt" >&2; return 1; }
  cat "$out/time.txt"
}

printf '| files | gammaray crawl s | fls -r -l -p s | e2fsck -fn s | crawl peak RSS MiB | index B/file | index load s | resident B/file after load | peak RSS B/file during load |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for n in "${counts[@]}"; do
  img="$out/ext4-$n.img"
  make_image "$n" "$img"
  idx="$out/ext4-$n.gammaray"
  cat "$img" > /dev/null # warm the page cache
  # One warm-up of each tool, then the measured run.
  measure "$bin" crawl "$img" -o "$idx" >/dev/null
  read -r g_s g_rss < <(measure "$bin" crawl "$img" -o "$idx")
  measure fls -r -l -p "$img" >/dev/null
  read -r f_s _ < <(measure fls -r -l -p "$img")
  measure e2fsck -fn "$img" >/dev/null || true
  read -r e_s _ < <(measure e2fsck -fn "$img")
  "$bin" crawl "$img" -o "$idx" 2> "$out/summary.txt"
  files=$(sed -n 's/.* \([0-9][0-9]*\) files in.*/\1/p' "$out/summary.txt")
  idx_bytes=$(stat -c %s "$idx")
  read -r l_s l_rss < <(measure "$bin" crawl "$img" --load "$idx")
  "$bin" crawl "$img" --load "$idx" 2> "$out/load.txt"
  load_time=$(sed -n 's/.* in \([0-9.]*\) s.*/\1/p' "$out/load.txt")
  per_file=$(sed -n 's/.*(\([0-9]*\) B\/file).*/\1/p' "$out/load.txt")
  awk -v n="$files" -v g="$g_s" -v f="$f_s" -v e="$e_s" -v rss="$g_rss" -v ib="$idx_bytes" \
      -v lt="$load_time" -v lr="$l_rss" -v pf="$per_file" 'BEGIN {
    printf "| %d | %.2f | %.2f | %.2f | %.0f | %.1f | %.3f | %d | %.0f |\n",
      n, g, f, e, rss/1024, ib/n, lt, pf, lr*1024/n }'
done
