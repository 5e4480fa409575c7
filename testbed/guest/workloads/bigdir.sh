# bigdir: one directory with several thousand entries (an htree on ext4, a
# multi-block index on NTFS), then deletions and renames inside it.
op_mkdir /big
i=0
while [ $i -lt 3000 ]; do
  : > "$R/big/entry-$i"
  gr_op create "/big/entry-$i"
  i=$((i + 1))
done
op_sync
i=0
while [ $i -lt 3000 ]; do
  echo "content of entry $i" > "$R/big/entry-$i"
  gr_op write "/big/entry-$i" "$((18 + ${#i}))"
  i=$((i + 97))
done
list=""
i=0
while [ $i -lt 3000 ]; do
  list="$list $R/big/entry-$i"
  i=$((i + 3))
done
rm $list
i=0
while [ $i -lt 3000 ]; do
  gr_op delete "/big/entry-$i"
  i=$((i + 3))
done
op_sync
i=1
while [ $i -lt 300 ]; do
  op_move "/big/entry-$i" "/big/renamed-with-a-longer-name-$i"
  i=$((i + 3))
done
op_mkdir /big/sub
op_move /big/entry-2999 /big/sub/last
op_sync
