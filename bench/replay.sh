#!/usr/bin/env bash
# Replay (inference) benchmark: `gammaray replay` over traces recorded from
# real guests, beside `cat TRACE > /dev/null` (raw read speed of the same
# trace) measured in the same run, warm page cache.
#
# Traces (recorded once with the testbed and cached in bench/out/replay-*):
#   data  - bench/replay-workload.sh: 240 MiB of new file data (delayed
#           allocation: held as unknown writes until their commit), 2000
#           small files created, renamed and deleted, log appends;
#   meta  - bench/replay-meta-workload.sh: 4000 small files in 20
#           directories created, appended to, chmod-ed, renamed, deleted,
#           a sync every 50 operations (mostly journal and checkpoint
#           writes);
#   flood - bench/replay-flood-workload.sh: 600 MiB written by a hostile
#           guest straight into free blocks (unknown writes only).
#
# For each trace: replay wall time and MB/s; inference alone (the time in
# Inference::write, from the replay summary): MB/s, writes/s, metadata
# blocks/s, per-write p50/p99/max. For flood: peak RSS with the writes
# applied to a scratch file (--scratch) so that only gammaray's own memory
# counts, at two unknown-write budgets.
#
# Usage: bench/replay.sh [RUNS]      (default 3 runs; best run reported)
# REPLAY_EXTRA adds arguments to every measured replay, e.g.
# REPLAY_EXTRA="--lazy-load 1" for the lazy-load policy's worst case.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=bench/out
mkdir -p "$out"
cargo build --release -q -p gammaray -p gammaray-testbed
tgt=${CARGO_TARGET_DIR:-target}
bin=$tgt/release/gammaray
tb=$tgt/release/gammaray-testbed
read -r -a extra <<< "${REPLAY_EXTRA:-}"

record() { # NAME SCRIPT DISK_MIB WORKLOAD
  local dir="$out/replay-$1"
  if [ -f "$dir/trace.log" ] && [ -f "$dir/truth.jsonl" ]; then return; fi
  "$tb" record --workload "$4" --fs ext4 --out "$dir" --disk-mib "$3" \
    --script "$2" --timeout 900 >/dev/null
}
record data bench/replay-workload.sh 512 logs
record meta bench/replay-meta-workload.sh 256 tree
record flood bench/replay-flood-workload.sh 1024 edits

field() { # NAME FILE: one figure of a replay summary line
  python3 - "$1" "$2" <<'PY'
import re, sys
s = open(sys.argv[2]).read()
pats = {
    "replay_s": r"([0-9.]+) s replay",
    "infer_s": r"inference: ([0-9.]+) s,",
    "infer_mbs": r"inference: [0-9.]+ s, ([0-9.]+) MB/s",
    "infer_wps": r"MB/s, ([0-9]+) writes/s; per write",
    "p50": r"p50 ([0-9.]+) us",
    "p99": r"p99 ([0-9.]+) us",
    "max": r"max ([0-9.]+) us",
}
m = re.search(pats[sys.argv[1]], s)
print(m.group(1) if m else "nan")
PY
}
counter() { # NAME FILE
  grep -oE "p1\.$1=[0-9]+" "$2" | cut -d= -f2 || echo 0
}

printf '%-6s %9s %8s %9s | %9s %9s %10s %10s %9s %9s %9s | %s\n' \
  trace MiB cat_MB/s replay_s infer_s inf_MB/s writes/s meta_blk/s p50_us p99_us max_us state
for t in data meta flood; do
  dir="$out/replay-$t"
  trace="$dir/trace.log"
  mib=$(( $(stat -c %s "$trace") / 1048576 ))
  cat "$trace" >/dev/null
  best_cat=999999
  for _ in $(seq "$runs"); do
    s=$(date +%s.%N); cat "$trace" >/dev/null; e=$(date +%s.%N)
    best_cat=$(echo "$e - $s" | bc -l | awk -v b="$best_cat" '{print ($1 < b) ? $1 : b}')
  done
  cat_mbs=$(echo "$(stat -c %s "$trace") / 1000000 / $best_cat" | bc -l)
  best=""
  for _ in $(seq "$runs"); do
    "$bin" replay --disk "$dir/base.img" --log "$trace" --events /dev/null \
      --state "$out/replay-$t.state.jsonl" --hash "${extra[@]}" 2>"$out/replay-$t.sum"
    rs=$(field replay_s "$out/replay-$t.sum")
    if [ -z "$best" ] || [ "$(echo "$rs < $best" | bc -l)" = 1 ]; then
      best=$rs; cp "$out/replay-$t.sum" "$out/replay-$t.best"
    fi
  done
  sum="$out/replay-$t.best"
  infer_s=$(field infer_s "$sum")
  meta=$(( $(counter journal_blocks "$sum") + $(counter checkpoint_blocks "$sum") + $(counter home_meta_blocks "$sum") ))
  state=ok
  python3 - "$dir/truth.jsonl" "$out/replay-$t.state.jsonl" <<'PY' || state=DIFFERS
import json, sys
def load(p):
    return sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "part"}, sort_keys=True) for l in open(p))
sys.exit(0 if load(sys.argv[1]) == load(sys.argv[2]) else 1)
PY
  printf '%-6s %9d %8.0f %9.3f | %9.3f %9.0f %10.0f %10.0f %9.1f %9.1f %9.1f | %s\n' \
    "$t" "$mib" "$cat_mbs" "$best" "$infer_s" \
    "$(field infer_mbs "$sum")" "$(field infer_wps "$sum")" \
    "$(echo "$meta / $infer_s" | bc -l)" \
    "$(field p50 "$sum")" "$(field p99 "$sum")" "$(field max "$sum")" "$state"
done

echo
echo "flood: peak RSS with the trace applied to a scratch file (only gammaray's memory)"
for budget in 67108864 8388608; do
  /usr/bin/time -f "%M" -o "$out/rss.txt" "$bin" replay --disk "$out/replay-flood/base.img" \
    --log "$out/replay-flood/trace.log" --events /dev/null --scratch "$out/scratch.img" \
    --unknown-budget "$budget" 2>"$out/replay-flood-rss.sum"
  printf '  budget %4d MiB: peak RSS %5d MiB; held at end %s bytes, evicted %s bytes\n' \
    $((budget / 1048576)) $(( $(cat "$out/rss.txt") / 1024 )) \
    "$(counter unknown_held_bytes "$out/replay-flood-rss.sum")" \
    "$(counter unknown_evicted_bytes "$out/replay-flood-rss.sum")"
done
/usr/bin/time -f "%M" -o "$out/rss.txt" "$bin" replay --disk "$out/replay-meta/base.img" \
  --log "$out/replay-meta/trace.log" --events /dev/null --scratch "$out/scratch.img" 2>/dev/null
printf '  (baseline: the meta trace, no flood: peak RSS %d MiB)\n' $(( $(cat "$out/rss.txt") / 1024 ))
rm -f "$out/scratch.img"
