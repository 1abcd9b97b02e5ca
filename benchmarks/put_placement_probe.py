"""Where a driver's 100 MB puts land in the arena, and what each costs the driver.

    .venv/bin/python benchmarks/put_placement_probe.py

Runs `runtime_bench.py`'s put sequence (five memcpys of 100 MB, a 1 MB put, the
first 100 MB put, then five steady ones, each after a memcpy and freed before the
next) and prints, per put: the block it copied into (MiB from the arena's start, or
``create`` when no lent block fitted), its wall clock, the driver's CPU (all its
threads) and the driver's minor page faults. A put whose block lies outside the
pages the driver mapped ahead (`store.StoreClient.map_ahead`) shows ~1,500 faults
and 8-12 ms more CPU; the CPU and the faults are what a loaded machine leaves
readable. Run it with ``PYTHONPATH`` at another checkout to compare builds.
"""

from __future__ import annotations

import resource
import time

import numpy as np

import actorcore
from store import _lending

SIZE = 100 * 1000 * 1000
placed: list[str] = []
_take_lent = _lending.LendingClient._take_lent


def _recording_take_lent(self, object_id: bytes, need: int):
    lent = _take_lent(self, object_id, need)
    placed.append(f"{lent.offset >> 20} MiB" if lent is not None else "create")
    return lent


def main() -> None:
    _lending.LendingClient._take_lent = _recording_take_lent
    actorcore.init()

    @actorcore.remote
    def noop():
        return 1

    actorcore.get(noop.remote())
    big = np.random.randint(0, 255, SIZE, dtype=np.uint8)
    dst = np.empty_like(big)
    dst[:] = 1
    for _ in range(5):
        np.copyto(dst, big)
    rows = []

    def timed_put(label: str) -> None:
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0, c0 = time.perf_counter(), time.process_time()
        ref = actorcore.put(big)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before.ru_minflt
        rows.append((label, placed[-1], wall * 1e3, cpu * 1e3, faults))
        del ref

    small = actorcore.put(np.ones(1 << 20, dtype=np.uint8))
    timed_put("first")
    del small
    for i in range(1, 6):
        np.copyto(dst, big)
        timed_put(f"steady {i}")
    for label, where, wall, cpu, faults in rows:
        print(f"{label:>9}: block {where:>8}  {wall:7.1f} ms  CPU {cpu:5.1f} ms  "
              f"{faults:5d} faults")
    actorcore.shutdown()


if __name__ == "__main__":
    main()
