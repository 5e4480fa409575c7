# attrs: permission bits (incl. setuid and sticky), ownership, explicit
# times, hard links, symlinks, a fifo and a device node. ntfs3 keeps POSIX
# owner, mode and device numbers in WSL-style extended attributes
# ($LXUID, $LXGID, $LXMOD, $LXDEV), so the same operations work on both.
op_mkdir /attrs
op_write /attrs/plain.txt "plain file"
op_write /attrs/prog "#!/bin/sh"
op_mkdir /attrs/shared
op_chown 1000:1000 /attrs/plain.txt
op_chown 0:100 /attrs/prog
# After the chown: chown clears setuid.
op_chmod 600 /attrs/plain.txt
op_chmod 4755 /attrs/prog
op_chmod 1777 /attrs/shared
op_chmod 640 /etc/passwd
op_chown 1000:1000 /home/user
op_sync
op_touch_d "2023-05-01 12:00:00" /attrs/plain.txt
op_touch_d "2001-09-09 01:46:40" /attrs/prog
op_touch_d "2020-02-29 23:59:59" /etc/hostname
op_link /attrs/plain.txt /attrs/hardlink.txt
op_link /attrs/plain.txt /attrs/shared/third-link.txt
op_symlink plain.txt /attrs/rel-link
op_symlink /etc/passwd /attrs/abs-link
op_symlink /nonexistent/target /attrs/dangling
mkfifo "$R/attrs/fifo"
gr_op mkfifo /attrs/fifo
mknod "$R/attrs/null" c 1 3
gr_op mknod /attrs/null c 1 3
op_sync
op_rm /attrs/plain.txt
op_append /attrs/hardlink.txt "written through a hard link"
op_chmod 755 /attrs/shared/third-link.txt
op_touch_d "1999-12-31 23:00:00" /attrs/shared
op_touch_d "2024-06-01 00:00:00" /attrs
op_sync
