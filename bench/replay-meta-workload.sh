# bench/replay-meta-workload.sh: a metadata-heavy guest workload for
# bench/replay.sh: thousands of small files created, appended to, renamed,
# chmod-ed and deleted across 20 directories, with a sync every 50
# operations, so that the trace is mostly journal and checkpoint writes.
op_mkdir /meta
d=0
while [ $d -lt 20 ]; do
  mkdir $R/meta/d$d
  d=$((d + 1))
done
gr_op note dirs 20
n=0
while [ $n -lt 4000 ]; do
  d=$((n % 20))
  echo "file $n" > $R/meta/d$d/f$n
  n=$((n + 1))
  [ $((n % 50)) -eq 0 ] && sync
done
gr_op note created 4000
sync
n=0
while [ $n -lt 4000 ]; do
  d=$((n % 20))
  echo "more $n" >> $R/meta/d$d/f$n
  chmod 600 $R/meta/d$d/f$n
  mv $R/meta/d$d/f$n $R/meta/d$(( (d + 1) % 20 ))/g$n
  n=$((n + 2))
  [ $((n % 100)) -eq 0 ] && sync
done
gr_op note churned 2000
sync
n=0
while [ $n -lt 4000 ]; do
  d=$((n % 20))
  rm -f $R/meta/d$d/f$n
  n=$((n + 3))
  [ $((n % 150)) -eq 0 ] && sync
done
gr_op note deleted 1333
op_sync
