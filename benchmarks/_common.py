"""What the benchmarks share: start a backend in this process, run each backend in a
fresh process of its own (the side-by-side ``runtime_bench``, ``actor_bench``), and
read a process tree's CPU time from ``/proc`` (the ``*_cpu_bench`` and ``nested_bench``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

__all__ = ["init_backend", "process_tree", "run_backends", "stat_cpu"]

_TICK = os.sysconf("SC_CLK_TCK")

#: Where Ray's interpreter is looked for when ``$RAY_PYTHON`` is not set.
RAY_PYTHONS = ("/work/rayenv/bin/python", "/tmp/rayenv/bin/python")


def init_backend(backend: str) -> Any:
    """``init()`` a 2-CPU local cluster of ``backend`` ("ray" or "actorcore", this
    checkout's) with worker output kept from the driver; return the module."""
    if backend == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
    else:
        sys.path.insert(0, str(HERE.parent))
        import actorcore as ray

        ray.init(num_cpus=2, log_to_driver=False)
    return ray


def _compile_checkout() -> None:
    """Byte-compile this checkout's packages, as installing them would: Ray runs from
    the ``.pyc`` files pip wrote, while an editable checkout under
    ``PYTHONDONTWRITEBYTECODE=1`` (set in some shells and CI images) would compile
    every module from source in every process it starts, 150-200 ms of CPU each,
    which start-up and actor-creation figures would then measure."""
    import compileall

    for pkg in ("actorcore", "transport", "store", "gcs"):
        compileall.compile_dir(str(HERE.parent / pkg), quiet=1)


def run_backends(
    script: str, extra_args: list[str], *, quick: bool, no_ray: bool, timeout: float
) -> dict[str, dict]:
    """Run ``script --backend <name> <extra_args> [--quick]`` for actorcore (with this
    interpreter) and, unless ``no_ray`` or it is missing, Ray (``$RAY_PYTHON``, else
    the first of ``/work/rayenv/bin/python`` and ``/tmp/rayenv/bin/python`` that exists);
    return each backend's ``RESULT`` JSON line by name.
    A backend that prints none is reported with the tail of its output and left out."""
    results: dict[str, dict] = {}
    _compile_checkout()
    ray_python = os.environ.get("RAY_PYTHON") or next(
        (p for p in RAY_PYTHONS if os.path.exists(p)), RAY_PYTHONS[0])
    backends = [("actorcore", sys.executable)]
    if not no_ray and os.path.exists(ray_python):
        backends.append(("ray", ray_python))
    for name, python in backends:
        cmd = [python, script, "--backend", name, *extra_args]
        if quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            continue
        results[name] = json.loads(line[len("RESULT "):])
    return results


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it, from ``/proc`` (a process gone meanwhile
    leaves its children out)."""
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return seen


def stat_cpu(path: str) -> float:
    """User + system CPU seconds of the ``/proc/.../stat`` file at ``path`` (a
    process's or a thread's); 0.0 once it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError):
        return 0.0
