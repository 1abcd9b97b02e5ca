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
and no thread is parked per await. ``ref.on_completed(callback)`` (Ray's
``_on_completed``) calls back with the value or the error once the object is ready,
and ``future()`` / ``as_future()`` (concurrent.futures and asyncio futures) are built
on it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from . import _worker_state

if TYPE_CHECKING:
    import asyncio

__all__ = ["ObjectRef"]

logger = logging.getLogger("actorcore.object_ref")


def _core() -> Any:
    return _worker_state.current_core()


def _core_or_none() -> Any:
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

    def on_completed(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(value)`` once the object is ready: with its value, or with
        the exception ``get`` would raise (a ``TaskError`` that is also an instance of
        the task's exception type, ``ActorDiedError``, ...). If it is ready already,
        the callback is called soon.

        The callback runs in a thread of its own (never in the caller's thread, nor
        in the core loop), so it may call ``get`` and submit tasks; an exception it
        raises is logged. Ray's private spelling ``_on_completed`` is the same.
        """
        if not callable(callback):
            raise TypeError(
                f"on_completed() expects a callable taking the value, got "
                f"{type(callback).__name__}: {callback!r:.80}"
            )
        core = _core()
        ref = self

        def run() -> None:
            try:
                result = core.get([ref], timeout=None)[0]
            except BaseException as exc:  # noqa: BLE001 - the callback gets the error
                result = exc
            try:
                callback(result)
            except BaseException:  # noqa: BLE001 - nobody else would ever see it
                logger.exception("the on_completed callback %r of %s raised", callback, ref)

        def ready() -> None:
            # Called in the core loop (or now, in this thread, if ready already),
            # which must not block: a large value is read from the store (a request
            # through that very loop), and user code may block, so both run in a
            # thread of their own.
            threading.Thread(target=run, name="actorcore-on-completed", daemon=True).start()

        core.on_ready_callback([self._id], ready)

    _on_completed = on_completed  # Ray's (private) name, which Ray's future() uses

    def future(self) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` resolved with the value (or the error).

        Cancelling the future does not cancel the task (as in Ray: use ``cancel``).
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def resolve(result: Any) -> None:
            if not fut.set_running_or_notify_cancel():
                return  # cancelled by its holder
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        self.on_completed(resolve)
        return fut

    def as_future(self, _internal: bool = False) -> asyncio.Future:
        """An ``asyncio.Future`` of the running event loop (else of the thread's
        current loop) resolved with the value or the error, as Ray's. Cancelling it
        does not cancel the task. In a coroutine ``await ref`` is the same, cheaper."""
        import asyncio  # here: every driver imports this module, few use asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = asyncio.get_event_loop_policy().get_event_loop()
        return asyncio.wrap_future(self.future(), loop=loop)


def ids_of(refs: Iterable[ObjectRef]) -> list[bytes]:
    """The ids of ``refs``, in order (one pass without a call per ref: ``get`` and
    ``wait`` take thousands)."""
    return [r._id for r in refs]


def escape_counted(refs: Iterable[ObjectRef]) -> None:
    """``refs`` are pickled inside another value: those a holder here counts escape
    (their objects are no longer freed when the last of them dies)."""
    for ref in refs:
        if ref._counted is not None:
            ref._counted.mark_escaped(ref._id)


def _rebuild(object_id: bytes) -> ObjectRef:
    return ObjectRef(object_id)
