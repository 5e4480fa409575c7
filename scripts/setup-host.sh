#!/usr/bin/env bash
# Installs the system packages gammaray's tests and benchmarks need on a fresh
# Debian 12 machine: QEMU (from bookworm-backports, to match the machine's
# qemu-utils 10), busybox-static, e2fsprogs, sleuthkit (fls), ntfs-3g, fdisk;
# and Debian's redis-server for the Redis sink's tests, which start their own
# server on a free loopback port (the system service is not left running).
# Idempotent: skips the install when everything is already there.
set -euo pipefail

# The Kafka-protocol test broker (a cargo install, not a system package).
bash "$(dirname "$0")/setup-tansu.sh"

need=()
for cmd in qemu-system-x86_64 busybox mkfs.ext4 fls mkntfs sfdisk xz zstd cpio redis-server; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "setup-host: all packages present"
  exit 0
fi
echo "setup-host: missing ${need[*]}; installing"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# A private apt configuration that adds bookworm-backports on the same mirror
# the system already uses, without touching the system's sources.
APTDIR=/var/cache/gammaray-apt
$SUDO mkdir -p "$APTDIR/lists/partial" "$APTDIR/sources.list.d"
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
$SUDO cp /etc/apt/sources.list.d/debian.sources "$APTDIR/sources.list.d/" 2>/dev/null || true
echo "deb $mirror bookworm-backports main" | $SUDO tee "$APTDIR/sources.list.d/backports.list" >/dev/null
cat <<CONF | $SUDO tee "$APTDIR/apt.conf" >/dev/null
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$APTDIR/sources.list.d";
Dir::State::Lists "$APTDIR/lists";
DPkg::Lock::Timeout "300";
CONF
export APT_CONFIG="$APTDIR/apt.conf"
export DEBIAN_FRONTEND=noninteractive
if [ -n "$SUDO" ]; then APT="sudo -E apt-get"; else APT="apt-get"; fi
$APT update -q
$APT install -y -q --no-install-recommends -t bookworm-backports \
  qemu-system-x86 busybox-static ntfs-3g xz-utils cpio zstd e2fsprogs sleuthkit fdisk

# redis-server from Debian's own release, without starting its service: a
# policy-rc.d that refuses service starts while it installs (only if the
# machine has none), then the unit is disabled where systemd runs.
if ! command -v redis-server >/dev/null 2>&1; then
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
  fi
  $APT install -y -q --no-install-recommends redis-server || { [ -z "$policy" ] || $SUDO rm -f "$policy"; exit 1; }
  [ -z "$policy" ] || $SUDO rm -f "$policy"
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now redis-server.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/redis-server ]; then
    $SUDO /etc/init.d/redis-server stop >/dev/null 2>&1 || true
  fi
fi
echo "setup-host: done"
