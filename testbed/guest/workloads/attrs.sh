# attrs: permission bits, ownership, explicit times, hard links, symlinks.
# ntfs3 (mounted without acl/uid options) keeps no POSIX owner or mode on
# disk, so chmod/chown are only done on ext4; times, hard links and
# symlinks work on both.
op_mkdir /attrs
op_write /attrs/plain.txt "plain file"
op_write /attrs/prog "#!/bin/sh"
op_mkdir /attrs/shared
if [ "$GR_FS" = ext4 ]; then
  op_chmod 600 /attrs/plain.txt
  op_chmod 4755 /attrs/prog
  op_chmod 1777 /attrs/shared
  op_chown 1000:1000 /attrs/plain.txt
  op_chown 0:100 /attrs/prog
  op_chmod 640 /etc/passwd
  op_chown 1000:1000 /home/user
fi
op_sync
op_touch_d "2023-05-01 12:00:00" /attrs/plain.txt
op_touch_d "2001-09-09 01:46:40" /attrs/prog
op_touch_d "2020-02-29 23:59:59" /etc/hostname
op_link /attrs/plain.txt /attrs/hardlink.txt
op_link /attrs/plain.txt /attrs/shared/third-link.txt
op_symlink plain.txt /attrs/rel-link
op_symlink /etc/passwd /attrs/abs-link
op_symlink /nonexistent/target /attrs/dangling
op_sync
op_rm /attrs/plain.txt
op_append /attrs/hardlink.txt "written through a hard link"
op_touch_d "1999-12-31 23:00:00" /attrs/shared
op_touch_d "2024-06-01 00:00:00" /attrs
op_sync
