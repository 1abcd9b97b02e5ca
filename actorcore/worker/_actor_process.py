"""``python -m actorcore.worker._actor_process``: a process hosting user actors.

Started by the node's actor manager, one per actor by default (as Ray does) or one
shared by many lightweight actors (``--shared``). It is a worker process in every
other respect — the same core worker, so actor methods can submit tasks, create
actors, ``get`` and ``await`` refs — but it registers as ``actor_worker`` (the local
scheduler never gives it tasks) and then says ``actor_up``. It exits when its link to
the node dies, like any worker.
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import Any

import trio

import transport

from ..core_worker import _worker_state
from ..protocol._messages import max_frame_size
from ._actor_host import HostContext, start_host
from ._process import WorkerProcess, run_main, value_codec

__all__ = ["ActorWorkerProcess", "main"]


class ActorWorkerProcess(WorkerProcess):
    """A worker whose work is actors (see the module docstring)."""

    shared = False  # hosts many lightweight actors (``--shared``)

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
            _, spec, incarnation, dep_data, record, *more = message
            old = self.hosts.pop(spec.actor_id, None)
            if old is not None:
                old.stop()
            assert self.ctx is not None
            gpu_ids = tuple(more[0]) if more else ()
            recovery = more[1] if len(more) > 1 else None
            if gpu_ids and not self.shared:  # its own process: as Ray sets it
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
            _worker_state.actors[spec.actor_id.hex()] = _worker_state.ActorRun(
                spec.job_id, spec.job_namespace, incarnation, gpu_ids, spec
            )
            self.hosts[spec.actor_id] = start_host(self.ctx, spec, incarnation, dep_data, record,
                                                   recovery)
        elif op == "actor_logged":  # the node logged a direct call: answer its caller
            if self.ctx is not None:
                self.ctx.logged(message[2])
        elif op == "actor_cancel":  # cancel(ref) of a call the node sent (_actor_cancel)
            host = self.hosts.get(message[1])
            if host is not None:
                host.cancel(message[2])
        elif op == "actor_stop":
            host = self.hosts.pop(message[1], None)
            _worker_state.actors.pop(message[1].hex(), None)
            if host is not None:
                host.stop()
        else:
            await super().handle(conn, message, reply)

    async def handle_direct(self, conn: Any, message: Any, reply: Any) -> None:
        """A caller's direct link (``core_worker._direct_calls``): ``("dcall", CallSpec)``, or
        ``("dcancel", actor_id, task_id)`` for ``cancel(ref)`` of a call sent on it."""
        if message[0] == "dcancel":
            host = self.hosts.get(message[1])
            if host is not None:
                host.cancel(message[2])
            return
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
                max_frame_size=max_frame_size(),
            )
            direct_address = await nursery.start(server.run)
            client = transport.Client(
                address, token, name=f"worker_{self.index}", handler=self.handle,
                connect_timeout=self.connect_timeout,
            )
            conn = await nursery.start(client.run)
            core = self.new_core("actor_worker", conn, address)
            await core.serve(nursery, self.store_address, token)

            self.ctx = HostContext(core, self.node_id.hex(), *value_codec(core))
            if not self.shared:  # one actor here: it may have the main thread
                self.ctx.main_thread = self.main_thread
            await self.hello("actor_worker", conn)
            await conn.send(("actor_up", self.worker_id, direct_address))


def main(argv: list[str] | None = None) -> None:
    run_main(
        "python -m actorcore.worker._actor_process", argv, ActorWorkerProcess,
        add_arguments=lambda p: p.add_argument("--shared", action="store_true"),
        before_start=_before_start,
    )


def _before_start(args: argparse.Namespace) -> None:
    ActorWorkerProcess.shared = bool(args.shared)
    if args.shared:
        # Thousands of lightweight actors, one small-stack thread each.
        threading.stack_size(256 * 1024)


if __name__ == "__main__":
    main()
