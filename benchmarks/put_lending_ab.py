"""A 100 MB put with blocks lent ahead and without, alternated in one driver.

    ROUNDS=8 .venv/bin/python benchmarks/put_lending_ab.py

Each round puts 100 MB three times with lending off (a ``create`` round trip before
each copy) and three times on (``store._core``, "Lending"; the order alternates
between rounds), freeing each before the next as ``runtime_bench.py`` does, and
copies 100 MB once (the floor). Prints the wall clock, the main thread's CPU, and
each put's wall clock beside its copy's (what the put waits for besides copying:
on a loaded machine the one figure the wall clock resolves).
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np

import actorcore as ray
from store import _client as sc

state = {"on": True}
take, soon = sc.StoreClient._take_lent, sc.StoreClient._lend_soon
sc.StoreClient._take_lent = lambda self, *a: take(self, *a) if state["on"] else None
sc.StoreClient._lend_soon = lambda self, *a: soon(self, *a) if state["on"] else None

copyw = []
_w = sc.StoreClient._write
def _write(self, *a):
    t0 = time.perf_counter()
    try:
        return _w(self, *a)
    finally:
        copyw.append((time.perf_counter() - t0) * 1e3)
sc.StoreClient._write = _write
extra = {"on": [], "off": []}
ray.init(num_cpus=2, log_to_driver=False)
big = np.random.randint(0, 255, 100_000_000, dtype=np.uint8)
dst = np.empty_like(big)
dst[:] = 1
small = ray.put(np.ones(1 << 20, dtype=np.uint8))
res = {"on": [], "off": [], "memcpy": []}
cpu = {"on": [], "off": [], "memcpy": []}
ROUNDS = int(os.environ.get("ROUNDS", "10"))
for r in range(ROUNDS + 1):
    for mode in ("on", "off") if r % 2 else ("off", "on"):
        state["on"] = mode == "on"
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.thread_time()
            ref = ray.put(big)
            t1, c1 = time.perf_counter(), time.thread_time()
            del ref
            if r:
                res[mode].append((t1 - t0) * 1e3)
                cpu[mode].append((c1 - c0) * 1e3)
                extra[mode].append((t1 - t0) * 1e3 - copyw[-1])
        t0, c0 = time.perf_counter(), time.thread_time()
        np.copyto(dst, big)
        t1, c1 = time.perf_counter(), time.thread_time()
        if r:
            res["memcpy"].append((t1 - t0) * 1e3)
            cpu["memcpy"].append((c1 - c0) * 1e3)
for k in ("memcpy", "off", "on"):
    v = sorted(res[k])
    print(f"{k:7} n={len(v)} wall median {statistics.median(v):7.2f} ms  p25 {v[len(v)//4]:7.2f}  min {v[0]:7.2f}  max {v[-1]:7.2f}; main-thread CPU median {statistics.median(cpu[k]):6.2f} ms")
m = statistics.median(res["memcpy"])
print(f"median put as share of median memcpy: off {m/statistics.median(res['off']):.0%}, on {m/statistics.median(res['on']):.0%}")
for k in ("off", "on"):
    v = sorted(extra[k])
    print(f"{k:4} put wall minus its copy's: median {statistics.median(v):6.2f} ms, p25 {v[len(v)//4]:6.2f}, p75 {v[3*len(v)//4]:6.2f}, min {v[0]:6.2f}, max {v[-1]:6.2f}")
ray.shutdown()
