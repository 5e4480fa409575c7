# nosync: a stretch of work with no sync at all; some files live and die in
# the page cache and may never reach the disk. Only /init's final sync
# pushes the rest out.
op_mkdir /scratch
i=0
while [ $i -lt 40 ]; do
  op_write "/scratch/tmp-$i" "temporary $i"
  i=$((i + 1))
done
i=0
while [ $i -lt 40 ]; do
  op_rm "/scratch/tmp-$i"
  i=$((i + 2))
done
op_fill /scratch/blob 256 n
op_overwrite /scratch/blob 100 overwritten
op_truncate /scratch/blob 1000
op_move /scratch/tmp-1 /scratch/kept
op_append_lines /var/log/app.log nosync 100
op_mkdir /scratch/d
op_move /scratch/tmp-3 /scratch/d/moved
op_rm_r /scratch/d
op_write /etc/hostname "renamed-host"
