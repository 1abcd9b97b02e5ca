"""Start-up to the first result: where the time goes, and a loop of fresh start-ups.

``python benchmarks/startup_bench.py --timeline``
    One start-up of ``import actorcore as ray; ray.init(); ray.get(f.remote())`` in a
    fresh driver process, watched from outside: every process of its tree is polled
    in ``/proc`` each millisecond or so (its start time, its title as it changes, its
    CPU time, its exit), and the driver prints its own marks (import done, ``init``
    returned, first result). The table lists each process with the time it was first
    seen, the times its title changed (``ac_zygote``: the zygote finished its
    imports; ``ac_worker_N``: a forked worker), and the CPU it used until the first
    result. Times are from the driver's start.

``python benchmarks/startup_bench.py --loop N [--env NAME=VALUE ...] [--ray]``
    N fresh start-ups, alternating the configurations given (each ``--env`` list is
    one configuration: ``--env ACTORCORE_WORKER_ZYGOTE=0 --env ''`` alternates the
    zygote off and on), then Ray's when ``--ray`` is given (``RAY_PYTHON``, default
    ``/tmp/rayenv/bin/python``). Prints min, median and max of the wall clock to the
    first result, and the CPU of the whole process tree (driver and every
    descendant, from ``/proc``) over the same span. Under load, compare medians and
    CPU: the wall clock swings.

Each run uses ``ACTORCORE_TMPDIR`` from the environment (set it apart from other
users of the machine).
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
ROOT = HERE.parent
TICKS = os.sysconf("SC_CLK_TCK")

_DRIVER = r"""
import json, os, sys, time
marks = {{"start": time.time()}}
import {module} as ray
marks["imported"] = time.time()
ray.init({init_args})
marks["init"] = time.time()
@ray.remote
def f():
    return os.getpid()
pid = ray.get(f.remote())
marks["first_result"] = time.time()
marks["worker_pid"] = pid
marks["cpu"] = time.process_time()
# Held until the watcher has read the tree's CPU (it closes our stdin).
sys.stdout.write(json.dumps(marks) + "\n")
sys.stdout.flush()
sys.stdin.read()
ray.shutdown()
"""

DRIVER = _DRIVER.format(module="actorcore", init_args="num_cpus=2")
RAY_DRIVER = _DRIVER.format(module="ray", init_args="num_cpus=2, include_dashboard=False")


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def _stat(pid: int) -> tuple[int, str, float, float] | None:
    """(ppid, comm, cpu seconds, start time since boot in seconds) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    comm = data[data.index("(") + 1:data.rindex(")")]
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    return (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / TICKS,
            int(fields[19]) / TICKS)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [p.decode(errors="replace") for p in parts if p]
    if "-m" in words:
        return words[words.index("-m") + 1]
    if "-c" in words:
        return "driver"
    return " ".join(words[:2])[-60:]


def _descendants(root: int) -> dict[int, tuple[int, str, float, float]]:
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                stats[int(name)] = s
    tree = {root}
    changed = True
    while changed:
        changed = False
        for pid, s in stats.items():
            if pid not in tree and s[0] in tree:
                tree.add(pid)
                changed = True
    return {pid: stats[pid] for pid in tree if pid in stats}


def run_once(python: str, code: str, env: dict[str, str], watch: bool) -> dict:
    """One start-up: the driver's marks, the tree's CPU until the first result and,
    with ``watch``, each process's timeline."""
    start = time.time()
    proc = subprocess.Popen([python, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, cwd="/tmp")
    boot = _boot_time()
    seen: dict[int, dict] = {}
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while b"\n" not in buf:
        if proc.poll() is not None:
            raise RuntimeError(f"the driver exited with code {proc.returncode}")
        try:
            chunk = proc.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
        if watch:
            now = time.time() - start
            for pid, (ppid, comm, cpu, started) in _descendants(proc.pid).items():
                entry = seen.get(pid)
                if entry is None:
                    entry = seen[pid] = {
                        "pid": pid, "ppid": ppid, "what": _cmdline(pid),
                        "started": boot + started - start, "seen": now, "titles": [],
                    }
                if not entry["titles"] or entry["titles"][-1][0] != comm:
                    entry["titles"].append((comm, now))
                entry["cpu"] = cpu
            time.sleep(0.001)
        else:
            time.sleep(0.005)
    marks = json.loads(buf.split(b"\n")[0])
    tree = _descendants(proc.pid)
    tree_cpu = sum(s[2] for s in tree.values())
    proc.stdin.close()
    proc.wait(60)
    result = {
        "first_result_s": marks["first_result"] - marks["start"],
        "import_s": marks["imported"] - marks["start"],
        "init_s": marks["init"] - marks["imported"],
        "task_s": marks["first_result"] - marks["init"],
        "tree_cpu_s": tree_cpu,
        "processes": len(tree),
    }
    if watch:
        for pid, s in tree.items():
            if pid in seen:
                seen[pid]["cpu"] = s[2]
        result["timeline"] = sorted(seen.values(), key=lambda e: e["started"])
        result["marks"] = {k: v - marks["start"] for k, v in marks.items()
                           if k not in ("worker_pid", "cpu", "start")}
        result["driver_start"] = marks["start"] - start
        result["worker_pid"] = marks["worker_pid"]
    return result


def print_timeline(result: dict) -> None:
    print(f"driver marks (s from the driver's first line, which ran "
          f"{result['driver_start']:.3f} s after the exec):")
    for name, at in result["marks"].items():
        print(f"  {name:<14} {at:7.3f}")
    print(f"\n{'pid':>7} {'ppid':>7}  {'process':<34} {'start':>7} {'cpu':>6}  titles (s)")
    for e in result["timeline"]:
        titles = ", ".join(f"{c}@{t:.3f}" for c, t in e["titles"])
        mark = "  <- ran the first task" if e["pid"] == result["worker_pid"] else ""
        print(f"{e['pid']:>7} {e['ppid']:>7}  {e['what']:<34} {e['started']:7.3f} "
              f"{e.get('cpu', 0):6.2f}  {titles}{mark}")
    print(f"\ntree CPU until the first result: {result['tree_cpu_s']:.2f} s in "
          f"{result['processes']} processes; first result at {result['first_result_s']:.3f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--timeline", action="store_true")
    p.add_argument("--loop", type=int, default=0, help="start-ups per configuration")
    p.add_argument("--env", action="append", default=[],
                   help="one configuration: NAME=VALUE[,NAME=VALUE...] ('' for none)")
    p.add_argument("--ray", action="store_true", help="Ray's start-up in the same loop")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    base = dict(os.environ)
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [base.get("PYTHONPATH")])])
    subprocess.run([args.python, "-m", "compileall", "-q", "actorcore", "transport", "store",
                    "gcs"], cwd=str(ROOT), check=True, stdout=subprocess.DEVNULL)
    configs: list[tuple[str, str, str, dict[str, str]]] = []
    for spec in args.env or [""]:
        env = dict(base)
        for item in filter(None, spec.split(",")):
            name, _, value = item.partition("=")
            env[name] = value
        configs.append((spec or "default", args.python, DRIVER, env))
    if args.ray:
        ray_python = os.environ.get("RAY_PYTHON", "/tmp/rayenv/bin/python")
        configs.append(("ray", ray_python, RAY_DRIVER, dict(os.environ)))
    if args.timeline:
        for name, python, code, env in configs:
            print(f"== {name}")
            print_timeline(run_once(python, code, env, watch=True))
        return
    results: dict[str, list[dict]] = {name: [] for name, *_ in configs}
    for i in range(args.loop):
        for name, python, code, env in configs:
            r = run_once(python, code, env, watch=False)
            results[name].append(r)
            print(f"{i:3} {name:<36} first result {r['first_result_s']:6.3f} s "
                  f"(import {r['import_s']:.3f}, init {r['init_s']:.3f}, task {r['task_s']:.3f})"
                  f"  tree CPU {r['tree_cpu_s']:.2f} s", flush=True)
    print(f"\nload average: {os.getloadavg()}")
    print(f"{'configuration':<36} {'min':>7} {'median':>7} {'max':>7}   tree CPU median")
    for name, rs in results.items():
        walls = [r["first_result_s"] for r in rs]
        cpus = [r["tree_cpu_s"] for r in rs]
        print(f"{name:<36} {min(walls):7.3f} {statistics.median(walls):7.3f} "
              f"{max(walls):7.3f}   {statistics.median(cpus):.2f} s")


if __name__ == "__main__":
    main()
