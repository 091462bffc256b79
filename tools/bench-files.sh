#!/usr/bin/env bash
# Sequential write and read through the stripestore command on real files, side by side with
# the raw baseline (dd of the same bytes to one file) in the same run. Prints MB/s and ratios.
# Usage: tools/bench-files.sh [LAYOUT] [DEVICE_SIZE] [RUNS]    e.g. tools/bench-files.sh rs:4+2 256M 5
set -euo pipefail
layout=${1:-rs:4+2}
size=${2:-256M}
runs=${3:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin="$here/target/release/stripestore"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/stripestore-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

case $layout in
  mirror:*) n=${layout#mirror:} ;;
  raid10:*) n=$(( 2 * ${layout#raid10:} )) ;;
  rs:*) k=${layout#rs:}; n=$(( ${k%+*} + ${k#*+} )) ;;
  *) echo "unknown layout $layout" >&2; exit 2 ;;
esac
devs=()
for i in $(seq 0 $((n - 1))); do devs+=("$work/d$i.img"); done
"$bin" create --layout "$layout" --device-size "$size" --force "${devs[@]}" >/dev/null
volume=$("$bin" status "${devs[0]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume_bytes"])')
mib=$(( volume / 1048576 / 2 ))
head -c $(( mib * 1048576 )) /dev/urandom > "$work/input"

rate() { python3 -c "import sys; print(f'{$1 / 1048576 / $2:.0f}')"; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f (min %.0f, max %.0f)", m, a[1], a[NR]}'; }
bytes=$(( mib * 1048576 ))
raw_w=(); pool_w=(); raw_r=(); pool_r=()
for run in $(seq "$runs"); do
  sync; t0=$(date +%s.%N)
  dd if="$work/input" of="$work/raw.img" bs=8M conv=fdatasync status=none
  t1=$(date +%s.%N); raw_w+=("$(rate $bytes "$(echo "$t1 - $t0" | bc)")")
  sync; t0=$(date +%s.%N)
  "$bin" write "${devs[0]}" --offset 0 --input "$work/input"  2>/dev/null
  t1=$(date +%s.%N); pool_w+=("$(rate $bytes "$(echo "$t1 - $t0" | bc)")")
  t0=$(date +%s.%N)
  dd if="$work/raw.img" of=/dev/null bs=8M status=none
  t1=$(date +%s.%N); raw_r+=("$(rate $bytes "$(echo "$t1 - $t0" | bc)")")
  t0=$(date +%s.%N)
  "$bin" read "${devs[0]}" --offset 0 --length $bytes > /dev/null
  t1=$(date +%s.%N); pool_r+=("$(rate $bytes "$(echo "$t1 - $t0" | bc)")")
done
echo "layout $layout, $runs runs of $mib MiB (page cache warm for reads), MiB/s median (min, max):"
echo "  raw dd write+fdatasync : $(printf '%s\n' "${raw_w[@]}" | median)"
echo "  stripestore write+flush: $(printf '%s\n' "${pool_w[@]}" | median)"
echo "  raw dd read            : $(printf '%s\n' "${raw_r[@]}" | median)"
echo "  stripestore read       : $(printf '%s\n' "${pool_r[@]}" | median)"
