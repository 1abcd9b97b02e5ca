"""actorcore quickstart: remote tasks, objects, wait, nested tasks, the live tree.

Run it from the repository root:  .venv/bin/python examples/quickstart.py
"""

import time

import actorcore as ray

ray.init(num_cpus=2)  # an embedded local cluster: a head node and one worker per CPU


@ray.remote
def square(x):
    return x * x


@ray.remote
def slow_add(a, b, delay):
    time.sleep(delay)
    return a + b


@ray.remote
def fib(n):
    # Nested tasks: a task submits tasks and waits for them (its CPU is lent meanwhile).
    if n < 2:
        return n
    return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))


@ray.remote
def fails():
    raise ValueError("this task failed on purpose")


# 1. A few remote tasks, run in worker processes.
refs = [square.remote(i) for i in range(8)]
squares = ray.get(refs)
print("squares:", squares)
assert squares == [i * i for i in range(8)]

# 2. put / get: objects live in the cluster; refs passed as arguments are resolved.
data = ray.put(list(range(100)))
total = ray.get(slow_add.remote(ray.put(1), 2, 0.0))
print("sum via a task taking an object ref:", total)
print("put/get round trip:", ray.get(data)[:5], "...")
assert total == 3 and ray.get(data) == list(range(100))

# 3. wait: take what is ready first.
pending = [slow_add.remote(i, i, 0.05 * i) for i in range(6)]
ready, not_ready = ray.wait(pending, num_returns=3, timeout=10)
print(f"wait: {len(ready)} ready, {len(not_ready)} still running ->", ray.get(ready))
assert len(ready) == 3 and len(not_ready) == 3
assert sorted(ray.get(ready + not_ready)) == [2 * i for i in range(6)]

# 4. Nested tasks: a dynamic task graph.
fib8 = ray.get(fib.remote(8))
print("fib(8) with nested tasks:", fib8)
assert fib8 == 21

# 5. Errors come back as the original exception type, with the remote traceback.
try:
    ray.get(fails.remote())
except ValueError as err:
    print("caught the task's error:", type(err).__name__, "-", str(err).splitlines()[-1])
    assert "this task failed on purpose" in str(err)
else:
    raise AssertionError("the failing task's error did not reach the caller")

# 6. The live supervision tree of the cluster.
from actorcore.kernel import format_tree  # noqa: E402

tree = ray.tree()
print(format_tree(tree))
assert {c["name"] for c in tree["children"][0]["children"]} >= {"local_scheduler", "worker_pool"}
print("resources:", ray.cluster_resources())
assert ray.cluster_resources()["CPU"] == 2
ray.shutdown()
print("done")
