# bench/replay-flood-workload.sh: a hostile guest for bench/replay.sh. It
# writes 600 MiB straight to the disk device, into blocks that no file
# owns (the file system stays intact: the range holds no metadata but
# backup superblocks), so that every write is "unknown" to gammaray and
# only the byte budget bounds what is held. Then one ordinary file.
dd if=/dev/zero of=/dev/vda bs=1M seek=300 count=600 conv=notrunc 2>/dev/null
gr_op note flood 629145600
op_write /after-flood.txt "still here"
op_sync
