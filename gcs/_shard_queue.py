"""`ShardQueue`: one shard's queue of client reads or of client writes, and its pump.

Every call appends an `Op` to its shard's queue and waits for it. One pump task per
queue drains it: everything queued since its last send goes out as *one* batch
(at most ``MAX_BATCH`` ops), and up to ``inflight`` such batches are in flight at
once (pipelining). The pump does not know the wire: it hands each batch to the
``send_batch`` callable of the client, which sends it to the shard (retrying
idempotently) and returns one result -- a value or an exception -- per op.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._errors import GcsError
from ._messages import ReadOp, WriteOp

__all__ = ["MAX_BATCH", "Op", "SendBatch", "ShardQueue"]

MAX_BATCH = 4096


class Op:
    """One queued operation; ``done`` is set once ``result`` (value or exception) is in."""

    __slots__ = ("done", "op", "result", "seq")

    def __init__(self, op: WriteOp | ReadOp, seq: int = 0) -> None:
        self.op: Any = op  # a write queue's are WriteOps, a read queue's ReadOps
        self.seq = seq
        self.done = trio.Event()
        self.result: Any = None


#: Sends one batch of a queue to its shard; one result (or exception) per op.
SendBatch = Callable[[list[Op]], Awaitable[list[Any]]]


class ShardQueue:
    """The ops waiting to be sent to one shard (reads and writes have one queue each)."""

    def __init__(self, inflight: int) -> None:
        self.ops: deque[Op] = deque()
        self.wakeup = trio.Event()
        self.inflight = trio.Semaphore(inflight)
        self.running = False

    async def submit(self, op: Op) -> Any:
        self.ops.append(op)
        self.wakeup.set()
        await op.done.wait()
        if isinstance(op.result, BaseException):
            raise op.result
        return op.result

    async def submit_many(self, ops: list[Op]) -> None:
        """Queue many writes of one shard at once and wait for all of them.

        The ops ride the same queue, pump, idempotent (client id, seq) numbering and
        retries as single writes; the only saving is the waiting: one task waits for
        the whole group instead of one task per op. Batches of one queue are sent in
        order, so the last op is normally the last to finish and one wait suffices.
        """
        self.ops.extend(ops)
        self.wakeup.set()
        for op in reversed(ops):
            if not op.done.is_set():
                await op.done.wait()

    async def pump(self, nursery: trio.Nursery, send_batch: SendBatch,
                   stats: dict[str, int]) -> None:
        while True:
            if not self.ops:
                self.wakeup = trio.Event()
                await self.wakeup.wait()
                continue
            await self.inflight.acquire()
            batch = [self.ops.popleft() for _ in range(min(len(self.ops), MAX_BATCH))]
            stats["batches"] += 1
            nursery.start_soon(self._send, batch, send_batch)

    async def _send(self, batch: list[Op], send_batch: SendBatch) -> None:
        try:
            results = await send_batch(batch)
        except GcsError as exc:
            results = [exc] * len(batch)
        finally:
            self.inflight.release()
        for op, result in zip(batch, results, strict=True):
            op.result = result
            op.done.set()
