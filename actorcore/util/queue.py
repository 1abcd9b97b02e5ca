"""``Queue``: a first-in, first-out queue held by an actor (Ray's ``ray.util.queue``).

The items live in an async actor (``_QueueActor``, an ``asyncio.Queue``), so a
``Queue`` can be passed to tasks and actors and every copy reaches the same items.
A blocking ``get`` waits in the actor, not in the caller's process: it holds one of
the actor's concurrent calls (an async actor runs up to 1000), never a thread that a
``put`` would need. ``Empty`` and ``Full`` subclass the standard library's
``queue.Empty`` and ``queue.Full``, so ``except queue.Empty`` catches them too.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

from ..api._actor_handle import kill
from ..api._api import get, remote, wait
from ..exceptions import TaskError

__all__ = ["Empty", "Full", "Queue"]


class Empty(_stdlib_queue.Empty):
    """``get`` found no item: at once (``block=False``) or within ``timeout``."""


class Full(_stdlib_queue.Full):
    """``put`` found no room: at once (``block=False``) or within ``timeout``."""


def _check_timeout(timeout: Any) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
    ):
        raise ValueError(f"'timeout' must be a non-negative number or None, got {timeout!r}")


def _reraise(exc: BaseException) -> None:
    """The actor's ``Empty`` / ``Full`` as a plain one (not wrapped in a ``TaskError``)."""
    cause = exc.cause if isinstance(exc, TaskError) else exc
    if isinstance(cause, Empty | Full):
        raise type(cause)(*cause.args) from None
    raise exc


class Queue:
    """A FIFO queue on the cluster; ``maxsize=0`` is unbounded.

    ``actor_options`` go to the queue actor's ``.options(...)`` (e.g.
    ``{"num_cpus": 1}``, a ``name``). Methods: ``put``/``get`` (``block``,
    ``timeout``), ``put_nowait``/``get_nowait``, ``put_async``/``get_async``,
    ``put_nowait_batch``/``get_nowait_batch``, ``qsize``/``size``/``len()``,
    ``empty``, ``full``, ``shutdown``.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"Queue(maxsize={maxsize!r}): expected an int (0: unbounded)")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"Queue(actor_options={actor_options!r}): expected a dict")
        self.maxsize = maxsize
        self.actor: Any = _actor_class().options(**(actor_options or {})).remote(maxsize)

    def _handle(self) -> Any:
        if self.actor is None:
            raise RuntimeError("this Queue was shut down (Queue.shutdown())")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items are in the queue."""
        return get(self._handle().qsize.remote())

    def qsize(self) -> int:
        """How many items are in the queue."""
        return self.size()

    def empty(self) -> bool:
        return get(self._handle().empty.remote())

    def full(self) -> bool:
        return get(self._handle().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; with ``block`` wait up to ``timeout`` seconds (None: for
        ever) for room. ``Full`` if there is none (at once without ``block``)."""
        actor = self._handle()
        if not block:
            ref = actor.put_nowait.remote(item)
        else:
            _check_timeout(timeout)
            ref = actor.put.remote(item, timeout)
        try:
            get(ref)
        except (TaskError, Full) as exc:
            _reraise(exc)

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:  # noqa: ASYNC109 - Ray's signature
        """``put`` for asyncio or Trio code: awaits instead of blocking the loop."""
        actor = self._handle()
        if not block:
            ref = actor.put_nowait.remote(item)
        else:
            _check_timeout(timeout)
            ref = actor.put.remote(item, timeout)
        try:
            await ref
        except (TaskError, Full) as exc:
            _reraise(exc)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the next item; with ``block`` wait up to ``timeout`` seconds (None:
        for ever) for one. ``Empty`` if there is none (at once without ``block``)."""
        actor = self._handle()
        if not block:
            ref = actor.get_nowait.remote()
        else:
            _check_timeout(timeout)
            ref = actor.get.remote(timeout)
        try:
            return get(ref)
        except (TaskError, Empty) as exc:
            _reraise(exc)

    async def get_async(self, block: bool = True,
                        timeout: float | None = None) -> Any:  # noqa: ASYNC109 - Ray's signature
        """``get`` for asyncio or Trio code: awaits instead of blocking the loop."""
        actor = self._handle()
        if not block:
            ref = actor.get_nowait.remote()
        else:
            _check_timeout(timeout)
            ref = actor.get.remote(timeout)
        try:
            return await ref
        except (TaskError, Empty) as exc:
            _reraise(exc)

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all of ``items`` in order, or none of them: ``Full`` if they do not
        all fit."""
        if not isinstance(items, Iterable):
            raise TypeError(f"Argument 'items' must be an Iterable, got {type(items).__name__}")
        try:
            get(self._handle().put_nowait_batch.remote(list(items)))
        except (TaskError, Full) as exc:
            _reraise(exc)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Take ``num_items`` items in order, or none: ``Empty`` if there are fewer."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError(f"Argument 'num_items' must be an int, got {num_items!r}")
        if num_items < 0:
            raise ValueError(f"'num_items' must be nonnegative, got {num_items}")
        try:
            return get(self._handle().get_nowait_batch.remote(num_items))
        except (TaskError, Empty) as exc:
            _reraise(exc)
            raise  # (unreachable: _reraise raises)

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor and free what it holds (its items are lost).

        ``force``: kill it at once; else it ends after the calls already made to it
        (``__ray_terminate__``), and is killed if that takes over
        ``grace_period_s`` seconds.
        """
        actor = self.actor
        if actor is None:
            return
        if force:
            kill(actor, no_restart=True)
        else:
            done = actor.__ray_terminate__.remote()
            _ready, not_ready = wait([done], timeout=grace_period_s)
            if not_ready:
                kill(actor, no_restart=True)
        self.actor = None


class _QueueActor:
    """The actor holding a ``Queue``'s items."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            raise Full(f"the queue stayed full (maxsize {self.maxsize}) "
                       f"for the {timeout} s timeout") from None

    async def get(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise Empty(f"the queue stayed empty for the {timeout} s timeout") from None

    def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize {self.maxsize})") from None

    def put_nowait_batch(self, items: list[Any]) -> None:
        if self.maxsize > 0 and len(items) + self.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size "
                       f"{self.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        if num_items > self.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]


_remote_class: list[Any] = []


def _actor_class() -> Any:
    if not _remote_class:
        _remote_class.append(remote(_QueueActor))
    return _remote_class[0]
