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
from ..protocol import _wire as w
from ..protocol._messages import max_frame_size
from ._actor_host import HostContext, start_host
from ._process import WorkerProcess, run_main, value_codec

__all__ = ["ActorWorkerProcess", "main"]


class ActorWorkerProcess(WorkerProcess):
    """A worker whose work is actors (see the module docstring)."""

    shared = False  # hosts many lightweight actors (``--shared``)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.hosts: dict[bytes, Any] = {}
        self.ctx: HostContext | None = None
        super().__init__(*args, **kwargs)
        #: The handler of callers' direct links (``core_worker._direct_calls``).
        self.direct_dispatcher = d = transport.Dispatcher(f"worker_{self.index}-direct")
        d.register(w.DirectCall, self._h_direct_call, oneway=True)
        d.register(w.DirectCalls, self._h_direct_calls, oneway=True)
        d.register(w.CancelActorCall, self._h_cancel, oneway=True)

    def routes(self, d: transport.Dispatcher) -> None:
        super().routes(d)
        d.register(w.CreateActor, self._h_create, oneway=True)
        d.register(w.ActorCall, self._h_call, oneway=True)
        d.register(w.ActorCallLogged, self._h_logged, oneway=True)
        d.register(w.CancelActorCall, self._h_cancel, oneway=True)
        d.register(w.StopActor, self._h_stop, oneway=True)

    def _h_call(self, conn: Any, m: w.ActorCall) -> None:
        host = self.hosts.get(m.spec.actor_id)
        if host is not None:
            host.submit(m.spec, m.dep_data)

    def _h_create(self, conn: Any, m: w.CreateActor) -> None:
        spec, incarnation = m.spec, m.incarnation
        old = self.hosts.pop(spec.actor_id, None)
        if old is not None:
            old.stop()
        assert self.ctx is not None
        gpu_ids = tuple(m.gpu_ids)
        if gpu_ids and not self.shared:  # its own process: as Ray sets it
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
        _worker_state.actors[spec.actor_id.hex()] = _worker_state.ActorRun(
            spec.job_id, spec.job_namespace, incarnation, gpu_ids, spec
        )
        self.hosts[spec.actor_id] = start_host(self.ctx, spec, incarnation, m.dep_data,
                                               m.class_record, m.recovery)

    def _h_logged(self, conn: Any, m: w.ActorCallLogged) -> None:
        """The node logged a direct call: answer its caller."""
        if self.ctx is not None:
            self.ctx.logged(m.task_id)

    def _h_cancel(self, conn: Any, m: w.CancelActorCall) -> None:
        """``cancel(ref)`` of a call sent by the node or on a direct link."""
        host = self.hosts.get(m.actor_id)
        if host is not None:
            host.cancel(m.task_id)

    def _h_stop(self, conn: Any, m: w.StopActor) -> None:
        host = self.hosts.pop(m.actor_id, None)
        _worker_state.actors.pop(m.actor_id.hex(), None)
        if host is not None:
            host.stop()

    def _h_direct_call(self, conn: Any, m: w.DirectCall) -> None:
        """A caller's call on its direct link."""
        host = self._direct_call(conn, m.spec)
        if host is not None:
            host.offer_reads(conn)

    def _h_direct_calls(self, conn: Any, m: w.DirectCalls) -> None:
        """A caller's burst of calls on its direct link, in submission order."""
        assert self.ctx is not None
        self.ctx.call_frames_read_by_loop += 1
        host = None
        for spec in m.specs:
            host = self._direct_call(conn, spec)
            if host is None:
                return  # the caller resends this one and every later one via the node
        if host is not None:
            host.offer_reads(conn)

    def _direct_call(self, conn: Any, spec: Any) -> Any:
        """Hand a direct call to its actor's host; ``None``: the actor is not (or no
        longer) here, and the caller is told to go through the node."""
        host = self.hosts.get(spec.actor_id)
        if host is None:
            conn.send_nowait(w.DirectResult(spec.task_id, None))
            return None
        assert self.ctx is not None
        self.ctx.direct[spec.task_id] = conn
        self.ctx.calls_read_by_loop += 1
        host.submit(spec, None)
        return host

    async def run(self, address: str, token: bytes) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            sockets = os.path.dirname(address.removeprefix("unix:"))
            server = transport.Server(
                f"unix:{sockets}/actor-{self.worker_id.hex()[:12]}.sock", token,
                self.direct_dispatcher, name=f"worker_{self.index}-direct",
                max_frame_size=max_frame_size(),
                # Callers dial it while it and many others start: the start budget
                # (``core_worker._direct_calls.LINK_TIMEOUT``), not 10 s.
                handshake_timeout=self.connect_timeout,
            )
            direct_address = await nursery.start(server.run)
            client = transport.Client(
                address, token, name=f"worker_{self.index}", handler=self.dispatcher,
                connect_timeout=self.connect_timeout,
            )
            conn = await nursery.start(client.run)
            core = self.new_core("actor_worker", conn, address)
            await core.serve(nursery, self.store_address, token)

            self.ctx = HostContext(core, self.node_id.hex(), *value_codec(core))
            if not self.shared:  # one actor here: it may have the main thread
                self.ctx.main_thread = self.main_thread
            await self.hello("actor_worker", conn)
            await conn.send(w.ActorUp(self.worker_id, direct_address))


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
