#!/usr/bin/env bash
# Throughput through NBD against direct library access to the same pool, in one run
# (benches/nbd.rs, criterion), then a summary: median, min-max of the samples, and the ratio
# NBD/direct of the medians for each workload.
# Usage: tools/bench-nbd.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cargo bench --bench nbd
python3 - "$here/target/criterion" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
rows = {}
for new in sorted(root.glob("*/*/*/new")):
    bench = json.loads((new / "benchmark.json").read_text())
    if bench["function_id"] not in ("direct", "nbd"):
        continue
    samples = json.loads((new / "sample.json").read_text())
    median = json.loads((new / "estimates.json").read_text())["median"]["point_estimate"]
    per_iter = sorted(t / n for t, n in zip(samples["times"], samples["iters"]))
    mib = bench["throughput"]["Bytes"] / 2**20
    rate = lambda ns: mib / (ns / 1e9)
    rows.setdefault(bench["group_id"], {})[bench["function_id"]] = (
        rate(median), rate(per_iter[-1]), rate(per_iter[0]))
print(f"\n{'workload':28} {'direct MiB/s (min-max)':>26} {'NBD MiB/s (min-max)':>26} {'ratio':>6}")
for group, sides in rows.items():
    if len(sides) != 2:
        continue
    cells = [f"{m:.0f} ({lo:.0f}-{hi:.0f})" for m, lo, hi in (sides["direct"], sides["nbd"])]
    print(f"{group:28} {cells[0]:>26} {cells[1]:>26} {sides['nbd'][0] / sides['direct'][0]:6.2f}")
PY
