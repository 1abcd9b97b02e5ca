"""The caller's job as the API sees it: the namespace its named actors and
placement groups go to, and requests to the node it is connected to.

Everything above the core worker that talks to the node for an answer (handles,
actor classes, supervisors, placement groups) goes through `request_node`, so it
sits below all of them.
"""

from __future__ import annotations

from typing import Any

from ..core_worker import _worker_state
from ..core_worker._worker_state import task_context
from ..exceptions import ActorcoreError

__all__ = ["default_namespace", "request_node", "set_default_namespace"]

# The namespace of this process's named actors, set by ``init(namespace=)``.
_namespace: list[str | None] = [None]

#: Job id -> its namespace, as the node told a worker process (asked once per job).
_job_namespaces: dict[bytes, str] = {}


def default_namespace() -> str:
    """The namespace of the job the caller works for: where its named actors go and
    are looked up when none is given. A driver's is what ``init(namespace=)`` said
    ("default" without one); its tasks and actors, in other processes, have the same.
    An actor carries it in its spec; a task's process asks the node once per job."""
    core = _worker_state.core
    if core is None or core.role == "driver":
        return _namespace[0] or "default"
    actor = _worker_state.actors.get(getattr(task_context, "actor_id", None) or "")
    if actor is not None:
        return actor.namespace
    job_id = core.current_job_id()
    ns = _job_namespaces.get(job_id)
    if ns is None:
        ns = core.call_sync("job_namespace", job_id) or "default"
        _job_namespaces[job_id] = ns
    return ns


def set_default_namespace(namespace: str | None) -> None:
    _namespace[0] = namespace


def request_node(core: Any, message: Any, timeout: float = 60.0) -> Any:
    """A request to the node, sent after everything this process queued before it."""
    core.check_open()

    async def go() -> Any:
        core.flush_now()
        return await core.conn.request(message, timeout=timeout)

    try:
        return core.run_in_loop(go)
    except Exception as exc:
        remote = getattr(exc, "remote_exception", None)
        if isinstance(remote, ValueError | TypeError | ActorcoreError):
            raise remote from None  # the node's own error for a bad request
        raise
