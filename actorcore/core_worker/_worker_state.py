"""The process-wide current core worker (driver or worker), and the task context.

``core`` is set by ``init()`` in a driver and at start-up in a worker process; the
API functions read it. ``task_context`` is thread-local: the executor thread running
a task records which task it runs, for ``get_runtime_context()`` and for telling the
scheduler that a task blocked in ``get``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import attrs

from ..exceptions import NotInitializedError

__all__ = [
    "auto_core", "core", "current_core", "task_context", "set_core", "ActorRun", "actors",
]

core: Any = None
task_context = threading.local()


@attrs.frozen
class ActorRun:
    """One actor hosted by this process, as ``get_runtime_context()`` reports it."""

    job_id: bytes
    namespace: str  # its job's namespace
    incarnation: int  # 1 for the first start; more once it was restarted
    gpu_ids: tuple[int, ...] = ()  # the GPUs the node assigned to it


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
