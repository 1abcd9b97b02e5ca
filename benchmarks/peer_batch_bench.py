"""The cost of numbered node-to-node batches: cross-node task throughput before and
after they landed.

Since commit 48d1027 ("node links: numbered one-way batches kept until
acknowledged, resent after a broken link and skipped when seen twice") every frame
of one-way messages between two nodes is a numbered ``PeerBatch``, kept until the
peer's ``PeerAck`` comes back (one more frame the other way per batch), resent on a
new connection and skipped when seen twice. There is no switch to turn it off, so
this script measures the same workload on source trees of three commits, each
extracted with ``git archive`` into a temporary directory (this checkout is not
touched):

- ``before``: 48d1027^, plain batches, lost with a broken link;
- ``after``:  48d1027, numbered, acknowledged, resent, deduplicated;
- ``now``:    this checkout (typed messages since, and everything else since).

Workload: a head (2 CPUs, resource ``NEAR``) and a second node (2 CPUs, resource
``FAR``) on this machine; the driver on the head submits ``--tasks`` empty tasks
that need ``FAR`` at once, so every task is forwarded to the other node in a peer
batch and its result comes back in one; then as many that need ``NEAR`` (run on the
head: no peer link), for the cost of the hop itself. Each measurement runs in a
fresh process (its cluster started with that tree's code); the trees take turns,
``--rounds`` times, so the machine's load hits them alike. Prints each tree's median
tasks/s, the spread, and the ratios.

    python benchmarks/peer_batch_bench.py [--quick] [--rounds 5] [--tasks 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TREES = (("before", "48d1027^"), ("after", "48d1027"), ("now", None))


def measure(tasks: int) -> dict[str, float]:
    """One measurement with whichever ``actorcore`` is first on the path."""
    import actorcore
    from actorcore.testing import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "resources": {"NEAR": 1000}})
    try:
        cluster.add_node(num_cpus=2, resources={"FAR": 1000})
        actorcore.init(address=cluster.address, log_to_driver=False)

        @actorcore.remote
        def noop() -> int:
            return 1

        result: dict[str, Any] = {
            "root": str(Path(actorcore.__file__).resolve().parent.parent)}
        for where in ("FAR", "NEAR"):
            task = noop.options(resources={where: 1})
            actorcore.get([task.remote() for _ in range(300)], timeout=300)  # workers up
            start = time.perf_counter()
            assert sum(actorcore.get([task.remote() for _ in range(tasks)],
                                     timeout=600)) == tasks
            result[where] = tasks / (time.perf_counter() - start)
        return result
    finally:
        actorcore.shutdown()
        cluster.shutdown()


def _extract(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _run(tree: Path, tasks: int) -> dict[str, float]:
    env = dict(os.environ)
    # The tree's packages first: before the editable install of this checkout, and
    # the nodes' launcher passes its own package root on to every process it starts.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-P", str(Path(__file__).resolve()), "--measure", str(tasks)],
        cwd=str(tree), env=env, capture_output=True, text=True, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            if Path(result["root"]) != tree.resolve():
                raise RuntimeError(f"measured {result['root']}, not {tree}")
            return result
    raise RuntimeError(f"no result from {tree}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=3000)
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure)), flush=True)
        return
    rounds, tasks = (2, 1000) if args.quick else (args.rounds, args.tasks)
    with tempfile.TemporaryDirectory(prefix="peer-batch-bench-") as tmp:
        trees = {name: ROOT if rev is None else _extract(rev, Path(tmp) / name)
                 for name, rev in TREES}
        far: dict[str, list[float]] = {name: [] for name in trees}
        near: dict[str, list[float]] = {name: [] for name in trees}
        for r in range(rounds):
            # A different first tree each round: none always runs on a fresh machine.
            order = list(trees)[r % len(trees):] + list(trees)[:r % len(trees)]
            for name in order:
                result = _run(trees[name], tasks)
                far[name].append(result["FAR"])
                near[name].append(result["NEAR"])
            print(f"round {r + 1}/{rounds} (cross-node / on the head, tasks/s): " + ", ".join(
                f"{name} {far[name][-1]:.0f} / {near[name][-1]:.0f}" for name in trees),
                flush=True)
    median = {name: statistics.median(v) for name, v in far.items()}
    print(f"\n{tasks} empty tasks at once, {rounds} rounds (median, range):")
    for name, rev in TREES:
        print(f"  {name:<6} {rev or 'this checkout':<14} cross-node {median[name]:6.0f} tasks/s "
              f"({min(far[name]):.0f}-{max(far[name]):.0f}); on the head "
              f"{statistics.median(near[name]):6.0f} ({min(near[name]):.0f}-"
              f"{max(near[name]):.0f})")
    paired = [a / b for a, b in zip(far["after"], far["before"], strict=True)]
    print(f"  cross-node after / before: {median['after'] / median['before']:.3f}x "
          f"(per round: {', '.join(f'{x:.2f}' for x in paired)}); "
          f"now / before: {median['now'] / median['before']:.3f}x")


if __name__ == "__main__":
    main()
