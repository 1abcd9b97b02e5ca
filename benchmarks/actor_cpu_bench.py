"""Where a 1:1 actor call's CPU goes: per process, from ``/proc``, beside its rate.

    .venv/bin/python benchmarks/actor_cpu_bench.py [--sync N] [--async N] [--rounds R] [--threads]

One driver, one threaded actor (``num_cpus=0``, an echo), calls after the direct link
is up. For each round: the rate, the CPU time (user + system, clock ticks) that the
driver, the actor's process, the node and the rest of the cluster spent per call, and
for sync calls the 10th, 50th and 90th percentile of one call's latency. Prints each
round and the medians. On a loaded machine the wall clock swings with the other
processes; CPU per call and the low latency percentiles swing less, which is what
this script is for (A/B runs: run it alternately in two checkouts, or with an
``ACTORCORE_*`` switch set and unset). ``--threads`` splits the driver's and the
actor's CPU per call between each process's main thread and its other threads (the
core loop's, mostly), from ``/proc/<pid>/task``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import process_tree, stat_cpu  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sync", type=int, default=2000, help="sync calls per round")
    p.add_argument("--async", dest="batch", type=int, default=6000,
                   help="calls per round submitted at once, then fetched")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", action="store_true",
                   help="the driver's and actor's CPU per call: main thread / other threads")
    args = p.parse_args()

    import actorcore as ray

    ray.init(num_cpus=2, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Echo:
        def f(self, x=None):
            return x

        def pid(self):
            return os.getpid()

    a = Echo.remote()
    ray.get([a.f.remote() for _ in range(200)])
    for _ in range(50):  # the direct link is up by now, and the actor's thread reads it
        ray.get(a.f.remote())
    me = os.getpid()
    roles = {me: "driver", ray.get(a.pid.remote()): "actor", ray.nodes()[0]["pid"]: "node"}
    summary: dict[str, list] = {}
    for mode, n in (("sync", args.sync), ("async", args.batch)):
        for r in range(args.rounds):
            pids = process_tree(me)
            before = {pid: stat_cpu(f"/proc/{pid}/stat") for pid in pids}
            split = {pid: _main_thread_cpu(pid) for pid, role in roles.items()
                     if role in ("driver", "actor")} if args.threads else {}
            lat: list[float] = []
            t0 = time.perf_counter()
            if mode == "sync":
                clock = time.perf_counter
                for _ in range(n):
                    s0 = clock()
                    ray.get(a.f.remote())
                    lat.append(clock() - s0)
            else:
                ray.get([a.f.remote() for _ in range(n)])
            wall = time.perf_counter() - t0
            per: dict[str, float] = {"driver": 0.0, "actor": 0.0, "node": 0.0, "other": 0.0}
            for pid in pids:
                per[roles.get(pid, "other")] += (stat_cpu(f"/proc/{pid}/stat") - before[pid]) / n * 1e6
            total = sum(per.values())
            line = (f"{mode:5} round {r + 1}: {n / wall:8,.0f}/s  CPU/call {total:5.0f} us "
                    f"(driver {per['driver']:.0f}, actor {per['actor']:.0f}, "
                    f"node {per['node']:.0f}, other {per['other']:.0f})")
            for pid, main0 in split.items():
                cpu = (stat_cpu(f"/proc/{pid}/stat") - before[pid]) / n * 1e6
                main_us = (_main_thread_cpu(pid) - main0) / n * 1e6
                line += f" [{roles[pid]} main {main_us:.0f} / others {cpu - main_us:.0f}]"
            row = [n / wall, total, per["driver"], per["actor"], per["node"]]
            if lat:
                lat.sort()
                pct = [lat[n // 10] * 1e6, lat[n // 2] * 1e6, lat[n * 9 // 10] * 1e6]
                line += f"  latency p10/p50/p90 {pct[0]:.0f}/{pct[1]:.0f}/{pct[2]:.0f} us"
                row += pct
            print(line, flush=True)
            summary.setdefault(mode, []).append(row)
    ray.shutdown()
    names = ["rate/s", "CPU/call", "driver", "actor", "node", "p10", "p50", "p90"]
    for mode, rows in summary.items():
        cols = list(zip(*rows, strict=True))
        print(f"{mode:5} medians: " + ", ".join(
            f"{name} {statistics.median(col):,.0f}" for name, col in zip(names, cols, strict=False)))


def _main_thread_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s main thread (its task of the same id)."""
    return stat_cpu(f"/proc/{pid}/task/{pid}/stat")


if __name__ == "__main__":
    main()
