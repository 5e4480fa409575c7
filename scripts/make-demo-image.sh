#!/usr/bin/env bash
# Builds a small demo disk: a GPT disk with one ext4 partition holding a
# Linux-like tree (/etc, /var/log, /home). Usage: make-demo-image.sh OUT.img
set -euo pipefail
out=${1:-work/demo.img}
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/src
mkdir -p "$src"/{etc/ssh,var/log,home/alice,usr/bin,tmp}
printf 'root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n' > "$src/etc/passwd"
printf 'root:*:19000:0:99999:7:::\n' > "$src/etc/shadow"; chmod 640 "$src/etc/shadow"
printf 'PermitRootLogin no\nPasswordAuthentication no\n' > "$src/etc/ssh/sshd_config"
for i in $(seq 1 200); do echo "Nov 26 12:00:$((i % 60)) host sshd[$i]: Failed password for root from 10.0.0.$i" ; done > "$src/var/log/auth.log"
seq 1 5000 | sed 's/^/syslog line /' > "$src/var/log/syslog"
echo "hello from alice" > "$src/home/alice/notes.txt"; chown -R 1000:1000 "$src/home/alice" 2>/dev/null || true
ln -s ../../etc/passwd "$src/home/alice/passwd-link"
ln "$src/etc/passwd" "$src/etc/passwd.hardlink"
chmod 1777 "$src/tmp"
head -c 300000 /dev/urandom > "$src/usr/bin/tool"; chmod 755 "$src/usr/bin/tool"
truncate -s 80M "$out"
printf 'label: gpt\nstart=2048, size=159744\n' | sfdisk -q "$out"
mkfs.ext4 -F -q -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -d "$src" "$tmp/p1.img" 78M
dd if="$tmp/p1.img" of="$out" bs=1M seek=1 conv=notrunc status=none
echo "demo image: $out"
