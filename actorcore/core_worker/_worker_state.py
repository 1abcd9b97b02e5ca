"""The process-wide current core worker (driver or worker), and the task context.

``core`` is set by ``init()`` in a driver and at start-up in a worker process; the
API functions read it. ``task_context`` is thread-local: the executor thread running
a task records which task it runs, for ``get_runtime_context()`` and for telling the
scheduler that a task blocked in ``get``.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from typing import Any

import attrs

from ..exceptions import NotInitializedError

__all__ = [
    "auto_core", "core", "current_core", "task_context", "set_core", "ActorRun", "actors",
    "current_call", "current_spec", "current_actor_run",
]

core: Any = None
task_context = threading.local()

#: The actor method call (``CallSpec``) an async actor's coroutine runs: the calls of
#: one async actor interleave on one thread, so the thread-local ``task_context``
#: cannot tell them apart; each call is a task of its own with its own context.
current_call: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "actorcore_current_call", default=None)


def current_spec() -> Any:
    """The ``TaskSpec`` or ``CallSpec`` the calling code runs, or None (a driver, or
    an actor's constructor)."""
    spec = current_call.get()
    if spec is None:
        spec = getattr(task_context, "spec", None)
    return spec


def current_actor_run() -> ActorRun | None:
    """The actor the calling thread (or coroutine) runs, or None."""
    actor_id = getattr(task_context, "actor_id", None)
    return actors.get(actor_id) if actor_id else None


@attrs.frozen
class ActorRun:
    """One actor hosted by this process, as ``get_runtime_context()`` reports it."""

    job_id: bytes
    namespace: str  # its job's namespace
    incarnation: int  # 1 for the first start; more once it was restarted
    gpu_ids: tuple[int, ...] = ()  # the GPUs the node assigned to it
    spec: Any = None  # its ``ActorSpec``: name, resources, methods (runtime context)


#: The actors this (actor worker) process hosts, by actor id in hex (the key the
#: threads running them have in ``task_context.actor_id``).
actors: dict[str, ActorRun] = {}


#: ``init()`` with its defaults, set by the API when it is imported (the API imports
#: this module, never the other way round); None in a process without the API.
auto_init: Callable[[], None] | None = None


def set_core(value: Any) -> None:
    global core
    core = value


def current_core() -> Any:
    c = core
    if c is None:
        raise NotInitializedError(
            "actorcore is not initialized: call actorcore.init() first "
            "(or actorcore.init(address='auto') to join a running cluster)"
            + ("" if auto_connect() else
               "; ACTORCORE_ENABLE_AUTO_CONNECT=0 turned off the implicit init()")
        )
    return c


def auto_connect() -> bool:
    """Whether the first API call may call ``init()`` itself (as Ray;
    ``ACTORCORE_ENABLE_AUTO_CONNECT=0``, or Ray's ``RAY_ENABLE_AUTO_CONNECT=0``, says no)."""
    from ..session._config import env_value

    return bool(env_value("ACTORCORE_ENABLE_AUTO_CONNECT")) and (
        os.environ.get("RAY_ENABLE_AUTO_CONNECT") != "0")


def auto_core() -> Any:
    """The core worker for an API call that connects on first use (``get``, ``put``,
    ``wait``, ``.remote()``, ...): with none yet, ``init()`` is called with its
    defaults — ``ACTORCORE_ADDRESS`` if set, else a new embedded cluster — as Ray's
    first API call does."""
    c = core
    if c is not None or not auto_connect() or auto_init is None:
        return current_core()
    auto_init()
    return current_core()
