"""``python -m actorcore.worker``: a worker process (started by its node's pool).

The worker connects to its node over the node's Unix socket, registers, and then
runs what the node sends. Its main thread is the core loop (Trio): it keeps the link,
the core worker (so tasks can submit nested tasks and ``get``), and the function
cache. User code runs in an ``Executor`` Pykka actor (see ``_executor``). The worker
exits when its link to the node dies: a worker never outlives its node.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import pickle
import sys
import threading
from typing import Any

import trio

import transport

from . import _worker_state
from ._core_worker import CoreWorker
from ._executor import Executor
from ._ids import short
from ._protocol import TaskSpec
from ._store_link import STORE, encode_value
from ._worker_state import task_context

__all__ = ["main"]

logger = logging.getLogger("actorcore.worker")


class WorkerProcess:
    def __init__(
        self, worker_id: bytes, node_id: bytes, index: int, store_address: str | None = None
    ) -> None:
        self.store_address = store_address
        self.worker_id = worker_id
        self.node_id = node_id
        self.index = index
        self.core: CoreWorker | None = None
        self.functions: dict[bytes, Any] = {}
        self._functions_lock = threading.Lock()
        self._executors: list[Executor] = []
        self._free: collections.deque = collections.deque()
        self._nursery: trio.Nursery | None = None

    async def handle(self, conn: Any, message: Any, reply: Any) -> None:
        op = message[0]
        if op == "execute":
            self._execute(message[1], message[2])
        elif op == "ready":
            if self.core is not None:
                self.core.on_objects_ready(message[1])
        elif op == "cancel":
            task_id = message[1]
            for executor in list(self._executors):
                executor.interrupt(task_id)
            if self.core is not None:
                self.core.cancel_task_waits(task_id)
        elif op == "release":
            if self.core is not None and self.core.store is not None:
                self.core.store.release_soon(message[1])
        elif op == "exit":
            os._exit(0)
        else:
            raise ValueError(f"worker: unknown message {op!r}")

    def _new_executor(self) -> Any:
        """Start one more executor actor (a task runs in one while others are blocked)."""
        core = self.core
        assert core is not None
        free = self._free

        def encode(oid: bytes, value: Any) -> bytes:
            return encode_value(value, oid, core.store, what="the return value")

        def decode(oid: bytes, data: bytes) -> Any:
            if data == STORE:
                assert core.store is not None
                return core.store.get(oid)
            return pickle.loads(data)

        holder: list[Executor] = []

        def report(spec: TaskSpec, results: list, retry: bool, _dt: float) -> None:
            core.task_finished(spec.task_id)
            free.append(ref)  # free again before the node hears we are done
            core._enqueue(("done", spec.task_id, results, retry))

        ref = Executor.start(report, self.node_id.hex(), holder.append, encode, decode)
        self._executors.append(holder[0])
        return ref

    def _take_executor(self) -> Any:
        while self._free:
            ref = self._free.pop()
            if ref.is_alive():
                return ref
        return self._new_executor()

    def _execute(self, spec: TaskSpec, dep_data: list) -> None:
        fn = self.functions.get(spec.function_id)
        if fn is not None:
            self._take_executor().tell((spec, fn, dep_data))
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._fetch_and_execute, spec, dep_data)

    async def _fetch_and_execute(self, spec: TaskSpec, dep_data: list) -> None:
        core = self.core
        assert core is not None
        record = await core.conn.request(("get_function", spec.function_id), timeout=60)
        loader = _FunctionLoader(self, spec.function_id, record)
        self._take_executor().tell((spec, loader, dep_data))

    async def run(self, address: str, token: bytes) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            client = transport.Client(
                address, token, name=f"worker_{self.index}", handler=self.handle
            )
            conn = await nursery.start(client.run)
            # The core worker and executor exist before we register: the node may
            # send work the moment it has our hello.
            core = CoreWorker(
                role="worker",
                worker_id=self.worker_id,
                job_id=b"\0\0\0\0",
                node_id=self.node_id,
                conn=conn,
                node_address=address,
            )
            core.current_task_id = lambda: getattr(task_context, "task_id", None)
            self.core = core
            _worker_state.set_core(core)
            await core.serve(nursery, self.store_address, token)
            self._free.append(self._new_executor())
            info = await conn.request(
                ("hello", "worker", self.worker_id, os.getpid(), {}), timeout=30
            )
            core.gcs_address = info.get("gcs_address")


class _FunctionLoader:
    """Unpickles a fetched function in the executor thread (imports run user code)."""

    def __init__(self, worker: WorkerProcess, function_id: bytes, record: dict) -> None:
        self.worker = worker
        self.function_id = function_id
        self.record = record

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.worker.functions.get(self.function_id)
        if fn is None:
            for path in self.record.get("sys_path") or ():
                if path not in sys.path:
                    sys.path.append(path)
            fn = pickle.loads(self.record["blob"])
            self.worker.functions[self.function_id] = fn
        return fn(*args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m actorcore.worker")
    p.add_argument("--address", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--store-address")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    token = bytes.fromhex(os.environ.pop("ACTORCORE_TOKEN"))
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s worker_{args.index} %(levelname)s %(name)s: %(message)s",
    )
    worker = WorkerProcess(
        bytes.fromhex(args.worker_id), bytes.fromhex(args.node_id), args.index, args.store_address
    )
    code = 0
    try:
        trio.run(worker.run, args.address, token)
    except BaseException as exc:  # the node went away, or we were told to stop
        if not isinstance(exc, KeyboardInterrupt):
            print(
                f"worker_{args.index} (node {short(args.node_id)}): exiting: {exc!r}",
                file=sys.stderr,
            )
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
