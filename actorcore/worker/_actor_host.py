"""Hosting user actors in a worker process.

The node sends ``actor_create`` and ``actor_call`` messages to the worker's Trio loop
(its main thread); the loop hands each to the actor's host without waiting, and the
host reports back through the core worker's queue (``actor_ready``/``actor_done``).
User code never runs on the Trio loop.

Three kinds of host, chosen by the class:

- ``ThreadedHost`` (a class without ``async def`` methods): a Pykka threading actor.
  Its mailbox is the actor's mailbox: calls run one at a time in arrival order,
  which is per-caller submission order (the stateful edges). In a process of its
  own, with ``max_concurrency=1``, its loop runs on the process's main thread, as
  Ray runs such an actor (signal handlers, ``threading.main_thread()`` checks). With
  ``max_concurrency=n > 1`` the actor thread hands calls, in order, to a pool of ``n``
  threads, so up to ``n`` run at once (as Ray's threaded actors).
- ``AsyncHost`` (a class with any ``async def`` method): one thread running an event
  loop through anyio — asyncio by default, Trio if the class sets
  ``__actorcore_backend__ = "trio"``. Calls start in arrival order, each as a task of
  one task group, at most ``max_concurrency`` at a time (default 1000); ``await ref``
  works inside them (the core worker wakes the loop thread-safely). Plain ``def``
  methods of an async actor run on the loop too, as in Ray.
- Many ``ThreadedHost``s share one process for ``placement="shared"`` (lightweight
  actors): each is a Pykka actor with its own small-stack thread.

The hosts live in ``_threaded_host`` and ``_async_host``, what they share in
``_host_context``; this module picks one per actor (``start_host``).
"""

from __future__ import annotations

from typing import Any

from ..protocol._actors import ActorSpec
from ._async_host import AsyncHost
from ._cancel import CallGate
from ._host_context import HostContext, HostStatistics, process_statistics
from ._threaded_host import ThreadedHost, _MainThreadHost, _ThreadedHandle

__all__ = ["HostContext", "HostStatistics", "ThreadedHost", "AsyncHost", "process_statistics",
           "start_host"]


def start_host(ctx: HostContext, spec: ActorSpec, incarnation: int, dep_data: list,
               record: dict | None, recovery: tuple | None = None) -> Any:
    """Start the right host for ``spec``; return an object with ``submit``/``stop``.

    ``recovery``: the checkpoint and logged calls it restores and replays before it
    is ready (an actor that replays, restarted; see ``HostContext.recover``)."""
    ctx.start_replay(spec, incarnation)
    if spec.meta.is_async:
        return AsyncHost(ctx, spec, incarnation, dep_data, record, recovery)
    gate = CallGate(ctx.done)
    main = ctx.main_thread is not None and spec.max_concurrency == 1
    host = _MainThreadHost if main else ThreadedHost
    return _ThreadedHandle(
        host.start(ctx, spec, incarnation, dep_data, record, gate, recovery), gate)

