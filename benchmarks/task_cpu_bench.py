"""Where a task's CPU goes: per process and per worker thread, from ``/proc``.

    .venv/bin/python benchmarks/task_cpu_bench.py [--sync N] [--burst N] [--rounds R]
                                                  [--strace]

One driver, a 2-CPU local cluster, a no-op task. Each round runs ``--sync`` tasks one
at a time (submit, ``get``) and then ``--burst`` tasks submitted at once and fetched
together. For each it prints the time per task and the CPU time (user + system,
clock ticks) per task of the driver, the node and the task workers, and of the
workers' threads: their main thread (where tasks run) and the others (the Trio
loop, mostly). The worker figures are per task *that worker ran* summed over the
workers, i.e. per task of the round. With ``--strace``, one more round of each kind
runs under ``strace -c -f`` attached to every worker, and the system calls per task
are printed by name. Medians of the rounds at the end. CPU per task moves less with
the machine's load than wall-clock time: compare two checkouts by alternating runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import process_tree, stat_cpu  # noqa: E402


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _snapshot(me: int, node_pid: int, workers: set[int]) -> dict[str, float]:
    out = {"driver": stat_cpu(f"/proc/{me}/stat"), "node": 0.0, "workers": 0.0,
           "w.main": 0.0, "w.other": 0.0, "rest": 0.0}
    for pid in process_tree(me):
        if pid == me:
            continue
        cpu = stat_cpu(f"/proc/{pid}/stat")
        if pid == node_pid:
            out["node"] += cpu
        elif pid in workers:
            out["workers"] += cpu
            main = stat_cpu(f"/proc/{pid}/task/{pid}/stat")
            out["w.main"] += main
            out["w.other"] += cpu - main
        else:
            out["rest"] += cpu
    return out


def _strace(pids: list[int], out: str) -> subprocess.Popen:
    args = ["strace", "-c", "-f", "-o", out]
    for pid in pids:
        args += ["-p", str(pid)]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return proc


def _strace_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3])
    return counts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sync", type=int, default=2000, help="sync tasks per round")
    p.add_argument("--burst", type=int, default=10_000, help="tasks per round submitted at once")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--strace", action="store_true", help="one more round of each under strace")
    args = p.parse_args()

    import actorcore as ray

    ray.init(num_cpus=2, log_to_driver=False)

    @ray.remote
    def noop(x=None):
        return x

    @ray.remote
    def pid():
        time.sleep(0.2)
        return os.getpid()

    @ray.remote
    def reads():
        try:
            from actorcore.worker._process import process_statistics
        except ImportError:
            return os.getpid(), 0
        stats = process_statistics()
        return os.getpid(), stats.tasks_read_by_thread if stats is not None else 0

    def read_by_threads() -> int:
        """Tasks the workers' main threads read themselves so far (where counted)."""
        seen: dict[int, int] = {}
        for _ in range(20):
            for w, n in ray.get([reads.remote() for _ in range(2)]):
                seen[w] = max(seen.get(w, 0), n)
            if len(seen) >= 2:
                break
        return sum(seen.values())

    workers = set(ray.get([pid.remote() for _ in range(2)]))
    ray.get([noop.remote(i) for i in range(2000)])
    for _ in range(200):
        ray.get(noop.remote())
    me = os.getpid()
    node_pid = ray.nodes()[0]["pid"]
    print(f"workers {sorted(workers)}; load {os.getloadavg()[0]:.1f}", flush=True)
    summary: dict[str, list] = {}

    from actorcore.core_worker._worker_state import current_core

    leased = getattr(current_core(), "leased", None)

    def pushed() -> int:
        return leased.statistics().tasks_pushed if leased is not None else 0

    def one(mode: str, n: int) -> float:
        t0 = time.perf_counter()
        if mode == "sync":
            for _ in range(n):
                ray.get(noop.remote())
        else:
            ray.get([noop.remote(i) for i in range(n)])
        return time.perf_counter() - t0

    # ``--sync 0`` or ``--burst 0`` leaves that kind out.
    modes = [(mode, n) for mode, n in (("sync", args.sync), ("burst", args.burst)) if n > 0]
    for r in range(args.rounds):
        for mode, n in modes:
            time.sleep(0.3)
            r0 = read_by_threads()
            time.sleep(0.3)
            c0, l0 = _snapshot(me, node_pid, workers), pushed()
            wall = one(mode, n)
            c1, l1 = _snapshot(me, node_pid, workers), pushed()
            r1 = read_by_threads()
            per = {k: (c1[k] - c0[k]) / n * 1e6 for k in c0}
            total = per["driver"] + per["node"] + per["workers"] + per["rest"]
            print(f"{mode:5} round {r + 1}: {wall / n * 1e6:6.0f} us/task  CPU/task {total:4.0f} us "
                  f"(driver {per['driver']:.0f}, node {per['node']:.0f}, workers "
                  f"{per['workers']:.0f} [main {per['w.main']:.0f}, other "
                  f"{per['w.other']:.0f}], rest {per['rest']:.0f}) by lease {(l1 - l0) / n:.0%}, read by a worker's thread {(r1 - r0) / n:.0%}  load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            summary.setdefault(mode, []).append(
                [wall / n * 1e6, total, per["driver"], per["node"], per["workers"],
                 per["w.main"], per["w.other"]])
    if args.strace:
        for mode, n in modes:
            out = f"/tmp/task_cpu_bench.strace.{os.getpid()}.{mode}"
            proc = _strace(sorted(workers), out)
            one(mode, n)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            counts = _strace_counts(out)
            total = sum(counts.values())
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
            print(f"{mode:5} strace: {total / n:.1f} syscalls per task in the workers: "
                  + ", ".join(f"{name} {c / n:.1f}" for name, c in top), flush=True)
    ray.shutdown()
    names = ["us/task", "CPU/task", "driver", "node", "workers", "w.main", "w.other"]
    for mode, rows in summary.items():
        cols = list(zip(*rows, strict=True))
        print(f"{mode:5} medians: " + ", ".join(
            f"{name} {statistics.median(col):,.0f}" for name, col in zip(names, cols, strict=True)))


if __name__ == "__main__":
    main()
