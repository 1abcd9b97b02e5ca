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
    print("stateful calls in order:", ray.get([c.add.remote() for _ in range(5)]))
    print("through a task:", ray.get(bump.remote(c, 10)))

    Counter.options(name="registry", namespace="demo").remote(0)
    same = ray.get_actor("registry", namespace="demo")
    print("named actor:", ray.get(same.add.remote(7)))

    f = Fetcher.remote()
    ray.get(f.fetch.remote(-1))
    t0 = time.monotonic()
    ray.get([f.fetch.remote(i) for i in range(10)])
    print(f"ten 0.5 s async calls took {time.monotonic() - t0:.2f} s")

    r = Counter.options(max_restarts=1, max_task_retries=1).remote(0)
    pid = ray.get(r.pid.remote())
    os.kill(pid, signal.SIGKILL)
    print("restarted in a new process:", ray.get(r.pid.remote()) != pid,
          "state after restart:", ray.get(r.add.remote()))

    sup = ray.supervisor("pair", strategy="one_for_all", max_restarts=3, max_seconds=30)
    a = Counter.options(supervisor=sup, name="left", max_task_retries=-1).remote(0)
    b = Counter.options(supervisor=sup, name="right", max_task_retries=-1).remote(0)
    pa, pb = ray.get([a.pid.remote(), b.pid.remote()])
    os.kill(pa, signal.SIGKILL)  # one_for_all: both are re-created
    while True:
        qa, qb = ray.get([a.pid.remote(), b.pid.remote()])
        if qa != pa and qb != pb:
            break
        time.sleep(0.1)
    print("one_for_all restarted both:", qa != pa and qb != pb)

    ray.kill(c)
    try:
        ray.get(c.add.remote())
    except ray.exceptions.ActorDiedError as e:
        print("after kill:", str(e).splitlines()[0])

    tree = ray.tree()
    node = tree["children"][0]
    pair = next(ch for ch in node["children"] if ch["name"] == "pair")
    print(format_tree(pair))
    ray.shutdown()


if __name__ == "__main__":
    main()
