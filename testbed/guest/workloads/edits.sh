# edits: how editors and tools rewrite files: write a temporary file and
# rename it over the original, keep a backup, truncate smaller and larger,
# overwrite bytes in place, rewrite a file many times.
op_write /etc/.app.conf.tmp "key=new-value"
op_append /etc/.app.conf.tmp "other=2"
op_move /etc/.app.conf.tmp /etc/app.conf
op_sync
op_move /home/user/notes.txt /home/user/notes.txt~
op_write /home/user/notes.txt "notes, second version"
op_rm /home/user/notes.txt~
op_sync
op_truncate /srv/data/blob.bin 10000
op_sync
op_truncate /srv/data/blob.bin 200000
op_overwrite /srv/data/blob.bin 5000 PATCHED-IN-THE-MIDDLE
op_overwrite /srv/data/blob.bin 199990 END
op_overwrite /etc/hostname 0 TESTBED
op_sync
i=0
while [ $i -lt 10 ]; do
  op_write /home/user/counter.txt "counter=$i"
  op_sync
  i=$((i + 1))
done
op_fill /srv/data/big.bin 512 b
op_sync
op_truncate /srv/data/big.bin 4096
op_overwrite /srv/data/big.bin 4000 tail
op_write /home/user/docs/readme.md.new "# readme, rewritten"
op_move /home/user/docs/readme.md.new /home/user/docs/readme.md
op_sync
