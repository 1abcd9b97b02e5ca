"""The worker's side of direct task submission (``core_worker._leased_tasks``).

A task worker listens on a Unix socket of its own; a submitter holding a lease on it
dials it and pushes `LeasedTask`s. For each one the worker first tells its node
(`LeasedStart`, sent on the node link before the task starts, so it precedes the
task's `TaskDone`, `Blocked` and any cancel), then runs it like a task the node
sent. Its end goes back on the
link it came on (`LeasedTaskDone`, with the results when they may travel inline),
and to the node (`TaskDone`, ``pushed`` when the submitter has them). A
`CancelLeasedTask` is passed on to the node as a `CancelTask`, behind the task's
`LeasedStart`: the node cancels it as one of its own (interrupt, force kill,
recursive).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

import transport

from ..protocol import _wire as w
from ..protocol._messages import max_frame_size

__all__ = ["LeasedTaskServer"]

logger = logging.getLogger("actorcore.worker.leased")


class LeasedTaskServer:
    """Serves submitters' direct links to one task worker (see the module docstring).

    ``worker`` is the `WorkerProcess`: this class calls only its ``core``,
    ``index``, ``worker_id`` and ``execute_leased``.
    """

    def __init__(self, worker: Any) -> None:
        self._worker = worker
        #: task id -> the link it came on, until its end is reported
        self.links: dict[bytes, Any] = {}
        self.dispatcher = d = transport.Dispatcher(f"worker_{worker.index}-leased")
        d.register(w.LeasedTask, self._h_task, oneway=True)
        d.register(w.CancelLeasedTask, self._h_cancel, oneway=True)
        d.register(w.ObjectsReady, self._h_ready, oneway=True)

    async def listen(self, nursery: trio.Nursery, node_address: str, token: bytes) -> str | None:
        """Listen beside the node's socket; return the address (None: not on a
        Unix socket, or it failed: the node then never leases this worker)."""
        if not node_address.startswith("unix:"):
            return None
        sockets = os.path.dirname(node_address.removeprefix("unix:"))
        server = transport.Server(
            f"unix:{sockets}/worker-{self._worker.worker_id.hex()[:12]}.sock", token,
            self.dispatcher, name=f"worker_{self._worker.index}-leased",
            max_frame_size=max_frame_size(),
        )
        try:
            return await nursery.start(server.run)
        except Exception as exc:  # tasks then come through the node only
            logger.info("cannot listen for leased tasks: %r", exc)
            return None

    def _h_task(self, conn: Any, m: w.LeasedTask) -> None:
        core = self._worker.core
        spec = m.spec
        self.links[spec.task_id] = conn
        # At once, before the task starts: the node must know it is running here
        # (its worker's death, a recursive cancel of its parent, a blocked get).
        core.append_unsent(w.LeasedStart(m.lease_id, spec))
        core.flush_now()
        self._worker.execute_leased(spec)
        # Its next tasks may come while this worker is idle: its main thread reads
        # them itself then (``_main_inbox``).
        self._worker.offer_reads(conn)

    def _h_cancel(self, conn: Any, m: w.CancelLeasedTask) -> None:
        core = self._worker.core
        core.append_unsent(w.CancelTask(m.task_id, m.force, m.recursive))
        core.flush_now()

    def _h_ready(self, conn: Any, m: w.ObjectsReady) -> None:
        # Results of tasks this worker submitted, pushed by the workers that ran
        # them (the node names this socket as their owner's address).
        core = self._worker.core
        if core is not None:
            core.on_objects_ready(m.objects)

    def take_link(self, task_id: bytes) -> Any:
        """The link ``task_id`` came on, if it is a leased task (forgotten here)."""
        return self.links.pop(task_id, None)
