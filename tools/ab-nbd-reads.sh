#!/usr/bin/env bash
# Random 4 KiB reads over NBD, two builds alternated on the same pool, with the raw bound in
# the same run: a pool of LAYOUT on N preallocated 1 GiB files (in a temporary directory under
# ${TMPDIR:-/var/tmp}), written whole by fio's `nbd` engine (1 MiB, depth 8), then per round
# and build: `serve --socket`, fio's `nbd` engine reading random 4 KiB blocks at depth 16 for
# SECONDS, and the server's CPU time and context switches per read while it runs (`perf stat`,
# when perf is installed); after each round, fio `io_uring` direct on one member file at the
# same depth (the disk's bound for one member). One line per measurement: who, IOPS, p50 and
# p99 completion latency in microseconds, server CPU microseconds and context switches per read.
# Usage: tools/ab-nbd-reads.sh OLD_BINARY NEW_BINARY [LAYOUT] [N] [ROUNDS] [SECONDS]
set -euo pipefail
old=$(realpath "$1")
new=$(realpath "$2")
layout=${3:-rs:4+2}
members=${4:-6}
rounds=${5:-3}
seconds=${6:-5}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ab-nbd-reads.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
devices=()
for i in $(seq 0 $((members - 1))); do
    fallocate -l 1G "d$i"
    devices+=("d$i")
done
uri="nbd+unix:///?socket=$work/s.sock"
serve() { "$1" serve "${devices[@]}" --socket "$work/s.sock" >serve.log 2>&1 & server=$!; sleep 1.5; }
stop() { kill -INT "$server"; wait "$server" || true; }
summary() {
    python3 - "$@" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
read = json.loads(text[text.index("{"):])["jobs"][0]["read"]
pct = read["clat_ns"]["percentile"]
line = f"{sys.argv[2]:>5} {read['iops']:9.0f} IOPS  p50 {pct['50.000000'] / 1000:6.0f}  p99 {pct['99.000000'] / 1000:6.0f}"
if len(sys.argv) > 3:
    stat = {}
    for row in open(sys.argv[3]):
        cells = row.strip().split(",")
        if len(cells) > 2 and cells[0].replace(".", "").isdigit():
            stat[cells[2]] = float(cells[0])
    reads = read["iops"] * float(sys.argv[4])
    if reads and "task-clock" in stat:
        line += f"  cpu/read {stat['task-clock'] * 1000 / reads:5.1f} us  switches/read {stat.get('context-switches', 0) / reads:4.2f}"
print(line)
PY
}
"$new" create --layout "$layout" "${devices[@]}" --force >/dev/null
serve "$new"
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size=1G \
    --output-format=json --output=fill.json >/dev/null
stop
for round in $(seq 1 "$rounds"); do
    for who in old new; do
        binary=$old
        [ "$who" = new ] && binary=$new
        serve "$binary"
        fio --name=read --ioengine=nbd --uri="$uri" --rw=randread --bs=4k --iodepth=16 \
            --size=1G --time_based --runtime="$seconds" --output-format=json --output=read.json \
            >/dev/null &
        reader=$!
        if command -v perf >/dev/null 2>&1 && [ "$seconds" -ge 3 ]; then
            sleep 1
            window=$((seconds - 2))
            perf stat -e task-clock,context-switches -x, -o stat.txt -p "$server" -- sleep "$window" \
                >/dev/null 2>&1 || true
            wait "$reader"
            summary read.json "$who" stat.txt "$window"
        else
            wait "$reader"
            summary read.json "$who"
        fi
        stop
    done
    fio --name=raw --ioengine=io_uring --direct=1 --filename=d1 --rw=randread --bs=4k \
        --iodepth=16 --size=1G --time_based --runtime="$seconds" --output-format=json \
        --output=raw.json >/dev/null
    summary raw.json raw
done
