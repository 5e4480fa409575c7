# gammaray testbed guest helpers (busybox ash), sourced by /init and visible
# to workloads. Every op_* helper performs one operation on the mounted file
# system and then reports it on the console as one `OP ...` line, with paths
# relative to the file system's root. A failing operation aborts the workload
# (workloads run under `set -e`) before its OP line is printed.

R=/mnt

# gr_op VERB ARGS...: print one OP line. Arguments holding a space, a
# double quote or a backslash are printed in double quotes with `"` and `\`
# escaped by a backslash, so the host can split the line unambiguously.
gr_op() {
  _l="OP $1"
  shift
  for _a in "$@"; do
    case "$_a" in
      *' '* | *'"'* | *'\'*) _l="$_l \"$(printf '%s' "$_a" | sed 's/[\\"]/\\&/g')\"" ;;
      *) _l="$_l $_a" ;;
    esac
  done
  printf '%s\n' "$_l"
}

# gr_pace NAME: when pacing is on, tell the host we reached NAME and wait
# for it to answer with one line.
gr_pace() {
  [ "$GR_PACE" = 1 ] || return 0
  echo "PAUSE $1" >&3
  read -r _gr_answer <&3
  echo "GR-PACE $1 $_gr_answer"
}

op_mkdir() { mkdir "$R$1"; gr_op mkdir "$1"; }
op_mkdir_p() { mkdir -p "$R$1"; gr_op mkdir "$1"; }
# op_write PATH TEXT: create or replace PATH with TEXT plus a newline.
op_write() { echo "$2" > "$R$1"; gr_op write "$1" "$(stat -c %s "$R$1")"; }
# op_create PATH: create an empty file (fails if it exists).
op_create() {
  [ ! -e "$R$1" ] || return 1
  : > "$R$1"
  gr_op create "$1"
}
# op_append PATH TEXT: append TEXT plus a newline.
op_append() { echo "$2" >> "$R$1"; gr_op append "$1" "$((${#2} + 1))"; }
# op_append_lines PATH PREFIX N: append N numbered lines.
op_append_lines() {
  _i=0
  _n=0
  while [ $_i -lt "$3" ]; do
    _l="$2 line $_i: the quick brown fox jumps over the lazy dog"
    echo "$_l" >> "$R$1"
    _n=$((_n + ${#_l} + 1))
    _i=$((_i + 1))
  done
  gr_op append "$1" "$_n"
}
op_rm() { rm "$R$1"; gr_op delete "$1"; }
op_rmdir() { rmdir "$R$1"; gr_op rmdir "$1"; }
op_rm_r() { rm -r "$R$1"; gr_op delete_tree "$1"; }
op_move() { mv "$R$1" "$R$2"; gr_op move "$1" "$2"; }
op_copy() { cp "$R$1" "$R$2"; gr_op copy "$1" "$2"; }
op_chmod() { chmod "$1" "$R$2"; gr_op chmod "$1" "$2"; }
op_chown() { chown "$1" "$R$2"; gr_op chown "$1" "$2"; }
# op_touch_d DATE PATH: set atime and mtime (creates PATH if missing).
op_touch_d() { touch -d "$1" "$R$2"; gr_op touch "$2" "$1"; }
op_link() { ln "$R$1" "$R$2"; gr_op link "$1" "$2"; }
op_symlink() { ln -s "$1" "$R$2"; gr_op symlink "$1" "$2"; }
op_truncate() { truncate -s "$2" "$R$1"; gr_op truncate "$1" "$2"; }
# op_overwrite PATH OFFSET TEXT: write TEXT at byte OFFSET in place.
op_overwrite() {
  printf '%s' "$3" | dd of="$R$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
  gr_op overwrite "$1" "$2" "${#3}"
}
# op_fill PATH KIB CHAR: create or replace PATH with KIB KiB of CHAR.
op_fill() {
  dd if=/dev/zero bs=1024 count="$2" 2>/dev/null | tr '\0' "$3" > "$R$1"
  gr_op write "$1" "$(($2 * 1024))"
}
op_sync() { sync; gr_op sync; }

# gr_listing: the ground-truth listing of everything under $R, raw records
# that the host turns into the state listing (the host does JSON escaping and
# sorting). Paths keep the /mnt prefix; names must not contain newlines.
#   S|<raw mode hex>|<uid>|<gid>|<size>|<nlink>|<mtime>|<path>
#   L|<path>   followed by   T|<symlink target>
#   H|<sha256>  <path>
# With an argument LABEL the listing is a snapshot (see gr_snapshot).
gr_listing() {
  echo 1 > /proc/sys/kernel/printk
  echo "GR-BEGIN-LISTING${1:+ $1}"
  find "$R" -xdev -exec stat -c 'S|%f|%u|%g|%s|%h|%Y|%n' {} +
  find "$R" -xdev -type l | while IFS= read -r _p; do
    echo "L|$_p"
    echo "T|$(readlink "$_p")"
  done
  find "$R" -xdev -type f -exec sha256sum {} + | sed 's/^/H|/'
  echo GR-END-LISTING
  echo 4 > /proc/sys/kernel/printk
}

# gr_snapshot LABEL: sync, pause at `snap-LABEL` (the host notes how far
# the trace has got), then print a labelled listing of the whole file
# system in the middle of a workload, and an `OP snapshot LABEL` line.
# LABEL: letters, digits, `-` and `_`.
gr_snapshot() {
  sync
  gr_pace "snap-$1"
  gr_listing "$1"
  gr_op snapshot "$1"
}
