"""Worker start: forked from the node's zygote beside spawned (``python -m ...``).

    .venv/bin/python benchmarks/worker_start_bench.py [--quick] [--rounds N]

Each mode runs in a fresh driver process of its own, alternating (spawn, fork,
spawn, fork, ...), with ``ACTORCORE_WORKER_ZYGOTE=0`` for spawn and ``1`` (the
default) for fork, so machine load hits both alike. Per run:

- startup to first result: ``init()`` and one task's result, from the driver's
  start (its own imports excluded);
- worker CPU to ready: the CPU seconds an actor's process spent before its first
  call ran (``time.process_time()`` there: a forked child starts at zero, a spawned
  one pays its imports), median over the actors of the one-at-a-time case;
- actor creation, one at a time: create an actor, wait for one call, next (8, and
  100 without ``--quick``); per actor, the median;
- actor creation in parallel: create N actors, then wait for one call of each;
- memory per actor: the mean PSS of those N actor processes (a forked worker's
  pages shared with the zygote and its siblings count by their share).

In fork mode the actors are created once the zygote is ready (the first workers of
a node are spawned while it imports, see ``node.worker_pool._zygote``); the number
of forked and spawned starts is printed for each run.
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

HERE = Path(__file__).resolve().parent


def run_one(counts: list[int]) -> dict:
    t0 = time.perf_counter()
    sys.path.insert(0, str(HERE.parent))
    import actorcore as ray

    t_imported = time.perf_counter()
    ray.init(num_cpus=2, log_to_driver=False)

    @ray.remote
    def one() -> int:
        return 1

    ray.get(one.remote(), timeout=120)
    first = time.perf_counter() - t_imported

    def pool() -> dict:
        node = ray.tree()["children"][0]
        return next(c for c in node["children"] if c["name"] == "worker_pool")

    def zygote() -> dict | None:
        return next((c for c in pool()["children"] if c["kind"] == "zygote"), None)

    z = zygote()
    if z is not None:
        deadline = time.monotonic() + 120
        while (z := zygote()) is not None and z["state"] != "running":
            assert time.monotonic() < deadline, z
            time.sleep(0.05)

    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self) -> None:
            self.cpu = time.process_time()

        def ready_cpu(self) -> float:
            return self.cpu

        def pid(self) -> int:
            return os.getpid()

    out: dict = {"startup_to_first_result_s": first, "driver_import_s": t_imported - t0}
    for n in counts:
        times, cpus, actors = [], [], []
        for _ in range(n):
            t = time.perf_counter()
            a = Probe.remote()
            cpus.append(ray.get(a.ready_cpu.remote(), timeout=300))
            times.append(time.perf_counter() - t)
            actors.append(a)
        out[f"serial_{n}_total_s"] = sum(times)
        out[f"serial_{n}_median_s"] = statistics.median(times)
        out[f"worker_cpu_to_ready_{n}_s"] = statistics.median(cpus)
        for a in actors:
            ray.kill(a)
        t = time.perf_counter()
        actors = [Probe.remote() for _ in range(n)]
        ray.get([a.ready_cpu.remote() for a in actors], timeout=600)
        out[f"parallel_{n}_total_s"] = time.perf_counter() - t
        pids = ray.get([a.pid.remote() for a in actors], timeout=600)
        out[f"pss_per_actor_{n}_mb"] = statistics.mean(_pss_kb(p) for p in pids) / 1024
        for a in actors:
            ray.kill(a)
    z = zygote()
    out["forked"] = z["forked"] if z else 0
    out["spawned"] = z["spawned"] if z else None
    ray.shutdown()
    return out


def _pss_kb(pid: int) -> int:
    """The proportional set size of ``pid``: its private pages, plus its share of the
    pages it shares (with the zygote and its siblings, for a forked worker)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8 actors only, one round")
    p.add_argument("--rounds", type=int, default=None, help="runs per mode (default 2, quick 1)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    counts = [8] if args.quick else [8, 100]
    if args.child:
        print("RESULT " + json.dumps(run_one(counts)), flush=True)
        return
    rounds = args.rounds or (1 if args.quick else 2)
    results: dict[str, list[dict]] = {"spawn": [], "fork": []}
    for _ in range(rounds):
        for mode in ("spawn", "fork"):
            env = dict(os.environ, ACTORCORE_WORKER_ZYGOTE="1" if mode == "fork" else "0")
            cmd = [sys.executable, __file__, "--child", mode] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            results[mode].append(json.loads(line[len("RESULT "):]))
            print(mode, results[mode][-1], flush=True)
    keys = [k for k in results["spawn"][0] if k not in ("forked", "spawned", "driver_import_s")]
    print(f"\n{'case':34} {'spawn':>16} {'fork':>16} {'spawn/fork':>11}")
    for k in keys:
        s = [r[k] for r in results["spawn"]]
        f = [r[k] for r in results["fork"]]
        print(f"{k:34} {_range(s):>16} {_range(f):>16} {min(s) / max(f):5.1f}-{max(s) / min(f):.1f}x")
    print("starts (forked/spawned) in fork runs:",
          [(r["forked"], r["spawned"]) for r in results["fork"]])


def _range(xs: list[float]) -> str:
    return f"{min(xs):.3f}-{max(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


if __name__ == "__main__":
    main()
