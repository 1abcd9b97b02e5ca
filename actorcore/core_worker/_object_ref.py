"""``ObjectRef``: a reference to a value in the cluster (a future).

An ``ObjectRef`` is only an id (20 bytes, see ``protocol._ids``): hashable, comparable and
picklable. The process that created it (by ``f.remote()`` or ``put``) is its owner;
the owner's core worker keeps the value (or its location) while some ref to it lives.

Reference counting is local and conservative: every live ``ObjectRef`` instance
counts once in its process's core worker; when the last one goes, the core worker may
free the object — unless the ref *escaped* (was pickled: passed inside a container to
a task, stored in another object, sent to another process). An escaped object is kept
for the lifetime of the job. That never frees a value someone can still reach.

``await ref`` works in asyncio and Trio code (detected with sniffio): the owner's core
worker calls back when the value is ready, the waiting loop is woken thread-safely,
and no thread is parked per await.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Generator
from typing import Any

__all__ = ["ObjectRef"]

logger = logging.getLogger("actorcore.object_ref")


def _core() -> Any:
    from . import _worker_state

    return _worker_state.current_core()


def _core_or_none() -> Any:
    from . import _worker_state

    return _worker_state.core


class ObjectRef:
    """A reference to an object (a task's return value or a ``put`` value)."""

    __slots__ = ("_id", "_counted", "__weakref__")

    def __init__(self, object_id: bytes, *, _count: bool = True) -> None:
        self._counted = None
        if not isinstance(object_id, bytes) or len(object_id) != 20:
            raise ValueError(f"ObjectRef id must be 20 bytes, got {object_id!r}")
        self._id = object_id
        self._counted = None
        if _count:
            core = _core_or_none()
            if core is not None:
                core.add_local_ref(object_id)
                self._counted = core

    def binary(self) -> bytes:
        """The id as bytes."""
        return self._id

    def hex(self) -> str:
        """The id as hex."""
        return self._id.hex()

    def task_id(self) -> bytes:
        """The id of the task that produced this object."""
        return self._id[:16]

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self) -> Any:
        # Pickled: the ref escapes to somewhere we cannot count; keep the value.
        core = self._counted or _core_or_none()
        if core is not None:
            core.mark_escaped(self._id)
        return (_rebuild, (self._id,))

    def __del__(self) -> None:
        core = self._counted
        if core is not None:
            try:
                core.remove_local_ref(self._id)
            except Exception as exc:  # interpreter shutdown: the node frees it with our link
                logger.debug("dropping ref %s failed: %r", self._id.hex(), exc)

    def __await__(self) -> Generator[Any, None, Any]:
        return _core().await_ref(self).__await__()

    def future(self) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` resolved with the value (or the error)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        core = _core()

        def resolve() -> None:
            try:
                fut.set_result(core.get([self], timeout=None)[0])
            except BaseException as exc:
                fut.set_exception(exc)

        def done() -> None:
            # Called in the core loop, which must not block: a large value is read
            # from the store (a request through that very loop) in a thread.
            threading.Thread(target=resolve, name="actorcore-future", daemon=True).start()

        core.on_ready_callback([self._id], done)
        return fut


def _rebuild(object_id: bytes) -> ObjectRef:
    return ObjectRef(object_id)
