"""The nested tree of 73 tasks alone: its time, and its CPU per process, from ``/proc``.

    .venv/bin/python benchmarks/nested_bench.py [--trees 30] [--rounds 3] [--fanout 8]

``runtime_bench.py``'s case: a root task submits ``fanout`` tasks that each submit
``fanout`` leaves, blocking in ``get`` at each level (1 + 8 + 64 = 73 tasks). The
cluster is the benchmarks' (2 CPUs); one warm-up tree first, then per round
``trees`` trees one after the other, each timed alone. For each round: the median
and range of a tree's wall time, and the CPU time (user + system, clock ticks) that
the driver, the node and the workers spent per tree; then the medians over rounds.
On a loaded machine the wall clock swings with the other processes, the CPU per
tree less: for A/B runs, run it alternately in two checkouts (it imports the
checkout it sits in) or with an ``ACTORCORE_*`` switch set and unset.
``--threads`` also prints the CPU per tree of each thread of the busiest processes.
``--ray`` runs the same tree on Ray instead (run it with Ray's interpreter,
``$RAY_PYTHON``): its "node" is the raylet, the rest of its processes count as
workers, and it has no lease figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import process_tree, stat_cpu  # noqa: E402


def _threads(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        out[f"{name}:{tid}"] = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
    return out


def _scheduler(ray: Any) -> Any:
    """The node's ``SchedulerStatistics`` (leases granted and refused so far)."""
    return ray._api._call("status")["scheduler"]


def _raylet_pid(me: int) -> int:
    for pid in process_tree(me):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "raylet":
                    return pid
        except OSError:
            pass
    return -1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trees", type=int, default=30, help="trees per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fanout", type=int, default=8)
    p.add_argument("--threads", action="store_true")
    p.add_argument("--ray", action="store_true", help="run the tree on Ray")
    args = p.parse_args()

    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
    else:
        import actorcore as ray

        ray.init(num_cpus=2, log_to_driver=False)
    fanout = args.fanout

    @ray.remote
    def leaf():
        return 1

    @ray.remote
    def mid():
        return sum(ray.get([leaf.remote() for _ in range(fanout)]))

    @ray.remote
    def root():
        return sum(ray.get([mid.remote() for _ in range(fanout)]))

    expected = fanout * fanout
    assert ray.get(root.remote()) == expected  # the workers are up
    me = os.getpid()
    node_pid = _raylet_pid(me) if args.ray else ray.nodes()[0]["pid"]
    rows = []
    for r in range(args.rounds):
        pids = process_tree(me)
        sched0 = None if args.ray else _scheduler(ray)
        before = {pid: stat_cpu(f"/proc/{pid}/stat") for pid in pids}
        threads_before = {pid: _threads(pid) for pid in pids} if args.threads else {}
        times = []
        for _ in range(args.trees):
            t0 = time.perf_counter()
            assert ray.get(root.remote()) == expected
            times.append(time.perf_counter() - t0)
        after_pids = process_tree(me)
        per = {"driver": 0.0, "node": 0.0, "workers": 0.0}
        busiest = []
        for pid in after_pids:
            role = "driver" if pid == me else "node" if pid == node_pid else "workers"
            used = stat_cpu(f"/proc/{pid}/stat") - before.get(pid, 0.0)
            per[role] += used / args.trees * 1e3
            busiest.append((used, pid, role))
        total = sum(per.values())
        leases = ""
        if sched0 is not None:
            sched1 = _scheduler(ray)
            granted = (sched1.leases_granted - sched0.leases_granted) / args.trees
            refused = (sched1.leases_refused - sched0.leases_refused) / args.trees
            leases = f"; leases {granted:.1f} granted, {refused:.1f} refused per tree"
        med = statistics.median(times) * 1e3
        print(f"round {r + 1}: tree {med:6.1f} ms [{min(times) * 1e3:.1f}-"
              f"{max(times) * 1e3:.1f}]  CPU/tree {total:5.1f} ms (driver "
              f"{per['driver']:.1f}, node {per['node']:.1f}, workers {per['workers']:.1f}; "
              f"{len(after_pids) - 3} workers{leases})  load {os.getloadavg()[0]:.1f}", flush=True)
        if args.threads:
            busiest.sort(reverse=True)
            for used, pid, role in busiest[:6]:
                th = _threads(pid)
                old = threads_before.get(pid, {})
                parts = sorted(((v - old.get(k, 0.0)) / args.trees * 1e3, k)
                               for k, v in th.items())
                parts = [f"{k} {v:.1f}" for v, k in reversed(parts) if v > 0.05]
                print(f"    {role} {pid}: {used / args.trees * 1e3:.1f} ms: "
                      + ", ".join(parts))
        rows.append((med, total, per["driver"], per["node"], per["workers"]))
    ray.shutdown()
    cols = list(zip(*rows, strict=True))
    med = [statistics.median(c) for c in cols]
    print(f"medians: tree {med[0]:.1f} ms, CPU/tree {med[1]:.1f} ms (driver {med[2]:.1f}, "
          f"node {med[3]:.1f}, workers {med[4]:.1f})")


if __name__ == "__main__":
    main()
