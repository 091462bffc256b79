#!/bin/sh
# Issue 13's 16 TiB figures for a whole pool, each from its own process (README, "Format
# version 4"): rs:4+2 on six sparse 4 TiB files in $DIR (default /var/tmp/bench-16t), the
# page cache dropped before each step when we may (root). Per round:
#   create   `create --format 4 --device-size 4T`: seconds, peak RSS, bytes it made the files hold
#   status   `status` (an open that only looks): seconds, peak RSS
#   write    `write` of 1 MiB of random data at 10 TiB (it flushes before it returns)
#   reopen   `read` of that 1 MiB in a new process (open, replay, read), compared byte for byte
#   w+f+r    write + reopen + read, the issue's "write + flush + reopen + read <= 2 s"
# Goals (issue 13): create <= 5 s and <= 1 GiB written; open <= 1 s; status peak RSS <= 256 MiB;
# write + flush + reopen + read <= 2 s. Needs GNU time (/usr/bin/time).
set -eu
S=${STRIPESTORE:-target/release/stripestore}
D=${DIR:-/var/tmp/bench-16t}
ROUNDS=${ROUNDS:-3}
drop() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
allocated() { du -B1 -c "$D"/m? | tail -1 | cut -f1; }
# timed NAME COMMAND...: prints NAME seconds peak-RSS-MiB (GNU time's %e and %M)
timed() {
    name=$1; shift
    drop
    /usr/bin/time -f "%e %M" -o "$D/time" "$@" > /dev/null 2> "$D/err" || { cat "$D/err" >&2; exit 1; }
    read -r secs kib < "$D/time"
    echo "$name $secs $kib" | awk '{ printf "%-8s %6.2f s  peak RSS %4.0f MiB", $1, $2, $3 / 1024 }'
}
mkdir -p "$D"
head -c 1M /dev/urandom > "$D/data.bin"
round=1
while [ "$round" -le "$ROUNDS" ]; do
    echo "round $round"
    rm -f "$D"/m?
    before=$(allocated 2> /dev/null || echo 0)
    c=$(timed create "$S" create --layout rs:4+2 --format 4 --device-size 4T --force \
        "$D"/m0 "$D"/m1 "$D"/m2 "$D"/m3 "$D"/m4 "$D"/m5)
    echo "  $c, $(( ($(allocated) - before) / 1024 )) KiB written"
    echo "  $(timed status "$S" status "$D/m0")"
    w=$(timed write "$S" write "$D/m0" --offset 10T --input "$D/data.bin")
    r=$(timed reopen "$S" read "$D/m0" --offset 10T --length 1M --output "$D/back.bin")
    echo "  $w"
    echo "  $r"
    cmp "$D/data.bin" "$D/back.bin"
    echo "$w $r" | awk '{ printf "  w+f+r    %6.2f s, read back byte-exact\n", $2 + $9 }'
    round=$((round + 1))
done
rm -f "$D"/m? "$D/back.bin"
