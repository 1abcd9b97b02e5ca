"""actorcore quickstart: a supervision tree that heals itself.

Every actorcore component (RPC server, schedulers, object store, GCS replicas,
workers) runs as a supervised service in one tree per node. This program builds a
small tree with the kernel, crashes parts of it, and prints how the tree restarts
them. Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

try:
    import actorcore  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actorcore.kernel import Actor, ChildSpec, Supervisor, format_tree

stopped: list[str] = []


class Service:
    """A plain Trio service: it follows the child protocol, imports nothing."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # ready to serve
        try:
            await trio.sleep_forever()
        finally:  # cancellation is the shutdown request
            stopped.append(self.name)


class Counter(Actor):
    """An actor: one message at a time, in order; its state dies with it."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    async def receive(self, message: Any) -> Any:
        if message == "total":
            return self.total
        self.total += message  # a non-number raises here: the actor crashes
        return self.total

    async def on_stop(self) -> None:
        stopped.append("counter")


def show(title: str, tree: Supervisor) -> None:
    print(title)
    for line in format_tree(tree.snapshot()).splitlines():
        print("    " + line)
    print()


async def main() -> None:
    tree = Supervisor(
        "node",
        [
            ChildSpec("rpc_server", partial(Service, "rpc_server")),
            ChildSpec("counter", Counter),
            Supervisor.spec(
                "worker_pool",
                [ChildSpec(f"worker_{i}", partial(Service, f"worker_{i}")) for i in range(3)],
                strategy="one_for_all",
            ),
        ],
        node_id="local",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)
        show("1. The tree is up (children start in order, each once it is ready):", tree)

        counter = tree.child("counter")
        for n in (1, 2, 3):
            await counter.tell(n)
        print(f"2. Told the counter 1, 2, 3; counter.ask('total') -> {await counter.ask('total')}")

        try:
            await counter.ask("oops")
        except TypeError as exc:
            print(f"3. counter.ask('oops') raised TypeError ({exc}).")
        await tree.wait_running("counter", restarts=1)
        fresh = await tree.child("counter").ask("total")
        print(f"   The counter crashed; its supervisor started a fresh one (total is {fresh}).\n")

        pool = tree.find("worker_pool")
        pool.crash_child("worker_1")
        await pool.wait_for(lambda: all(c.state == "running" and c.restarts for c in pool.children()))
        show(
            "4. Injected a crash into worker_pool/worker_1. The pool is one_for_all,\n"
            "   so all three workers were restarted; the rest of the tree was untouched:",
            tree,
        )
        stopped.clear()
        nursery.cancel_scope.cancel()
    print("5. Shut down in reverse start order:", " -> ".join(stopped))
    print(f"   The tree is now {tree.state}.")


if __name__ == "__main__":
    # The kernel logs every crash (with its traceback) to the "actorcore.kernel"
    # logger; this demo crashes things on purpose, so keep those logs quiet.
    logging.getLogger("actorcore.kernel").setLevel(logging.CRITICAL)
    trio.run(main)
