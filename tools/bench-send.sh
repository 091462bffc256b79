#!/bin/sh
# Send and receive against a plain read of the same bytes, in one run (README, "Diff, send and
# receive"). On sparse files in $DIR (default /var/tmp/bench-send): rs:4+2 on six 1 GiB
# members, 1 GiB of random data written and frozen as recovery point `full`, then 1% of it
# rewritten and frozen as `next`. Each round, alternated, page cache dropped before each timed
# step when we may (root):
#   read     stripestore read --snapshot full of the 1 GiB to /dev/null (the baseline)
#   send     stripestore send --snapshot full to /dev/null
#   send-f   the same into a file (what receive reads)
#   write    stripestore write of the same 1 GiB into a fresh mirror:2 pool (receive's baseline)
#   receive  stripestore receive of that file into a fresh mirror:2 pool (2 x 4.6 GB: the volume must be at least the source's)
#   diff     snapshot diff --from full --to next
#   incr     send --snapshot next --from full into a file, and its receive
# Prints one line per step and round: seconds and MiB/s of the 1 GiB (or of the 10 MiB changed).
set -eu
S=${STRIPESTORE:-target/release/stripestore}
D=${DIR:-/var/tmp/bench-send}
ROUNDS=${ROUNDS:-3}
rm -rf "$D"
mkdir -p "$D"
drop() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
secs() { date +%s.%N; }
timed() { # name bytes command...
    name=$1; bytes=$2; shift 2
    drop
    t0=$(secs)
    "$@" > /dev/null 2>&1
    t1=$(secs)
    echo "$name $round $(echo "$t0 $t1 $bytes" | awk '{ d = $2 - $1; printf "%.2f s %.0f MiB/s", d, $3 / 1048576 / d }')"
}
head -c 1G /dev/urandom > "$D/data.bin"
"$S" create --layout rs:4+2 --device-size 1G --format 4 "$D"/s0 "$D"/s1 "$D"/s2 "$D"/s3 "$D"/s4 "$D"/s5 > /dev/null
"$S" write "$D/s0" --offset 0 --input "$D/data.bin" > /dev/null
"$S" snapshot create "$D/s0" --name full > /dev/null
head -c 10M /dev/urandom > "$D/change.bin"
"$S" write "$D/s0" --offset 100M --input "$D/change.bin" > /dev/null
"$S" snapshot create "$D/s0" --name next > /dev/null
G=1073741824
M=10485760
round=1
while [ "$round" -le "$ROUNDS" ]; do
    timed read $G "$S" read "$D/s0" --offset 0 --length 1G --snapshot full --output /dev/null
    timed send $G "$S" send "$D/s0" --snapshot full --output /dev/null
    timed send-f $G "$S" send "$D/s0" --snapshot full --output "$D/full.stream"
    rm -f "$D"/t0 "$D"/t1
    "$S" create --layout mirror:2 --device-size 4600M --format 4 "$D/t0" "$D/t1" > /dev/null
    timed write $G "$S" write "$D/t0" --offset 0 --input "$D/data.bin"
    rm -f "$D"/t0 "$D"/t1
    "$S" create --layout mirror:2 --device-size 4600M --format 4 "$D/t0" "$D/t1" > /dev/null
    timed receive $G "$S" receive "$D/t0" --input "$D/full.stream"
    timed diff $M "$S" snapshot diff "$D/s0" --from full --to next
    timed incr-send $M "$S" send "$D/s0" --snapshot next --from full --output "$D/next.stream"
    timed incr-receive $M "$S" receive "$D/t0" --input "$D/next.stream"
    round=$((round + 1))
done
ls -l "$D/full.stream" "$D/next.stream" | awk '{ print "stream", $9, $5 }'
rm -rf "$D"
