"""Lineage recovery (the paper's Fig. 11a, scaled to this machine): a node dies
under a long chain of tasks and is replaced.

    .venv/bin/python benchmarks/lineage_bench.py [--chains 4] [--length 120]
        [--task-ms 100] [--kill-at 6] [--readd-after 3] [--node-timeout 2]

A real `actorcore.testing.Cluster`: a head with no CPU (the driver's node) and two
1-CPU nodes. ``--chains`` independent chains of ``--length`` tasks each, every task
~``--task-ms`` ms of sleep taking the previous task's result (a 1 MiB array, so
results live in the nodes' stores and travel home by pulls) and returning the next;
the driver submits a chain's next task when its last one is done, so each task is
placed when it can run (by argument locality and load) and keeps only the newest
ref of each chain (the lineage holds the rest).
``--kill-at`` s after the start one node is SIGKILLed (``Cluster.remove_node``);
``--readd-after`` s later a fresh node joins. Tasks that were running there are
retried, results lost with it are rebuilt from their lineage (``_lineage``), and the
chains go on.

Reported: tasks completed per second in 1 s buckets (a table, and a PNG plot
``benchmarks/lineage_bench.png`` when matplotlib is importable: ``pip install -e
".[bench]"``), the throughput
before the kill, the time to recover (from the kill until a 2 s window reaches
80 % of the throughput before it again) and how many tasks ran more than once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import actorcore  # noqa: E402
from actorcore.testing import Cluster  # noqa: E402


@actorcore.remote(max_retries=5)
def step(prev, chain: int, i: int, task_ms: float, log: str) -> np.ndarray:
    with open(log, "a") as f:
        f.write(f"{chain}:{i}\n")
    time.sleep(task_ms / 1000.0)
    base = 0 if prev is None else int(prev[0])
    return np.full(1 << 20, (base + 1) % 251, dtype=np.uint8)


def run(args: argparse.Namespace) -> dict:
    env = {"ACTORCORE_NODE_TIMEOUT": str(args.node_timeout),
           "ACTORCORE_HEARTBEAT_INTERVAL": "0.2"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "env_vars": env})
    log = os.path.join(tempfile.mkdtemp(prefix="lineage-bench-"), "runs.log")
    try:
        victim = cluster.add_node(num_cpus=1, env_vars=env)
        cluster.add_node(num_cpus=1, env_vars=env)
        cluster.connect()
        actorcore.get([step.remote(None, -1, i, 1, log) for i in range(4)])  # warm up
        Path(log).unlink()
        start = time.monotonic()
        done_at: list[float] = []
        events: dict[str, float] = {}

        def failure() -> None:  # beside the loop below, so that it keeps counting
            time.sleep(args.kill_at)
            cluster.remove_node(victim)
            events["killed"] = time.monotonic() - start
            time.sleep(args.readd_after)
            events["readd"] = time.monotonic() - start
            cluster.add_node(num_cpus=1, env_vars=env)
            events["joined"] = time.monotonic() - start

        thread = threading.Thread(target=failure, daemon=True)
        thread.start()
        # Each chain's next task is submitted when its last one is done (the driver
        # holds only the newest ref of each chain; the lineage keeps the rest).
        heads = {c: step.remote(None, c, 0, args.task_ms, log) for c in range(args.chains)}
        submitted = dict.fromkeys(heads, 1)
        while heads:
            by_ref = {ref: c for c, ref in heads.items()}
            ready, _ = actorcore.wait(list(by_ref), num_returns=1, timeout=0.05)
            now = time.monotonic() - start
            for ref in ready:
                done_at.append(now)
                c = by_ref[ref]
                if submitted[c] == args.length:
                    last = actorcore.get(ref)
                    assert int(last[0]) == args.length % 251, "a chain's value is wrong"
                    del heads[c]
                else:
                    heads[c] = step.remote(ref, c, submitted[c], args.task_ms, log)
                    submitted[c] += 1
        thread.join()
        total = time.monotonic() - start
        runs: dict[str, int] = {}
        for line in Path(log).read_text().split():
            runs[line] = runs.get(line, 0) + 1
        return {"done_at": done_at, "killed_at": events["killed"],
                "readded_at": events["readd"], "joined_at": events["joined"],
                "total": total, "reran": sum(1 for n in runs.values() if n > 1),
                "tasks": args.chains * args.length}
    finally:
        actorcore.shutdown()
        cluster.shutdown()


def report(args: argparse.Namespace, r: dict) -> None:
    buckets = [0] * (int(r["total"]) + 1)
    for t in r["done_at"]:
        buckets[int(t)] += 1
    killed = r["killed_at"]
    before = [buckets[s] for s in range(1, int(killed))] or [0]
    base = sum(before) / len(before)
    recovered = None
    for s in range(int(killed), len(buckets) - 1):
        if (buckets[s] + buckets[s + 1]) / 2 >= 0.8 * base:
            recovered = s - killed
            break
    # The longest time without a completion after the kill, and when it ended.
    times = sorted(t for t in r["done_at"] if t >= killed)
    gaps = [(b - a, b) for a, b in zip([killed, *times], times, strict=False)]
    stall, resumed = max(gaps) if gaps else (float("nan"), float("nan"))
    print(f"{args.chains} chains x {args.length} tasks of {args.task_ms:g} ms on two "
          f"1-CPU nodes; node killed at {killed:.1f} s, a new one started at "
          f"{r['readded_at']:.1f} s and joined at {r['joined_at']:.1f} s (node timeout "
          f"{args.node_timeout:g} s)")
    print()
    print("| second | tasks done |")
    print("| --- | --- |")
    for s, n in enumerate(buckets):
        mark = " (kill)" if s == int(killed) else (
            " (re-add)" if r["readded_at"] is not None and s == int(r["readded_at"]) else "")
        print(f"| {s} | {n}{mark} |")
    print()
    after = [buckets[s] for s in range(int(r["joined_at"]) + 2, len(buckets) - 1)] or [0]
    print(f"throughput before the kill: {base:.1f} tasks/s; after the new node joined: "
          f"{sum(after) / len(after):.1f} tasks/s")
    print(f"longest stall after the kill: {stall:.1f} s (ended {resumed - killed:.1f} s after "
          f"it); back to 80 % of the throughput before it (2 s window): "
          f"{'not within the run' if recovered is None else f'{recovered:.1f} s after the kill'}")
    print(f"total {r['total']:.1f} s for {r['tasks']} tasks; {r['reran']} task(s) ran more "
          f"than once (retried on the dead node, or rebuilt from lineage)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not importable here: no PNG plot (the table above is the data)")
        return
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(range(len(buckets)), buckets, width=0.9)
    ax.axvline(killed, color="red", label="node killed")
    if r["readded_at"] is not None:
        ax.axvline(r["readded_at"], color="green", label="new node started")
        ax.axvline(r["joined_at"], color="green", linestyle="--", label="new node joined")
    ax.set_title(f"{args.chains} chains of {args.task_ms:g} ms tasks; a node SIGKILLed and "
                 f"replaced", fontsize=9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tasks / s")
    ax.legend()
    out = Path(__file__).with_name("lineage_bench.png")
    fig.tight_layout()
    fig.savefig(out)
    print(f"plot: {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--length", type=int, default=120)
    p.add_argument("--task-ms", type=float, default=100.0)
    p.add_argument("--kill-at", type=float, default=6.0)
    p.add_argument("--readd-after", type=float, default=3.0)
    p.add_argument("--node-timeout", type=float, default=2.0)
    args = p.parse_args()
    report(args, run(args))


if __name__ == "__main__":
    main()
