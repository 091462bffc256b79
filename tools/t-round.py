#!/usr/bin/env python3
# Usage: tools/t-round.py DIR   (DIR on the disk under test; writes seven 1 GiB preallocated files there)
# t_round (docs/FORMAT.md V4.14 open question 1): wall time of one flush round over six
# preallocated member files after 12 x 16 KiB writes spread over them, the members flushed in
# parallel (one thread each), against raw: one preallocated file, 32 x 4 KiB writes, one fdatasync.
import os, random, statistics, sys, threading, time
d = sys.argv[1]
size = 1 << 30
def prealloc(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, size)
    os.fsync(fd)
    return fd
fds = [prealloc(f"{d}/m{i}") for i in range(6)]
raw = prealloc(f"{d}/raw")
buf16 = os.urandom(16384)
buf4 = os.urandom(4096)
def one_round():
    # 12 writes of 16 KiB: two per member
    for i, fd in enumerate(fds):
        for _ in range(2):
            os.pwrite(fd, buf16, random.randrange(0, size // 16384) * 16384)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=os.fdatasync, args=(fd,)) for fd in fds]
    for t in ts: t.start()
    for t in ts: t.join()
    return time.perf_counter() - t0
def raw_round():
    for _ in range(32):
        os.pwrite(raw, buf4, random.randrange(0, size // 4096) * 4096)
    t0 = time.perf_counter()
    os.fdatasync(raw)
    return time.perf_counter() - t0
for label, f in [("t_round six members", one_round), ("raw fsync", raw_round)] * 2:
    xs = [f() for _ in range(300)]
    xs.sort()
    print(f"{label}: median {statistics.median(xs)*1e3:.2f} ms, p10 {xs[30]*1e3:.2f}, p90 {xs[270]*1e3:.2f}")
