#!/bin/busybox sh
# gammaray testbed guest /init (busybox ash). Embedded by the testbed crate.
#
# Kernel command line parameters read here:
#   gr.fs=ext4|ntfs3   how to mount /dev/vda
#   gr.pace=1          a pacing channel is on /dev/ttyS1 (see gr_pace)
#
# Serial console protocol (lines, on ttyS0):
#   GR-BOOT                         init started
#   GR-BEGIN-OPS / OP ... / GR-END-OPS rc=N
#   GR-BEGIN-LISTING / S|..., L|..., T|..., H|... / GR-END-LISTING
#   GR-DONE                         everything went well
#   GR-ERROR <message>              something failed; the run is bad
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo GR-BOOT

gr_fail() {
  echo "GR-ERROR $*"
  sync
  poweroff -f
}

for m in qemu_fw_cfg virtio_blk nls_utf8 ntfs3; do
  insmod "/lib/modules/$m.ko" || gr_fail "insmod $m"
done

GR_FS=ext4
GR_PACE=0
for x in $(cat /proc/cmdline); do
  case "$x" in
    gr.fs=*) GR_FS="${x#gr.fs=}" ;;
    gr.pace=*) GR_PACE="${x#gr.pace=}" ;;
  esac
done
export GR_FS GR_PACE

. /lib/gr/lib.sh

FW=/sys/firmware/qemu_fw_cfg/by_name/opt/gr/script/raw
i=0
while [ ! -e "$FW" ] || [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -gt 100 ] && gr_fail "no workload script or no /dev/vda"
  sleep 0.05
done
cat "$FW" > /tmp/workload.sh

# The guest clock is fixed so that times not set by touch -d are close to it.
date -s "2024-01-01 00:00:00" >/dev/null

# The pacing port stays open on fd 3: opening a closed 8250 port clears
# its FIFO, which could drop the host's answer.
if [ "$GR_PACE" = 1 ]; then
  exec 3<>/dev/ttyS1 || gr_fail "no /dev/ttyS1 for pacing"
  stty -echo -onlcr -icrnl <&3
fi
gr_pace boot

case "$GR_FS" in
  ext4) mount -t ext4 /dev/vda /mnt || gr_fail "mount ext4" ;;
  ntfs3) mount -t ntfs3 /dev/vda /mnt || gr_fail "mount ntfs3" ;;
  *) gr_fail "unknown gr.fs=$GR_FS" ;;
esac
gr_pace mounted

echo GR-BEGIN-OPS
(set -e; cd "$R"; . /tmp/workload.sh)
rc=$?
echo "GR-END-OPS rc=$rc"
sync
gr_listing
cd /
umount /mnt || gr_fail "umount"
sync
gr_pace done
[ $rc -eq 0 ] || gr_fail "workload exited with $rc"
echo GR-DONE
poweroff -f
