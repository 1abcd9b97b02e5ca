"""The process-wide current core worker (driver or worker), and the task context.

``core`` is set by ``init()`` in a driver and at start-up in a worker process; the
API functions read it. ``task_context`` is thread-local: the executor thread running
a task records which task it runs, for ``get_runtime_context()`` and for telling the
scheduler that a task blocked in ``get``.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs

from ..exceptions import NotInitializedError

__all__ = ["core", "current_core", "task_context", "set_core", "ActorRun", "actors"]

core: Any = None
task_context = threading.local()


@attrs.frozen
class ActorRun:
    """One actor hosted by this process, as ``get_runtime_context()`` reports it."""

    job_id: bytes
    namespace: str  # its job's namespace
    incarnation: int  # 1 for the first start; more once it was restarted


#: The actors this (actor worker) process hosts, by actor id in hex (the key the
#: threads running them have in ``task_context.actor_id``).
actors: dict[str, ActorRun] = {}


def set_core(value: Any) -> None:
    global core
    core = value


def current_core() -> Any:
    c = core
    if c is None:
        raise NotInitializedError(
            "actorcore is not initialized: call actorcore.init() first "
            "(or actorcore.init(address='auto') to join a running cluster)"
        )
    return c
