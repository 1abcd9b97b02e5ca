"""Thousands of actors on one node: how many come up, how many are refused, and what
each costs the driver.

    .venv/bin/python benchmarks/many_actors_probe.py [--actors 2000] [--backend ray]

Creates ``--actors`` actors of the plainest kind at once (``@remote class A: def
ping(self): return 1``, one process each), pings every one of them, and prints:
actors up (answered), refused (`ActorOutOfMemoryError`: the node's memory check,
``actorcore/node/worker_pool/_memory.py``), failed otherwise (by error type), the
driver's anonymous memory (``RssAnon``) per actor handle, its total RSS (with the
store's shared memory it maps), the node process's anonymous memory per actor, the
machine's memory in use at the peak (``MemTotal - MemAvailable``, sampled by a
thread), the wall clock, and the node's start-queue figures. A line
``RESULT {json}`` carries the same for scripts.

This is a hostile probe: on a 24 GB machine 2,000 actor processes fill the memory
(that is the point), so run it on a machine nobody else needs for a few minutes, or
lower the threshold (``ACTORCORE_MEMORY_USAGE_THRESHOLD=0.6``) to be a good
neighbour. ``--backend ray`` runs the same against Ray (``$RAY_PYTHON``), whose
memory monitor kills workers instead of refusing starts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _status_kib(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _memory_used() -> tuple[int, int]:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]


class PeakMemory:
    """The machine's memory in use at its highest, sampled every 50 ms by a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self.total = _memory_used()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _memory_used()[0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(backend: str, n: int, timeout: float) -> dict:
    if backend == "ray":
        import ray

        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        node_pid = None
    else:
        sys.path.insert(0, str(HERE.parent))
        import actorcore as ray

        info = ray.init(log_to_driver=False)
        node_pid = int(Path(info["session_dir"], "node.pid").read_text().split()[0])

    @ray.remote
    class A:
        def ping(self):
            return 1

    warm = A.remote()  # the first actor's costs (imports, zygote) are not per actor
    ray.get(warm.ping.remote(), timeout=120)
    used0, total = _memory_used()
    anon0, rss0 = _status_kib("RssAnon"), _status_kib("VmRSS")
    node0 = _status_kib("RssAnon", node_pid) if node_pid else 0
    peak = PeakMemory()
    t0 = time.perf_counter()
    actors = [A.remote() for _ in range(n)]
    refs = [a.ping.remote() for a in actors]
    ray.wait(refs, num_returns=len(refs), timeout=timeout)
    wall = time.perf_counter() - t0
    outcomes: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    for ref in refs:
        try:
            ray.get(ref, timeout=0.5)
            outcomes["up"] += 1
        except Exception as exc:  # noqa: BLE001 - the probe counts every kind
            name = type(exc).__name__
            if name in ("ActorOutOfMemoryError", "OutOfMemoryError"):
                name = "refused"
            outcomes[name] += 1
            examples.setdefault(name, str(exc).splitlines()[0][:400])
    peak.stop()
    anon1, rss1 = _status_kib("RssAnon"), _status_kib("VmRSS")
    node1 = _status_kib("RssAnon", node_pid) if node_pid else 0
    result = {
        "backend": backend,
        "actors": n,
        "up": outcomes.pop("up", 0),
        "refused": outcomes.pop("refused", 0),
        "other": dict(outcomes),
        "wall_s": round(wall, 1),
        "driver_anon_kib_per_actor": round((anon1 - anon0) / n, 1),
        "driver_rss_mib": round(rss1 / 1024, 1),
        "node_anon_kib_per_actor": round((node1 - node0) / n, 1) if node_pid else None,
        "driver_rss_before_mib": round(rss0 / 1024, 1),
        "machine_used_before_gb": round(used0 / 1e9, 2),
        "machine_used_peak_gb": round(peak.peak / 1e9, 2),
        "machine_total_gb": round(total / 1e9, 2),
        "load": os.getloadavg(),
        "examples": examples,
    }
    if backend == "actorcore":
        from actorcore import _api

        st = _api._call("status")["actors"]
        result.update(memory_refused=getattr(st, "memory_refused", "n/a"), starting_peak=st.starting_peak,
                      queued_peak=st.queued_peak)
    ray.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every ping (default 900)")
    parser.add_argument("--backend", choices=("actorcore", "ray"), default="actorcore")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend == "ray" and not args.child:
        python = os.environ.get("RAY_PYTHON", "/tmp/rayenv/bin/python")
        subprocess.run([python, __file__, "--child", "--backend", "ray",
                        "--actors", str(args.actors), "--timeout", str(args.timeout)],
                       check=False)
        return
    r = run(args.backend, args.actors, args.timeout)
    print(f"{r['backend']}: {r['actors']} actors created at once, each pinged "
          f"({r['wall_s']} s, load {r['load'][0]:.1f})")
    print(f"  up: {r['up']}   refused (out of memory): {r['refused']}   "
          f"other failures: {r['other'] or 0}")
    for name, text in r["examples"].items():
        print(f"  e.g. {name}: {text}")
    print(f"  driver: {r['driver_anon_kib_per_actor']} KiB of anonymous memory per actor, "
          f"RSS {r['driver_rss_before_mib']} -> {r['driver_rss_mib']} MiB")
    if r["node_anon_kib_per_actor"] is not None:
        print(f"  node: {r['node_anon_kib_per_actor']} KiB of anonymous memory per actor")
    print(f"  machine: {r['machine_used_before_gb']} GB in use before, "
          f"{r['machine_used_peak_gb']} GB at the peak, of {r['machine_total_gb']} GB")
    if "memory_refused" in r:
        print(f"  node: {r['memory_refused']} actor processes refused; at most "
              f"{r['starting_peak']} starting and {r['queued_peak']} queued at once")
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
