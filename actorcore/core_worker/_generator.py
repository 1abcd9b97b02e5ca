"""Generator tasks: ``num_returns="streaming"`` and ``num_returns="dynamic"``.

A generator task (or actor method) yields values; each becomes an object as soon as
it is yielded. Item ``i`` has the id ``stream_item_id(task_id, i)``: the worker
sends it to the node (`StreamItems`), which records it and
pushes it to the caller, who owns it. The task's one return of its own is the
stream's *end*: the number of items, written after the last one. An exception in
the generator becomes the error of the item after the last good one (then the end
counts that item too), so the caller meets it as the error of the next ref, as in
Ray. An end that is itself an error (the task was cancelled before it started, its
worker died, an argument failed) is handed out as the next ref instead.

How the caller knows that item ``i`` is the last: it waits until item ``i`` *or*
the end is ready. The end comes after every item on the worker's link to the node,
but an item may still be on its way to the caller when the end is read (results of
an actor's direct call come on another link), so an end of ``n > i`` hands out
item ``i`` ready or not: the value follows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..exceptions import GetTimeoutError
from ..protocol import _serialization
from ..protocol._ids import DYNAMIC, STREAMING, stream_item_id
from ._object_ref import ObjectRef, escape_counted, ids_of

__all__ = ["ObjectRefGenerator", "DynamicObjectRefGenerator", "refs_of_call"]

logger = logging.getLogger("actorcore.generator")


class ObjectRefGenerator:
    """The refs a streaming generator task yields, in order, as they are yielded.

    ``for ref in gen``, ``next(gen)``, ``async for ref in gen`` (asyncio and Trio) and
    ``await gen.__anext__()``; ``completed()`` is the ref of the stream's end (ready
    once the generator has ended, and for ``cancel``).
    """

    def __init__(self, end: ObjectRef, core: Any) -> None:
        self._end = end
        self._task_id = end.task_id()
        self._core = core
        self._index = 0
        self._finished = False
        core.register_stream(self._task_id)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()}, next item {self._index})"

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._next(timeout=None)

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        """The next ref, waiting at most ``timeout_s`` seconds (``GetTimeoutError``)."""
        return self._next(timeout_s)

    def completed(self) -> ObjectRef:
        """The ref of the stream's end (its value: the number of items)."""
        return self._end

    def is_finished(self) -> bool:
        """Whether every item has been handed out."""
        return self._finished

    def task_id(self) -> bytes:
        return self._task_id

    def _next(self, timeout: float | None) -> ObjectRef:
        if self._finished:
            raise StopIteration
        core = self._core
        oid = stream_item_id(self._task_id, self._index)
        item = core.stream_entry(oid)
        end = core.waits.entry_for(self._end.binary())
        if not item.ready and not end.ready:
            flags = core.waits.blocking_wait([oid, self._end.binary()], 1, timeout)
            if not any(flags):
                raise GetTimeoutError(
                    f"no item {self._index} of {self._task_id.hex()} within {timeout} s")
        return self._take(oid)

    def _take(self, oid: bytes) -> ObjectRef:
        """The ref after a wait that saw item or end ready; ``StopIteration`` at the end."""
        core = self._core
        item = core.references.entry(oid)
        if item is not None and item.ready:
            self._index += 1
            return ObjectRef(oid)
        end = core.references.entries[self._end.binary()]
        if end.is_error:  # the stream ended before any item could say why
            self._finished = True
            end.seen = True
            return ObjectRef(self._end.binary())
        try:
            count = int(_serialization.loads(end.data))
        except Exception as exc:
            logger.warning("stream %s: its end %r is not a count (%r)",
                           self._task_id.hex(), end.data, exc)
            count = 0
        if self._index < count:
            self._index += 1
            return ObjectRef(oid)  # its value is on its way
        self._finished = True
        raise StopIteration

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        if self._finished:
            raise StopAsyncIteration
        core = self._core
        oid = stream_item_id(self._task_id, self._index)
        item = core.stream_entry(oid)
        end = core.waits.entry_for(self._end.binary())
        if not item.ready and not end.ready:
            await core.await_any([oid, self._end.binary()])
        try:
            return self._take(oid)
        except StopIteration:
            raise StopAsyncIteration from None

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is None:
            return
        try:
            core.drop_stream(self._task_id)
        except Exception as exc:  # interpreter shutdown: the node frees them with our link
            logger.debug("dropping stream %s failed: %r", self._task_id.hex(), exc)

    def __reduce__(self) -> Any:
        raise TypeError(
            "an ObjectRefGenerator cannot be passed to another task or actor: its items "
            "belong to the caller that iterates it (pass the refs it yields instead)")


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task's ref: the refs of the values
    its generator yielded, in order (iterate it, or ``len()`` it)."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    @classmethod
    def of_ids(cls, ids: list[bytes]) -> DynamicObjectRefGenerator:
        """Built where the items were made (a worker): refs it does not count."""
        return cls([ObjectRef(i, _count=False) for i in ids])

    def __reduce__(self) -> Any:
        escape_counted(self._refs)  # passed on by a holder: the items escape
        return (_dynamic_of, (ids_of(self._refs),))

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


def _dynamic_of(ids: list[bytes]) -> DynamicObjectRefGenerator:
    return DynamicObjectRefGenerator([ObjectRef(i) for i in ids])


def refs_of_call(core: Any, num_returns: int, ids: list[bytes]) -> Any:
    """What ``.remote()`` returns for a task or call with these return ids."""
    if num_returns == 1:
        return ObjectRef(ids[0])
    if num_returns == 0:
        return None
    if num_returns == STREAMING:
        return ObjectRefGenerator(ObjectRef(ids[0]), core)
    if num_returns == DYNAMIC:
        # Its items are not pushed to us: the refs in its value fetch them.
        return ObjectRef(ids[0])
    return [ObjectRef(i) for i in ids]
