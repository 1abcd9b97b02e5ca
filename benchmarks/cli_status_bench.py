"""CPU of one ``actorcore status`` against a running cluster: the typed answer
(``status``, as the CLI asked before) against the plain one (``status_plain``).

Each run is a fresh process, as the CLI is (its imports count): it asks the node,
formats the lines the CLI prints, and exits; its user + system CPU is read from
``wait4``. The two kinds alternate, so both see the same load; medians, ranges and
the per-pair ratio are printed. Start a cluster first (``actorcore start --head``)::

    python benchmarks/cli_status_bench.py [--runs 20] [--address ADDR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_CHILD = """
import sys
from actorcore.cli import _cli
from actorcore.session._admin import admin_call
name, address = sys.argv[1], sys.argv[2] or None
st = admin_call(address, name)
if name == "status_plain":
    st = _cli._fields(st)
lines = _cli._status_lines(st)
print(len(lines))
"""


def _cpu(name: str, address: str) -> float:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, name, address],
                            stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{name}: the child failed ({proc.returncode})")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--address", default="")
    args = parser.parse_args()
    _cpu("status_plain", args.address)  # (warm: .pyc files, page cache)
    _cpu("status", args.address)
    typed, plain = [], []
    for _ in range(args.runs):
        typed.append(_cpu("status", args.address))
        plain.append(_cpu("status_plain", args.address))
    ratios = [p / t for t, p in zip(typed, plain, strict=True)]
    load = os.getloadavg()[0]
    for label, xs in (("status (typed)", typed), ("status_plain", plain)):
        print(f"{label:<16} CPU median {statistics.median(xs) * 1e3:.0f} ms "
              f"[{min(xs) * 1e3:.0f}-{max(xs) * 1e3:.0f}]")
    print(f"plain / typed per pair: median {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}]; {args.runs} pairs, load {load:.1f}")


if __name__ == "__main__":
    main()
