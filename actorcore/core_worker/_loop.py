"""The core loop as the core worker's parts see it: which thread it is, how to run
something in it from another thread, and where its background tasks live.

The core worker's Trio loop is the only place that talks to the node and sets
entries ready; user code runs in other threads (see ``_core_worker``). Every part
that needs to cross into that loop does it through this one small object instead of
holding the loop's token, thread id and nursery itself.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["CoreLoop"]


class CoreLoop:
    """The Trio loop a core worker runs in. Construct it inside that loop."""

    def __init__(self) -> None:
        self.trio_token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Where the core loop's background tasks run from now on (``serve``)."""
        self._nursery = nursery

    def in_loop(self) -> bool:
        """Whether the calling thread is the core loop's."""
        return threading.get_ident() == self._thread

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run the async ``fn(*args)`` in the core loop and return its result (any
        thread but the core loop's, which it would deadlock)."""
        if self.in_loop():
            raise RuntimeError("blocking actorcore calls cannot run inside the core loop")
        return trio.from_thread.run(fn, *args, trio_token=self.trio_token)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in the core loop: now if this is the core loop, else as
        soon as it can (not at all if the loop has ended)."""
        if self.in_loop():
            fn(*args)
        else:
            try:
                self.trio_token.run_sync_soon(fn, *args)
            except trio.RunFinishedError:
                pass

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start the background task ``fn(*args)`` (core loop)."""
        assert self._nursery is not None, "the core worker is not serving yet"
        self._nursery.start_soon(fn, *args)

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start ``fn(*args)`` as a background task and return what it reports
        through its ``task_status`` (core loop)."""
        assert self._nursery is not None, "the core worker is not serving yet"
        return await self._nursery.start(fn, *args)
