"""A/B of the sync actor call between two checkouts, interleaved round by round.

    .venv/bin/python benchmarks/sync_ab.py --a /path/to/main --b . [--calls 500] [--pairs 40]

Why. On a loaded machine the CPU time of a call swings with what else runs: two
runs of the same code a minute apart differ by more than most changes we make. So
both checkouts run *at once*, each in a driver process of its own with its own
cluster and its echo actor (``num_cpus=0``, threaded, direct link up), and this
script has them take turns: A does ``--calls`` sync calls, then B, then B, then A,
and so on, ``--pairs`` times. Each turn is a fraction of a second, so both sides of
a pair see the same load, and the figure is the median of the per-pair ratios
beside each side's median.

Per turn, from ``/proc/<pid>/task/*/schedstat`` (nanoseconds on the CPU, summed over
the threads: no clock-tick rounding): the CPU time per call of the driver, of the
actor's process and of the node; and the 10th and 50th percentile of one call's
latency. The driver's interpreter is this one; each side imports its own checkout
(it runs with that checkout first on ``sys.path``, as its node and workers do).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _cpu_ns(pid: int) -> int:
    """Nanoseconds on the CPU of every thread of ``pid`` (0 if it is gone)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def serve(tree: str) -> None:
    """One side: a cluster and an echo actor; a turn of N sync calls per input line."""
    sys.path.insert(0, tree)
    import actorcore as ray

    ray.init(log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Echo:
        def f(self, x=None):
            return x

        def pid(self):
            return os.getpid()

    a = Echo.remote()
    ray.get([a.f.remote() for _ in range(200)])
    for _ in range(200):  # the direct link is up by now, and the actor's thread reads it
        ray.get(a.f.remote())
    pids = {"driver": os.getpid(), "actor": ray.get(a.pid.remote()),
            "node": ray.nodes()[0]["pid"]}
    print(json.dumps({"ready": ray.__file__}), flush=True)
    clock = time.perf_counter
    for line in sys.stdin:
        n = int(line)
        before = {role: _cpu_ns(pid) for role, pid in pids.items()}
        lat = []
        t0 = clock()
        for _ in range(n):
            s0 = clock()
            ray.get(a.f.remote())
            lat.append(clock() - s0)
        wall = clock() - t0
        per = {role: (_cpu_ns(pid) - before[role]) / n / 1e3 for role, pid in pids.items()}
        lat.sort()
        print(json.dumps({**per, "rate": n / wall, "p10": lat[n // 10] * 1e6,
                          "p50": lat[n // 2] * 1e6}), flush=True)
    ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True, help="checkout A (the baseline)")
    p.add_argument("--b", required=True, help="checkout B")
    p.add_argument("--calls", type=int, default=500, help="sync calls per turn")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    sides = {}
    base_tmp = os.environ.get("ACTORCORE_TMPDIR", "/tmp/actorcore-sessions")
    for name in ("a", "b"):
        tree = str(Path(getattr(args, name)).resolve())
        env = dict(os.environ, ACTORCORE_TMPDIR=f"{base_tmp}-ab{name}")
        proc = subprocess.Popen([sys.executable, __file__, "--a", "-", "--b", "-", "--serve", tree],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=tree, env=env)
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        print(f"{name.upper()}: {tree} (imports {ready['ready']})", flush=True)
        sides[name] = proc
    rows: dict[str, list[dict]] = {"a": [], "b": []}
    try:
        for i in range(args.pairs):
            for name in (("a", "b") if i % 2 == 0 else ("b", "a")):
                proc = sides[name]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"{args.calls}\n")
                proc.stdin.flush()
                rows[name].append(json.loads(proc.stdout.readline()))
    finally:
        for proc in sides.values():
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in sides.values():
            proc.wait(timeout=60)
    keys = ["driver", "actor", "node", "rate", "p10", "p50"]
    print(f"{args.pairs} pairs of {args.calls} sync calls; load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'per call':12}" + "".join(f"{k:>22}" for k in keys))
    for name in ("a", "b"):
        line = f"{name.upper() + ' median':12}"
        for k in keys:
            col = [r[k] for r in rows[name]]
            q = statistics.quantiles(col, n=4)
            line += f"{statistics.median(col):>10,.1f} [{q[0]:,.0f}-{q[2]:,.0f}]"
        print(line)
    line = f"{'B/A pairs':12}"
    for k in keys:
        ratios = [rb[k] / ra[k] for ra, rb in zip(rows["a"], rows["b"], strict=True) if ra[k] > 0]
        q = statistics.quantiles(ratios, n=4)
        line += f"{statistics.median(ratios):>10.3f} [{q[0]:.2f}-{q[2]:.2f}]"
    print(line)
    both = [(ra["driver"] + ra["actor"], rb["driver"] + rb["actor"])
            for ra, rb in zip(rows["a"], rows["b"], strict=True)]
    print(f"driver+actor CPU per call: A {statistics.median(x for x, _ in both):.1f} us, "
          f"B {statistics.median(y for _, y in both):.1f} us, "
          f"median pair ratio B/A {statistics.median(y / x for x, y in both):.3f}")


if __name__ == "__main__":
    main()
