#!/usr/bin/env bash
# Sequential 1 MiB reads (depth 8) and random 4 KiB reads (depth 16) over NBD, several builds
# alternated on the same pool, with a raw bound in each round: a pool of LAYOUT on preallocated
# 1 GiB files (in a temporary directory under ${TMPDIR:-/var/tmp}) filled with 768 MiB by fio's
# `nbd` engine, and a separate 1 GiB file written whole for the raw figure. Per round and build:
# page cache dropped (as root), fio `io_uring` direct on the raw file (1 MiB, depth 8), then
# `serve --socket` and fio's `nbd` engine; the server's CPU time (from /proc/PID/stat) and the
# machine's context switches (/proc/stat) over each run. One line per measurement.
# Usage: tools/ab-nbd-seq.sh LAYOUT ROUNDS BINARY...   (LAYOUT: mirror:2, raid10:2 or rs:4+2)
set -euo pipefail
layout=$1
rounds=$2
shift 2
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done
case $layout in mirror:2) n=2 ;; raid10:2) n=4 ;; rs:4+2) n=6 ;; *) echo "layout?" >&2; exit 2 ;; esac
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ab-nbd-seq.XXXXXX")
trap 'rm -rf "$work"' EXIT
sock=$work/s.sock
files=()
for i in $(seq 0 $((n - 1))); do fallocate -l 1G "$work/d$i"; files+=("$work/d$i"); done
span=768M
serve() {
    rm -f "$sock"
    "$1" serve --socket "$sock" "${files[@]}" >"$work/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
}
stop() { kill -INT "$server"; wait "$server" || true; }
nbdfio() { fio --name=j --ioengine=nbd --uri="nbd+unix:///?socket=$sock" "$@" --output-format=json 2>/dev/null; }
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
ctx() { awk '/^ctxt/ {print $2}' /proc/stat; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
parse() {
    python3 -c '
import json, sys
text = sys.stdin.read()
job = json.loads(text[text.index("{"):])["jobs"][0]["read"]
p = job["clat_ns"]["percentile"]
print("%.0f MiB/s %.0f IOPS p50 %.0f p99 %.0f us" % (job["bw"] / 1024, job["iops"], p["50.000000"] / 1000, p["99.000000"] / 1000), end="")'
}
measure() {
    local what=$1
    shift
    local c0 x0 out c1 x1
    c0=$(cpu); x0=$(ctx)
    out=$(nbdfio "$@" --size=$span --time_based --runtime=5)
    c1=$(cpu); x1=$(ctx)
    echo "$(date +%T) $build $what: $(echo "$out" | parse) server cpu $(((c1 - c0) / 5))% ctx/s $(((x1 - x0) / 5))"
}
"${bins[0]}" create --layout "$layout" "${files[@]}" >/dev/null
serve "${bins[0]}"
nbdfio --rw=write --bs=1M --iodepth=8 --size=$span >/dev/null
stop
fio --name=w --ioengine=io_uring --direct=1 --filename="$work/raw" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null
for _ in $(seq "$rounds"); do
    for bin in "${bins[@]}"; do
        build=$(basename "$bin")
        drop
        echo "$(date +%T) raw seq: $(fio --name=r --ioengine=io_uring --direct=1 --filename="$work/raw" --rw=read --bs=1M --iodepth=8 --size=$span --time_based --runtime=4 --output-format=json 2>/dev/null | parse)"
        serve "$bin"
        drop
        measure seq --rw=read --bs=1M --iodepth=8
        measure 4k --rw=randread --bs=4k --iodepth=16
        stop
    done
done
