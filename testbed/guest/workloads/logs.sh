# logs: application logs grow line by line, get rotated the way logrotate
# does it (rename, recreate), copy-truncated, and old generations deleted.
op_append_lines /var/log/app.log boot 20
op_sync
op_append_lines /var/log/app.log request 200
op_sync
op_move /var/log/app.log /var/log/app.log.1
op_create /var/log/app.log
op_append_lines /var/log/app.log after-rotate 50
op_sync
gr_snapshot rotated
op_move /var/log/app.log.1 /var/log/app.log.2
op_move /var/log/app.log /var/log/app.log.1
op_create /var/log/app.log
op_append /var/log/app.log "fresh start"
op_append_lines /var/log/syslog kernel 30
op_sync
op_copy /var/log/syslog /var/log/syslog.1
op_truncate /var/log/syslog 0
op_append_lines /var/log/syslog after-truncate 10
op_rm /var/log/app.log.2
op_mkdir /var/log/nginx
op_append_lines /var/log/nginx/access.log GET 120
op_append_lines /var/log/app.log more 40
op_sync
