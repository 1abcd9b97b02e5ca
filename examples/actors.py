"""Actors: state, ordering, names, async methods, restarts and user supervision.

    .venv/bin/python examples/actors.py
"""

import asyncio
import os
import signal
import time

import actorcore as ray
from actorcore.kernel import format_tree


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def pid(self):
        return os.getpid()


@ray.remote
class Fetcher:
    async def fetch(self, i):
        await asyncio.sleep(0.5)  # e.g. network I/O: calls overlap on the event loop
        return i


@ray.remote
def bump(counter, times):
    # A handle passed to a task: its calls keep their order too.
    return ray.get([counter.add.remote() for _ in range(times)])[-1]


def main() -> None:
    ray.init(num_cpus=2, log_to_driver=False)

    c = Counter.remote(100)
    in_order = ray.get([c.add.remote() for _ in range(5)])
    print("stateful calls in order:", in_order)
    assert in_order == [101, 102, 103, 104, 105]
    bumped = ray.get(bump.remote(c, 10))
    print("through a task:", bumped)
    assert bumped == 115

    Counter.options(name="registry", namespace="demo").remote(0)
    same = ray.get_actor("registry", namespace="demo")
    named = ray.get(same.add.remote(7))
    print("named actor:", named)
    assert named == 7

    f = Fetcher.remote()
    ray.get(f.fetch.remote(-1))
    t0 = time.monotonic()
    fetched = ray.get([f.fetch.remote(i) for i in range(10)])
    took = time.monotonic() - t0
    print(f"ten 0.5 s async calls took {took:.2f} s")
    assert fetched == list(range(10)) and took < 4.5, took  # they overlap (serially: 5 s)

    r = Counter.options(max_restarts=1, max_task_retries=1).remote(0)
    pid = ray.get(r.pid.remote())
    os.kill(pid, signal.SIGKILL)
    new_pid, state = ray.get(r.pid.remote()), ray.get(r.add.remote())
    print("restarted in a new process:", new_pid != pid, "state after restart:", state)
    assert new_pid != pid and state == 1  # the constructor ran again

    sup = ray.supervisor("pair", strategy="one_for_all", max_restarts=3, max_seconds=30)
    a = Counter.options(supervisor=sup, name="left", max_task_retries=-1).remote(0)
    b = Counter.options(supervisor=sup, name="right", max_task_retries=-1).remote(0)
    pa, pb = ray.get([a.pid.remote(), b.pid.remote()])
    os.kill(pa, signal.SIGKILL)  # one_for_all: both are re-created
    deadline = time.monotonic() + 30
    while True:
        qa, qb = ray.get([a.pid.remote(), b.pid.remote()])
        if qa != pa and qb != pb:
            break
        assert time.monotonic() < deadline, "one_for_all did not restart both in 30 s"
        time.sleep(0.1)
    print("one_for_all restarted both:", qa != pa and qb != pb)

    ray.kill(c)
    try:
        ray.get(c.add.remote())
    except ray.exceptions.ActorDiedError as e:
        print("after kill:", str(e).splitlines()[0])
    else:
        raise AssertionError("a killed actor answered")

    tree = ray.tree()
    node = tree["children"][0]
    pair = next(ch for ch in node["children"] if ch["name"] == "pair")
    print(format_tree(pair))
    assert {ch["name"] for ch in pair["children"]} == {"left", "right"}
    ray.shutdown()


if __name__ == "__main__":
    main()
