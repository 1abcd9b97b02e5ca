"""The actor table, written behind to the GCS: each actor's record (state, pid,
restarts, cause) as its host sees it, batched.

The actor manager marks a record whenever an actor changes; `RecordWriter.run`
(the loop of the ``actor_manager`` component) writes what is marked, a batch at a
time. A record leaves the marked set only once written, and only if no newer
record of the same actor replaced it meanwhile, so a crash of the component half
way through a batch loses no record: the restarted loop writes it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

__all__ = ["RecordWriter"]

logger = logging.getLogger("actorcore.actors")

#: Seconds the writer waits after the first mark, gathering a batch.
BATCH_DELAY = 0.05


class _ControlNode(Protocol):
    @property
    def control(self) -> Any: ...  # the node's control state (``gcs_client._control``)


class RecordWriter:
    """The actor records not yet in the GCS, and the loop that writes them."""

    def __init__(self, node: _ControlNode) -> None:
        self._node = node
        self._dirty: dict[bytes, dict] = {}
        self._marked = trio.Event()

    @property
    def unwritten(self) -> int:
        return len(self._dirty)

    def write(self, actor_id: bytes, record: dict) -> None:
        """Write ``record`` as the actor's (behind: the loop batches it)."""
        self._dirty[actor_id] = record
        self._marked.set()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._marked.wait()
            await trio.sleep(BATCH_DELAY)
            self._marked = trio.Event()
            batch = dict(self._dirty)
            written: list[bytes] = []
            async with trio.open_nursery() as nursery:
                for aid, d in batch.items():
                    nursery.start_soon(self._put, aid, d, written)
            for aid in written:
                if self._dirty.get(aid) is batch[aid]:
                    del self._dirty[aid]

    async def _put(self, aid: bytes, d: dict, written: list[bytes]) -> None:
        try:
            await self._node.control.call(lambda gcs: gcs.actors.put(aid.hex(), d))
        except Exception as exc:  # the GCS failing over: the next round retries
            logger.warning("writing the record of actor %s failed: %s", aid.hex(), exc)
            self._marked.set()
        else:
            written.append(aid)
