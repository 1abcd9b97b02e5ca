"""The fault-injection harness on a small two-node cluster: crash a component of the
other node, crash an actor, kill a worker, slow a link, cut a node from the GCS, and
a seeded schedule; the work keeps giving exact results, and the record says what
was injected.

Run it with ``python examples/faults.py``. From ``import actorcore`` on, this file is
the example of docs/faults.md and README.md, word for word (the test suite runs it
and checks that they still show it).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout

import actorcore
from actorcore.testing import Cluster, faults

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
other = cluster.add_node(num_cpus=1)
cluster.connect()
head = f"node:{cluster.head_node.node_id[:8]}"
node = f"node:{other.node_id[:8]}"


@actorcore.remote(max_retries=-1)
def square(x):
    return x * x


def work():
    assert actorcore.get([square.remote(i) for i in range(10)], timeout=60) == [
        i * i for i in range(10)]


@actorcore.remote(max_restarts=-1, max_task_retries=-1)
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


counter = Counter.options(name="counter").remote()
assert actorcore.get(counter.incr.remote(), timeout=60) == 1

print(faults.crash(f"{node}/local_scheduler"))        # restarts under its supervisor
actor = next(p for p, e in faults.Faults().paths() if e.get("name") == "counter")
print(faults.crash(actor))                             # node:ab12cd34/worker_pool/worker_1/counter
assert actorcore.get(counter.incr.remote(), timeout=60) == 1  # restarted: a fresh instance
worker = next(p for p, e in faults.Faults().paths()
              if p.startswith(node) and e.get("kind") == "worker")
print(faults.kill(worker))                             # SIGKILL; the tasks it ran are retried
with faults.delay(0.02, jitter=0.02, a="worker", b=head):
    work()                                             # slower, still exact
with faults.partition(node, "gcs"):                    # healed when the block ends
    work()
sched = faults.schedule(seed=7, kinds=["crash", "kill", "delay"], rate=4.0, duration=2.0,
                        targets={"crash": ["node:*/global_scheduler"]})
while not sched.done:
    work()
print(sched.summary())                                 # crash: 2, kill: 2, delay: 2
print("\n".join(entry.line() for entry in faults.record()))
actorcore.shutdown()
cluster.shutdown()
