"""Task throughput on 1, 2 and 4 nodes of 1 CPU each, actorcore and Ray side by side.

Each backend runs in a fresh process of its own (``_common.run_backends``; Ray from
``$RAY_PYTHON``, else ``/work/rayenv/bin/python``): a cluster of N nodes on this
machine (actorcore's ``testing.Cluster``, Ray's ``cluster_utils.Cluster``), a
driver on the head, and a batch of empty tasks submitted at once (the local
scheduler keeps what it can, the rest spills to the other nodes).

    python benchmarks/multinode_bench.py [--quick] [--no-ray] [--nodes 1,2,4]

On a 2-core machine more nodes add processes, not cores: the figure to watch is
how much of the one-node rate survives the hops between nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import run_backends  # noqa: E402


def measure(backend: str, nodes: int, tasks: int) -> dict[str, float]:
    if backend == "ray":
        import ray
        from ray.cluster_utils import Cluster
    else:
        sys.path.insert(0, str(HERE.parent))
        import actorcore as ray
        from actorcore.testing import Cluster

    if backend == "ray":
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    else:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
    try:
        @ray.remote
        def noop():
            return 1

        ray.get([noop.remote() for _ in range(200)])  # workers up on every node
        start = time.perf_counter()
        ray.get([noop.remote() for _ in range(tasks)])
        took = time.perf_counter() - start
        return {"tasks_per_s": tasks / took, "seconds": took}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend")
    parser.add_argument("--nodes", default="1,2,4")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    tasks = 1000 if args.quick else 5000
    counts = [int(n) for n in args.nodes.split(",")]
    if args.backend:
        out = {str(n): measure(args.backend, n, tasks) for n in counts}
        print("RESULT " + json.dumps(out))
        return
    results = run_backends(__file__, ["--nodes", args.nodes], quick=args.quick,
                           no_ray=args.no_ray, timeout=900)
    print(f"{'nodes':>5} " + " ".join(f"{name + ' tasks/s':>18}" for name in results))
    for n in counts:
        print(f"{n:>5} " + " ".join(f"{results[name][str(n)]['tasks_per_s']:>18.0f}"
                                    for name in results))


if __name__ == "__main__":
    main()
