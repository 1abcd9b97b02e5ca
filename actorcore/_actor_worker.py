"""``python -m actorcore._actor_worker``: a process hosting user actors.

Started by the node's actor manager, one per actor by default (as Ray does) or one
shared by many lightweight actors (``--shared``). It is a worker process in every
other respect — the same core worker, so actor methods can submit tasks, create
actors, ``get`` and ``await`` refs — but it registers as ``actor_worker`` (the local
scheduler never gives it tasks) and then says ``actor_up``. It exits when its link to
the node dies, like any worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import threading
from typing import Any

import trio

import transport

from . import _worker_state
from ._actor_host import HostContext, start_host
from ._core_worker import CoreWorker
from ._ids import short
from ._store_link import STORE, encode_value
from ._worker_state import task_context
from .worker import WorkerProcess

__all__ = ["ActorWorkerProcess", "main"]


class ActorWorkerProcess(WorkerProcess):
    """A worker whose work is actors (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hosts: dict[bytes, Any] = {}
        self.ctx: HostContext | None = None

    async def handle(self, conn: Any, message: Any, reply: Any) -> None:
        op = message[0]
        if op == "actor_call":
            host = self.hosts.get(message[1].actor_id)
            if host is not None:
                host.submit(message[1], message[2])
        elif op == "actor_create":
            _, spec, incarnation, dep_data, record = message
            old = self.hosts.pop(spec.actor_id, None)
            if old is not None:
                old.stop()
            assert self.ctx is not None
            self.hosts[spec.actor_id] = start_host(self.ctx, spec, incarnation, dep_data, record)
        elif op == "actor_stop":
            host = self.hosts.pop(message[1], None)
            if host is not None:
                host.stop()
        else:
            await super().handle(conn, message, reply)

    async def handle_direct(self, conn: Any, message: Any, reply: Any) -> None:
        """A caller's direct link (``_actor_direct``): ``("dcall", CallSpec)``."""
        spec = message[1]
        host = self.hosts.get(spec.actor_id)
        if host is None:  # not (or no longer) here: the caller goes through the node
            conn.send_nowait(("dresult", spec.task_id, None))
            return
        assert self.ctx is not None
        self.ctx.direct[spec.task_id] = conn
        host.submit(spec, None)

    async def run(self, address: str, token: bytes) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            sockets = os.path.dirname(address.removeprefix("unix:"))
            server = transport.Server(
                f"unix:{sockets}/actor-{self.worker_id.hex()[:12]}.sock", token,
                self.handle_direct, name=f"worker_{self.index}-direct",
            )
            direct_address = await nursery.start(server.run)
            client = transport.Client(
                address, token, name=f"worker_{self.index}", handler=self.handle
            )
            conn = await nursery.start(client.run)
            core = CoreWorker(
                role="actor_worker",
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

            def encode(oid: bytes, value: Any) -> bytes:
                return encode_value(value, oid, core.store, what="the return value")

            def decode(oid: bytes, data: Any) -> Any:
                if data == STORE:
                    assert core.store is not None
                    return core.store.get(oid)
                return pickle.loads(data)

            self.ctx = HostContext(core, self.node_id.hex(), encode, decode)
            info = await conn.request(
                ("hello", "actor_worker", self.worker_id, os.getpid(), {}), timeout=30
            )
            core.gcs_address = info.get("gcs_address")
            await conn.send(("actor_up", self.worker_id, direct_address))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m actorcore._actor_worker")
    p.add_argument("--address", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--store-address")
    p.add_argument("--shared", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    token = bytes.fromhex(os.environ.pop("ACTORCORE_TOKEN"))
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s worker_{args.index} %(levelname)s %(name)s: %(message)s",
    )
    if args.shared:
        # Thousands of lightweight actors, one small-stack thread each.
        threading.stack_size(256 * 1024)
    worker = ActorWorkerProcess(
        bytes.fromhex(args.worker_id), bytes.fromhex(args.node_id), args.index,
        args.store_address,
    )
    code = 0
    try:
        trio.run(worker.run, args.address, token)
    except BaseException as exc:  # the node went away
        if not isinstance(exc, KeyboardInterrupt):
            print(f"worker_{args.index} (node {short(args.node_id)}): exiting: {exc!r}",
                  file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
