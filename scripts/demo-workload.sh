# The live demo's guest workload (busybox ash, with the op_* helpers of
# testbed/guest/lib.sh): about 40 seconds of log lines, new files, renames,
# permission changes and deletions, each made durable with a sync, so that
# `gammaray run` shows their events as they happen.
op_mkdir /srv/www
i=1
while [ $i -le 12 ]; do
  op_append /var/log/app.log "request $i: GET /index.html 200"
  case $((i % 4)) in
    0) op_write /srv/www/page-$i.html "<h1>page $i</h1>" ;;
    1) if [ $((i % 8)) -eq 1 ]; then op_chmod 600 /etc/hostname; else op_chmod 644 /etc/hostname; fi ;;
    2) if [ -f "$R/srv/www/page-$((i - 2)).html" ]; then
         op_move /srv/www/page-$((i - 2)).html /srv/www/old-$i.html
       fi ;;
    3) op_append /var/log/auth.log "Failed password for root from 10.0.0.$i" ;;
  esac
  op_sync
  sleep 2
  i=$((i + 1))
done
op_rm_r /srv/www
op_sync
