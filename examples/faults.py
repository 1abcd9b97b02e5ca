"""The fault-injection harness on a small two-node cluster: crash a component of the
other node, crash an actor, kill a worker, slow a link, cut a node from the GCS, and
a seeded schedule; the work keeps giving exact results, and the record says what
was injected.

Run it with ``python examples/faults.py`` (docs/faults.md explains every call).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import actorcore
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import actorcore

from actorcore.testing import Cluster, faults


@actorcore.remote(max_retries=-1)
def square(x: int) -> int:
    return x * x


@actorcore.remote(max_restarts=-1, max_task_retries=-1)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def work() -> None:
    assert actorcore.get([square.remote(i) for i in range(10)], timeout=60) == [
        i * i for i in range(10)]


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        other = cluster.add_node(num_cpus=1)
        cluster.connect()
        head = f"node:{cluster.head_node.node_id[:8]}"
        node = f"node:{other.node_id[:8]}"
        counter = Counter.options(name="counter").remote()
        assert actorcore.get(counter.incr.remote(), timeout=60) == 1

        print(faults.crash(f"{node}/local_scheduler"))      # restarts under its supervisor
        actor = next(p for p, e in faults.Faults().paths() if e.get("name") == "counter")
        print(faults.crash(actor))                           # restarted: max_restarts
        assert actorcore.get(counter.incr.remote(), timeout=60) == 1  # a fresh instance
        worker = next(p for p, e in faults.Faults().paths()
                      if p.startswith(node) and e.get("kind") == "worker")
        print(faults.kill(worker))                           # SIGKILL; its tasks retried
        with faults.delay(0.02, jitter=0.02, a="worker", b=head):
            work()                                           # slower, still exact
        with faults.partition(node, "gcs"):                  # healed when the block ends
            work()
        sched = faults.schedule(seed=7, kinds=["crash", "kill", "delay"], rate=4.0,
                                duration=2.0, targets={"crash": ["node:*/global_scheduler"]})
        while not sched.done:
            work()
        print("schedule seed 7:", sched.summary())
        print("\n".join(entry.line() for entry in faults.record()))
    finally:
        actorcore.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
