# bench/replay-workload.sh: the guest workload behind bench/replay.sh. It
# writes a few hundred MiB of file data (large files, appends to logs) and
# churns metadata (many small files created, renamed, deleted), with syncs,
# so that the trace mixes data, journal and checkpoint writes.
op_mkdir /bench
i=0
while [ $i -lt 6 ]; do
  dd if=/dev/urandom of=$R/bench/big-$i.bin bs=1M count=40 2>/dev/null
  gr_op write /bench/big-$i.bin 41943040
  op_sync
  i=$((i + 1))
done
op_mkdir /bench/small
i=0
while [ $i -lt 2000 ]; do
  echo "small file $i" > $R/bench/small/f-$i
  i=$((i + 1))
done
gr_op note small-files 2000
op_sync
i=0
while [ $i -lt 2000 ]; do
  mv $R/bench/small/f-$i $R/bench/small/g-$i
  i=$((i + 2))
done
op_sync
i=0
while [ $i -lt 200 ]; do
  op_append_lines /var/log/bench.log line 50
  i=$((i + 1))
done
op_sync
rm -r $R/bench/small
gr_op delete_tree /bench/small
op_sync
