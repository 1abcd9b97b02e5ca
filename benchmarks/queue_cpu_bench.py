"""Time and CPU per task as the queue grows: 10,000 tasks, then each N given, in one
cluster, each batch submitted at once and then fetched.

    .venv/bin/python benchmarks/queue_cpu_bench.py 100000 300000

For each batch it prints the wall time per task, the submitting alone, and the CPU
time per task of the driver, the node and the workers (``/proc``, utime + stime of
every process the driver started, by kind). CPU time is what a shared machine's load
moves least: a structure walked per task whose size grows with the queue shows as
CPU per task growing with N in the process that owns it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import actorcore as ray  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _descendants_cpu(root: int) -> dict[str, float]:
    """CPU seconds of every descendant of ``root``, summed by kind (node, workers, other)."""
    children: dict[int, list[tuple[int, float, str]]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            rest = (p / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        cpu = (int(rest[11]) + int(rest[12])) / _TICK
        children.setdefault(int(rest[1]), []).append((int(p.name), cpu, cmd))
    out: dict[str, float] = {}
    stack = [root]
    while stack:
        for pid, cpu, cmd in children.get(stack.pop(), []):
            kind = ("node" if "actorcore.node" in cmd else
                    "workers" if "worker" in cmd or "zygote" in cmd else "other")
            out[kind] = out.get(kind, 0.0) + cpu
            stack.append(pid)
    return out


def _cpu() -> dict[str, float]:
    return {"driver": time.process_time(), **_descendants_cpu(os.getpid())}


def main() -> None:
    sizes = [10_000] + [int(a) for a in sys.argv[1:]]
    ray.init(num_cpus=2, log_to_driver=False)

    @ray.remote
    def noop(x=None):
        return x

    ray.get(noop.remote(1))
    for count in sizes:
        time.sleep(1)  # the last batch's frees
        c0, t0 = _cpu(), time.perf_counter()
        refs = [noop.remote(i) for i in range(count)]
        t1 = time.perf_counter()
        ray.get(refs)
        t2, c1 = time.perf_counter(), _cpu()
        del refs
        cpu = {k: (c1[k] - c0.get(k, 0.0)) / count * 1e6 for k in c1}
        print(f"{count:>9,} tasks: wall {(t2 - t0) / count * 1e6:6.0f} us per task (submit "
              f"{(t1 - t0) / count * 1e6:4.0f}); CPU per task: "
              + ", ".join(f"{k} {v:.0f} us" for k, v in sorted(cpu.items()))
              + f"; all {sum(cpu.values()):.0f} us", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
