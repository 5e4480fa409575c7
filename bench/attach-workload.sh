# Guest workload for bench/attach.sh: writes continuously (log appends,
# small files rewritten and deleted, a sync every tenth step) for 40 s; gammaray attaches meanwhile.
mkdir -p bench
i=0
end=$(( $(date +%s) + 40 ))
while [ "$(date +%s)" -lt "$end" ]; do
  i=$((i + 1))
  echo "line $i: the quick brown fox jumps over the lazy dog" >> bench/app.log
  case $((i % 10)) in
    0) echo "rewrite $i" > bench/f$((i / 10 % 50)); sync ;;
    5) rm -f bench/f$(((i / 10 + 25) % 50)) ;;
  esac
  sleep 0.01
done
