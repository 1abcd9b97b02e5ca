"""The task spec, the inline object format, and the link's constants.

The messages themselves are frozen attrs classes in ``_wire`` (each endpoint
dispatches them through one `transport.Dispatcher`); a `TaskSpec` rides in
``_wire.Submit`` (core worker -> node) and ``_wire.Execute`` (node -> worker), and
objects travel inline as `ObjectData` triples in ``Put``, ``TaskDone`` and
``ObjectsReady``.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

import transport

from ._ids import return_ids as _return_ids

__all__ = ["TaskSpec", "ObjectData", "max_frame_size", "RECONNECT_WINDOW", "REJOIN_TIMEOUT",
           "DRIVER_GRACE"]

# A driver's link to its node can drop while both live (an ``rpc_server`` restart,
# a network fault). The driver then dials again for ``RECONNECT_WINDOW`` seconds and
# rejoins with ``Hello`` under its worker id; the node keeps the driver's actors,
# objects and queued tasks for ``DRIVER_GRACE`` seconds, then drops them. If the
# grace were shorter than the window, a driver back after the grace but within its
# window would find its actors killed while it carries on as if nothing happened.
# So the grace is derived from the window: a dial started before the window ends
# must have rejoined (connected and had its ``Hello`` answered) within
# ``REJOIN_TIMEOUT`` after it, or the driver gives up, and the node waits for both.
# The two clocks start when each end sees the link close, the same moment on one
# machine (a Unix socket, or a TCP connection reset by its peer).

#: Seconds a driver keeps dialling a node it lost before giving up.
RECONNECT_WINDOW = 10.0

#: Seconds past ``RECONNECT_WINDOW`` by which the driver's last dial must have rejoined.
REJOIN_TIMEOUT = 5.0

#: Seconds the node keeps a disconnected driver's actors, objects and queued tasks
#: for it to rejoin: as long as the driver may still come back.
DRIVER_GRACE = RECONNECT_WINDOW + REJOIN_TIMEOUT


def max_frame_size() -> int:
    """The largest frame the node and actor processes accept from their callers
    (``ACTORCORE_MAX_FRAME_SIZE``, bytes; default the transport's 512 MiB). Each side
    announces it in the handshake, so a sender knows it (``peer_max_frame_size``);
    tests lower it to reach the limit with small values."""
    raw = os.environ.get("ACTORCORE_MAX_FRAME_SIZE")
    if not raw:
        return transport.DEFAULT_MAX_FRAME_SIZE
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"ACTORCORE_MAX_FRAME_SIZE must be an integer, got {raw!r}") from None


# (object_id, is_error, data): a serialised object travelling inline.
ObjectData = tuple[bytes, bool, bytes]


@attrs.define(slots=True, eq=False)
class TaskSpec:
    """Everything needed to run a task (and to re-run it: the lineage record)."""

    task_id: bytes
    job_id: bytes
    function_id: bytes
    name: str
    args: bytes  # pickled (args, kwargs); top-level refs replaced by Dep(i)
    deps: list[bytes]  # object ids of the top-level ref arguments (data edges)
    num_returns: int
    resources: dict[str, float]
    max_retries: int  # retries left on worker death / retryable exception; -1 infinite
    retry_exceptions: bool | bytes  # True, False, or a pickled tuple of types
    parent_task_id: bytes | None  # the submitting task (control edge); None: a driver
    owner: bytes  # worker id of the submitter, who receives the results
    attempt: int = 0
    # ``api._runtime_env``: its env vars, package ids and ``key`` (None: none).
    runtime_env: dict | None = None
    # ``@remote(max_calls=n)``: a worker that ran n tasks of this function exits
    # (and a new one takes its place); 0: no limit.
    max_calls: int = 0
    # Where it may run (``global_scheduler._placement.Strategy``): None (DEFAULT),
    # "SPREAD" or a ``NodeAffinity``.
    strategy: Any = None

    def __reduce__(self) -> tuple:
        # A tuple of fields, not attrs' state dict: 40% smaller frames and faster
        # (it travels twice per task: submit and execute). The strategy only when set.
        fields: tuple = (
            self.task_id, self.job_id, self.function_id, self.name, self.args,
            self.deps, self.num_returns, self.resources, self.max_retries,
            self.retry_exceptions, self.parent_task_id, self.owner, self.attempt,
            self.runtime_env, self.max_calls,
        )
        if self.strategy is not None:
            fields += (self.strategy,)
        return (DecodedSpec, fields)

    def return_ids(self) -> list[bytes]:
        return _return_ids(self.task_id, max(self.num_returns, 1))

    def lineage_record(self) -> dict:
        """The spec as a plain dict for the GCS task table."""
        return {
            "task_id": self.task_id.hex(),
            "job_id": self.job_id.hex(),
            "function_id": self.function_id.hex(),
            "name": self.name,
            "args": self.args,
            "deps": [d.hex() for d in self.deps],
            "num_returns": self.num_returns,
            "resources": self.resources,
            "max_retries": self.max_retries,
            "parent_task_id": self.parent_task_id.hex() if self.parent_task_id else None,
            "owner": self.owner.hex(),
            "attempt": self.attempt,
        }


# Sharing what specs have in common, at decode.
#
# A pickle shares an object among the specs of one frame (its memo), but a driver's
# thread writes an idle link itself, one spec per frame, so every spec the node
# decodes came with its own job id, function id, name, argument blob, resources
# dict, dependency list and owner: ten objects (about 600 bytes) beside its task id,
# repeated for each of a million tasks queued behind one argument. Specs come in
# runs (a loop calling one function from one caller), so each decoded spec takes,
# for every such field equal to the one of the spec decoded before it, that spec's
# object: one comparison per field, no table to bound, and a queued spec costs its
# own fields only (its task id; its arguments when they differ).
#
# The shared objects are never changed in place (a field is only ever rebound, as a
# retry's ``max_retries`` and ``attempt``), so sharing them is invisible. ``_last``
# is read and written by whichever thread decodes, without a lock: a race only
# leaves a spec with objects of its own.
_last: list[TaskSpec | None] = [None]


class DecodedSpec:
    """What a pickled `TaskSpec` names (``TaskSpec.__reduce__``): called with the
    spec's fields, it returns a `TaskSpec` that shares with the spec decoded before
    it every field equal to that spec's (see above)."""

    __slots__ = ()

    def __new__(  # type: ignore[misc]
        cls, task_id: bytes, job_id: bytes, function_id: bytes, name: str, args: bytes,
        deps: list[bytes], num_returns: int, resources: dict[str, float], max_retries: int,
        retry_exceptions: bool | bytes, parent_task_id: bytes | None, owner: bytes,
        attempt: int, runtime_env: dict | None, max_calls: int, strategy: Any = None,
    ) -> TaskSpec:
        last = _last[0]
        if last is not None:
            if job_id == last.job_id:
                job_id = last.job_id
            if function_id == last.function_id:
                function_id = last.function_id
            if name == last.name:
                name = last.name
            if args == last.args:
                args = last.args
            if deps == last.deps:
                deps = last.deps
            if resources == last.resources:
                resources = last.resources
            if retry_exceptions == last.retry_exceptions:
                retry_exceptions = last.retry_exceptions
            if parent_task_id == last.parent_task_id:
                parent_task_id = last.parent_task_id
            if owner == last.owner:
                owner = last.owner
            if runtime_env is not None and runtime_env == last.runtime_env:
                runtime_env = last.runtime_env
        spec = _last[0] = TaskSpec(
            task_id, job_id, function_id, name, args, deps, num_returns, resources,
            max_retries, retry_exceptions, parent_task_id, owner, attempt, runtime_env,
            max_calls, strategy)
        return spec


# A spec rides in Submit and Execute: it travels as an extension code, like the
# messages (transport._codes).
transport.register_codes(TaskSpec, DecodedSpec)
